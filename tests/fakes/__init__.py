"""The fake upstreams of the tests and benches: real HTTP servers on local addresses.

Each service the gateway calls has one fake here, used by every test and bench:

- ``origin``: ``FakeOrigin``, an image host whose routes a test scripts (``serve``, ``status``,
  ``redirect``, ``hold``) and counts; ``BareImageHandler``, the floor a bench compares the
  gateway's ``/image-proxy`` with.
- ``providers``: ``FakeUpstream``, a scriptable service that records every request (``Answer``,
  ``Recorded``), and one subclass per provider kind and the prompt optimiser's LLM:
  ``FakeSiliconFlow``, ``FakeChatImages``, ``FakeOpenAIImages``, ``FakeSD``, ``FakeLLM``.
- ``gemini``: ``FakeGemini``, Google's ``generateContent`` with image output (inline base64,
  refusals as 200s, Google's error body).
- ``tasks``: asynchronous task APIs, each task following a scripted plan of poll answers:
  ``FakeModelScope``, ``FakeDashScope`` (on ``FakeTaskApi``; DashScope's synchronous Qwen image
  edits too).
- ``task_service``: ``FakeTaskService``, what the fakes of task APIs share (``TaskScript``: polls
  still running, then an outcome; links that expire once downloaded), and one module per task
  API: ``bfl`` (``FakeBFL``), ``replicate`` (``FakeReplicate``), ``fal`` (``FakeFal``).
- ``sets``: ``FakeSet``, the fakes of one test started together on one image host.
- ``proxy``: ``RecordingProxy``, a forwarding proxy (CONNECT, absolute-URI HTTP, SOCKS5).
- ``listener``: ``CountingListener``, a host that must never be reached.
- ``images``: PNG bytes (real, noise, of an exact size), their base64 forms, and bytes shaped
  like a JPEG or a WebP.
- ``child``: the stdin/stdout protocol of a bench's fakes process.
- ``loopback``: how every fake listens.

Tests import it as ``fakes`` (tests/ is on pytest's path); a bench puts tests/ on its path
first. It is not part of the installed gateway.
"""

from .bfl import FakeBFL
from .child import emit, serve_until_stdin_closes
from .fal import FakeFal
from .gemini import FakeGemini
from .images import (
    PNG_SIGNATURE,
    b64_png,
    data_uri,
    jpeg_bytes,
    noise_png,
    noise_png_of_size,
    png_bytes,
    png_of_length,
    webp_bytes,
)
from .listener import CountingListener
from .origin import BareImageHandler, FakeOrigin, Held, bare_image_app
from .providers import (
    DEFAULT_OPTIMISED_PROMPT,
    Answer,
    FakeChatImages,
    FakeLLM,
    FakeOpenAIImages,
    FakeSD,
    FakeSiliconFlow,
    FakeUpstream,
    Recorded,
    bearer_key,
    chat_completion,
    model_of,
    openai_error,
)
from .proxy import RecordingProxy, server_name
from .replicate import FakeReplicate
from .sets import FakeSet
from .task_service import DONE, FAILED, MODERATED, NEVER, FakeTask, FakeTaskService, TaskScript
from .tasks import FakeDashScope, FakeModelScope, FakeTaskApi

__all__ = [
    "DEFAULT_OPTIMISED_PROMPT",
    "DONE",
    "FAILED",
    "MODERATED",
    "NEVER",
    "PNG_SIGNATURE",
    "Answer",
    "BareImageHandler",
    "CountingListener",
    "FakeBFL",
    "FakeChatImages",
    "FakeDashScope",
    "FakeFal",
    "FakeGemini",
    "FakeLLM",
    "FakeModelScope",
    "FakeOpenAIImages",
    "FakeOrigin",
    "FakeReplicate",
    "FakeSD",
    "FakeSet",
    "FakeSiliconFlow",
    "FakeTask",
    "FakeTaskApi",
    "FakeTaskService",
    "FakeUpstream",
    "Held",
    "Recorded",
    "RecordingProxy",
    "TaskScript",
    "b64_png",
    "bare_image_app",
    "bearer_key",
    "chat_completion",
    "data_uri",
    "emit",
    "jpeg_bytes",
    "model_of",
    "noise_png",
    "noise_png_of_size",
    "openai_error",
    "png_bytes",
    "png_of_length",
    "serve_until_stdin_closes",
    "server_name",
    "webp_bytes",
]
