"""Several worker processes on one port: a supervisor forks them, speaks for them to systemd,
stops them gracefully and replaces any that dies.

The supervisor binds the listening sockets, then forks; each worker runs the gateway's normal
``serve`` on the inherited sockets and reports to the supervisor over a pipe, in the words of
systemd's notify protocol (``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``). The supervisor alone
talks to systemd:

- ``READY=1`` once every worker listens;
- ``WATCHDOG=1`` only while every worker's event loop has sent a heartbeat recently: a wedged
  worker stops the pings, and systemd restarts the service, as it would a single wedged process;
- SIGTERM or SIGINT: the supervisor closes its copy of the sockets, forwards SIGTERM to every
  worker, sends ``STOPPING=1`` once they have all stopped accepting, waits for them to drain
  (killing those still running after the grace period) and exits 0;
- a worker that dies otherwise is logged and replaced, after a pause that grows while
  replacements keep dying young.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tornado_imagegate import metrics
from tornado_imagegate.sdnotify import Notifier

logger = logging.getLogger(__name__)

# With several processes writing to one stderr, each line says which one wrote it.
LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
# A worker that lived less than this died young: the next replacement waits, twice as long
# each time, up to LONGEST_PAUSE.
YOUNG_DEATH_SECONDS = 10.0
FIRST_PAUSE = 0.5
LONGEST_PAUSE = 30.0
# A worker that has not said it listens after this long counts as wedged (for the watchdog).
START_DEADLINE = 60.0
# After the grace period, a worker closes its remaining connections (up to 5 s) and logs.
STOP_MARGIN = 10.0
TICK = 1.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class WorkerNotifier(Notifier):
    """A worker's notifier: the same states, sent to its supervisor over a pipe, never to systemd.

    ``watchdog_seconds`` is the supervisor's heartbeat interval times two (``serve`` sends one
    every half of it). A state that cannot be written at once is dropped: the event loop must
    never wait for the supervisor.
    """

    def __init__(self, pipe: int, watchdog_seconds: float | None) -> None:
        super().__init__({})
        self.pipe = pipe
        self.watchdog_seconds = watchdog_seconds
        os.set_blocking(pipe, False)

    @property
    def enabled(self) -> bool:
        """The supervisor always listens."""
        return True

    def send(self, state: str) -> bool:
        """Write one state, ended by a NUL, to the supervisor."""
        try:
            os.write(self.pipe, state.encode() + b"\0")
        except OSError:  # full (a busy supervisor) or closed (it is gone): nothing to wait for
            return False
        return True


@dataclass
class Worker:
    """One forked worker as the supervisor sees it."""

    slot: int
    pid: int
    pipe: int
    started: float
    ready: bool = False
    stopping: bool = False
    last_beat: float = 0.0
    pending: bytes = b""
    silent_logged: bool = False


@dataclass
class Slot:
    """A place for one worker: replaced when it dies, after ``pause`` if it keeps dying young."""

    index: int
    pause: float = 0.0
    start_at: float | None = 0.0  # None: its worker runs, or the gateway is stopping


class Supervisor:
    """Forks ``count`` workers running ``run_worker`` and looks after them until told to stop.

    ``run_worker(notifier)`` runs in the forked child and returns its exit status;
    ``announce()`` runs once every worker listens, just before READY=1.
    """

    def __init__(
        self,
        count: int,
        sockets: Sequence[socket.socket],
        run_worker: Callable[[WorkerNotifier], int],
        announce: Callable[[], None],
        notifier: Notifier,
        grace: float,
    ) -> None:
        self.sockets = list(sockets)
        self.run_worker = run_worker
        self.announce = announce
        self.notifier = notifier
        self.stop_deadline_after = grace + STOP_MARGIN
        self.slots = [Slot(index) for index in range(count)]
        self.workers: dict[int, Worker] = {}
        self.announced = False
        self.stopping_since: float | None = None
        self.stopping_sent = False
        self.watchdog = notifier.watchdog_seconds
        self.next_ping = 0.0
        self.pings_withheld = False
        self.wakeup_read, self.wakeup_write = os.pipe()
        self.pid = os.getpid()

    # --- the loop ---

    def run(self) -> int:
        """Start the workers and look after them until SIGTERM or SIGINT; return 0."""
        for blocking_end in (self.wakeup_read, self.wakeup_write):
            os.set_blocking(blocking_end, False)
        previous = {
            signum: signal.signal(signum, _note_signal)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
        }
        signal.set_wakeup_fd(self.wakeup_write)
        try:
            while not (self.stopping_since is not None and not self.workers):
                self._start_due_workers()
                self._wait(self._timeout())
                self._reap()
                self._announce_when_ready()
                self._ping_watchdog()
                self._stop_in_time()
        finally:
            signal.set_wakeup_fd(-1)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for fd in (self.wakeup_read, self.wakeup_write):
                os.close(fd)
        if not self.stopping_sent:
            self.notifier.stopping()
        logger.info("every worker has stopped")
        return 0

    def _timeout(self) -> float:
        now = time.monotonic()
        due = [now + TICK]
        due += [slot.start_at for slot in self.slots if slot.start_at is not None]
        if self.watchdog:
            due.append(self.next_ping)
        return max(0.0, min(due) - now)

    def _wait(self, timeout: float) -> None:
        """Wait for a signal or a worker's word, for ``timeout`` at most; act on what came."""
        pipes = {worker.pipe: worker for worker in self.workers.values() if worker.pipe >= 0}
        try:
            readable, _, _ = select.select([self.wakeup_read, *pipes], [], [], timeout)
        except InterruptedError:
            readable = []
        for fd in readable:
            if fd == self.wakeup_read:
                self._read_signals()
            else:
                self._read_states(pipes[fd])

    def _read_signals(self) -> None:
        with contextlib.suppress(BlockingIOError):
            received = os.read(self.wakeup_read, 512)
            for signum in (signal.SIGTERM, signal.SIGINT):
                if signum in received:
                    self._begin_stopping(signum.name)

    # --- starting and replacing ---

    def _start_due_workers(self) -> None:
        if self.stopping_since is not None:
            return
        now = time.monotonic()
        for slot in self.slots:
            if slot.start_at is not None and slot.start_at <= now:
                slot.start_at = None
                self._fork(slot)

    def _fork(self, slot: Slot) -> None:
        pipe_read, pipe_write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(pipe_read)
            self._become_worker(pipe_write)
        os.close(pipe_write)
        os.set_blocking(pipe_read, False)
        self.workers[pid] = Worker(slot.index, pid, pipe_read, started=time.monotonic())
        logger.info("worker %d started (pid %d)", slot.index + 1, pid)

    def _become_worker(self, pipe: int) -> None:
        """In the forked child: drop the supervisor's state, run the gateway, never return."""
        status = 1
        try:
            _stop_with(signal.SIGTERM, supervisor=self.pid)
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            for fd in (
                self.wakeup_read,
                self.wakeup_write,
                *(worker.pipe for worker in self.workers.values()),
            ):
                with contextlib.suppress(OSError):
                    os.close(fd)
            os.environ.pop("NOTIFY_SOCKET", None)  # only the supervisor speaks to systemd
            heartbeat = self.watchdog / 2 if self.watchdog else None
            status = self.run_worker(WorkerNotifier(pipe, heartbeat))
        except BaseException:
            logger.exception("worker failed")
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            if worker.pipe >= 0:
                self._read_states(worker)  # its last words; at their end it closes the pipe
            if worker.pipe >= 0:  # still open: a process the worker started may hold its end
                os.close(worker.pipe)
                worker.pipe = -1
            metrics.forget_process(pid)
            self._note_exit(worker, status)

    def _note_exit(self, worker: Worker, status: int) -> None:
        how = _exit_text(status)
        if self.stopping_since is not None:
            level = logging.INFO if how == "exited with status 0" else logging.WARNING
            logger.log(level, "worker %d (pid %d) %s", worker.slot + 1, worker.pid, how)
            return
        slot = self.slots[worker.slot]
        lived = time.monotonic() - worker.started
        if lived < YOUNG_DEATH_SECONDS:
            slot.pause = min(max(FIRST_PAUSE, slot.pause * 2), LONGEST_PAUSE)
        else:
            slot.pause = 0.0
        slot.start_at = time.monotonic() + slot.pause
        logger.error(
            "worker %d (pid %d) %s after %.1f s; starting a new one%s",
            worker.slot + 1,
            worker.pid,
            how,
            lived,
            f" in {slot.pause:g} s" if slot.pause else "",
        )

    # --- what workers say ---

    def _read_states(self, worker: Worker) -> None:
        while True:
            try:
                chunk = os.read(worker.pipe, 4096)
            except BlockingIOError:
                return
            if not chunk:  # the worker is gone; _reap tells how
                os.close(worker.pipe)
                worker.pipe = -1
                return
            *states, worker.pending = (worker.pending + chunk).split(b"\0")
            for state in states:
                self._on_state(worker, state.decode(errors="replace"))

    def _on_state(self, worker: Worker, state: str) -> None:
        now = time.monotonic()
        worker.last_beat = now
        if state.startswith("READY=1"):
            worker.ready = True
            logger.info("worker %d (pid %d) is listening", worker.slot + 1, worker.pid)
        elif state == "STOPPING=1":
            worker.stopping = True
            self._stopping_when_all_stopped()
        if worker.silent_logged:
            worker.silent_logged = False
            logger.warning("worker %d (pid %d) answers again", worker.slot + 1, worker.pid)

    def _announce_when_ready(self) -> None:
        if self.announced or self.stopping_since is not None:
            return
        if len(self.workers) == len(self.slots) and all(w.ready for w in self.workers.values()):
            self.announced = True
            host, port = self.sockets[0].getsockname()[:2]
            logger.info("%d workers are listening", len(self.workers))
            self.announce()
            self.notifier.ready(f"{len(self.workers)} workers listening on {host}:{port}")

    # --- the watchdog ---

    def _ping_watchdog(self) -> None:
        if not self.watchdog or time.monotonic() < self.next_ping:
            return
        now = time.monotonic()
        self.next_ping = now + self.watchdog / 2
        silent = [worker for worker in self.workers.values() if not self._alive(worker, now)]
        for worker in silent:
            if not worker.silent_logged:
                worker.silent_logged = True
                logger.error(
                    "worker %d (pid %d) has not answered for %.1f s: withholding the watchdog "
                    "ping, so that systemd restarts the service",
                    worker.slot + 1,
                    worker.pid,
                    now - (worker.last_beat or worker.started),
                )
        if not silent:
            self.notifier.watchdog()

    def _alive(self, worker: Worker, now: float) -> bool:
        """A ready worker's loop sent a heartbeat within half the watchdog interval (each
        worker sends one every quarter); a starting one has START_DEADLINE to get ready."""
        if worker.stopping:
            return True
        if not worker.ready:
            return now - worker.started < START_DEADLINE
        return now - worker.last_beat <= (self.watchdog or 0.0) / 2

    # --- stopping ---

    def _begin_stopping(self, why: str) -> None:
        if self.stopping_since is not None:
            return
        self.stopping_since = time.monotonic()
        for sock in self.sockets:  # whoever hears STOPPING=1 must find the port closed
            sock.close()
        logger.info("%s: stopping %d worker(s) gracefully", why, len(self.workers))
        for slot in self.slots:
            slot.start_at = None
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        self._stopping_when_all_stopped()

    def _stopping_when_all_stopped(self) -> None:
        if self.stopping_since is None or self.stopping_sent:
            return
        if all(worker.stopping for worker in self.workers.values()):
            self.stopping_sent = True
            self.notifier.stopping()

    def _stop_in_time(self) -> None:
        if self.stopping_since is None:
            return
        self._stopping_when_all_stopped()
        if time.monotonic() - self.stopping_since < self.stop_deadline_after:
            return
        for pid, worker in self.workers.items():
            logger.warning(
                "worker %d (pid %d) is still running after the grace period: killing it",
                worker.slot + 1,
                pid,
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.stop_deadline_after = float("inf")  # once


def _stop_with(signum: int, supervisor: int) -> None:
    """Have the kernel send ``signum`` to this worker when its supervisor dies (killed with
    SIGKILL, say), so that no worker outlives it holding the port."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signum) != 0:
        error = os.strerror(ctypes.get_errno())
        logger.warning("cannot ask to stop with the supervisor: %s", error)
    if os.getppid() != supervisor:  # it died before the request took effect
        os.kill(os.getpid(), signum)


def _note_signal(signum: int, frame: object) -> None:
    """Nothing: the signal's number reaches the supervisor's loop through the wakeup pipe."""


def _exit_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def supervise(
    count: int,
    sockets: Sequence[socket.socket],
    run_worker: Callable[[WorkerNotifier], int],
    announce: Callable[[], None],
    grace: float,
) -> int:
    """Run ``count`` workers on ``sockets`` until SIGTERM or SIGINT; return the exit status.

    Metrics are shared through a private directory, made here and removed at exit.
    """
    for handler in logging.getLogger().handlers:
        if handler.formatter is not None:
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
    shared = tempfile.mkdtemp(prefix="imagegate-metrics-")
    metrics.share_between_processes(shared)
    logger.info("starting %d workers", count)
    try:
        supervisor = Supervisor(count, sockets, run_worker, announce, Notifier(), grace)
        return supervisor.run()
    finally:
        shutil.rmtree(shared, ignore_errors=True)
