"""The data directory: what the gateway keeps between runs (generated key, link secret, images).

``IMAGEGATE_DATA_DIR`` names it; by default systemd's ``$STATE_DIRECTORY``, else
``${XDG_DATA_HOME:-~/.local/share}/imagegate``. Empty, everything stays in memory. It holds:

* ``client-key``: the client key generated when ``AUTHORIZED_API_KEY`` is not set;
* ``link-secret``: the key that signs image links when ``IMAGE_PROXY_SECRET`` is not set, used
  exactly as that variable would be (copy it there to share links between boxes);
* ``images/``: the disk tier of the image store, unless ``IMAGE_CACHE_DIR`` says elsewhere.

The directory is made with mode 0700 and the two files with mode 0600, each on first need. Several
processes may start at once on one directory: a file is written whole under a temporary name and
then hard-linked into place, which fails if another process got there first, and then every process
reads the one that won. So all of them end with the same key and secret.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import tempfile
from collections.abc import Callable, Mapping

logger = logging.getLogger(__name__)

CLIENT_KEY_FILE = "client-key"
LINK_SECRET_FILE = "link-secret"  # noqa: S105 (a file's name, not a secret)
IMAGES_DIR = "images"
DIRECTORY_MODE = 0o700


class DataDirError(Exception):
    """The data directory cannot be made, written or read; the message names the variable."""


def default_data_dir(environ: Mapping[str, str]) -> str:
    """The data directory when ``IMAGEGATE_DATA_DIR`` is not set, from ``environ``; "" for none.

    systemd's ``$STATE_DIRECTORY`` first (the first path when it lists several), else
    ``$XDG_DATA_HOME/imagegate`` (an absolute one, as the XDG specification asks), else
    ``$HOME/.local/share/imagegate``. With none of them set, "": everything stays in memory.
    """
    state = environ.get("STATE_DIRECTORY", "").split(":")[0].strip()
    if state:
        return state
    xdg = environ.get("XDG_DATA_HOME", "").strip()
    home = environ.get("HOME", "").strip()
    if os.path.isabs(xdg):
        return os.path.join(xdg, "imagegate")
    if home:
        return os.path.join(home, ".local", "share", "imagegate")
    return ""


def images_dir(data_dir: str) -> str:
    """Where the disk tier keeps images in a data directory."""
    return os.path.join(data_dir, IMAGES_DIR)


def prepare(directory: str) -> None:
    """Make the directory (mode 0700) if it is missing; refuse one this process cannot write."""
    try:
        os.makedirs(directory, mode=DIRECTORY_MODE, exist_ok=True)
    except OSError as exc:
        raise DataDirError(_problem(f"cannot create {directory}: {exc.strerror}")) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DataDirError(_problem(f"{directory} is not writable by this user"))


def kept_secret(directory: str, name: str, make: Callable[[], str]) -> str:
    """The text of file ``name`` in ``directory``, made with ``make()`` (mode 0600) if missing.

    Race-free: the value is written whole to a temporary file that is then hard-linked to its
    name; if another process linked its own first, this one reads and returns that one.
    """
    path = os.path.join(directory, name)
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{name}-", dir=directory)  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(make() + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temporary, path)
                _sync_directory(directory)
                logger.info("made %s in the data directory %s", name, directory)
            except FileExistsError:
                pass  # another process made it a moment ago: its value is the one
        finally:
            os.unlink(temporary)
        return _read_secret(path)
    except FileNotFoundError:
        raise DataDirError(_problem(f"{path} vanished while it was being made")) from None
    except OSError as exc:
        raise DataDirError(_problem(f"cannot make {path}: {exc.strerror}")) from None


def new_client_key() -> str:
    """A new client key."""
    return "sk-imagegate-" + secrets.token_urlsafe(24)


def new_link_secret() -> str:
    """A new link-signing secret: 32 random bytes, as hex."""
    return secrets.token_hex(32)


def _read_secret(path: str) -> str:
    """A kept file's text, stripped; a warning when others than its owner may read it."""
    try:
        with open(path, encoding="utf-8") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            text = handle.read().strip()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not text"
        raise DataDirError(_problem(f"cannot read {path}: {reason}")) from None
    if not text:
        raise DataDirError(_problem(f"{path} is empty; remove it to have a new one made"))
    if stat.S_IMODE(mode) & 0o077:
        logger.warning(
            "%s may be read by other users (mode %o): chmod 600 it", path, stat.S_IMODE(mode)
        )
    return text


def _sync_directory(directory: str) -> None:
    """Make a new name in ``directory`` durable (a crash must not forget a key already printed)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _problem(text: str) -> str:
    return (
        f"IMAGEGATE_DATA_DIR: {text} (set IMAGEGATE_DATA_DIR to a writable directory, "
        "or to nothing to keep everything in memory)"
    )
