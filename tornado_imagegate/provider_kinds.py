"""The provider kinds, each declared once: what it is, what it speaks, its sizes, what it can take.

Configuration, request parsing, the ``--check-config`` report and ``make_provider`` read this
table. It names each kind's implementation as ``"module:Class"``, imported only when a provider is
built, so that reading the table imports no provider API: config and request parsing stay below
the providers, and a provider module may import them freely.

A new kind is one entry here and its own module under ``providers/``.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tornado_imagegate.sizing import RATIOS_1024, RATIOS_2048, Size


@dataclass(frozen=True, eq=False)
class ProviderKind:
    """One kind of image provider, as ``IMAGE_GEN_KIND_n`` names it."""

    name: str
    # One line, shown by the --check-config report.
    description: str
    # "module:Class" of a ProviderApi (the gateway calls its endpoint with the group's keys),
    # of a TaskApi when the kind ``polls``, or, for a local kind, of a Provider that makes the
    # images itself.
    implementation: str
    # The aspect ratios a prompt may name, and their sizes; "1:1" is the size when none is named.
    ratios: dict[str, Size]
    # What its endpoint's URL ends with; "" when the configured URL is called as given.
    endpoint_path: str = ""
    default_endpoint: str = ""
    # Runs inside the gateway: no endpoint, no keys, not a value of IMAGE_GEN_KIND_n.
    local: bool = False
    # Its configuration: constructor argument of the implementation -> the Settings field it gets.
    settings_fields: Mapping[str, str] = field(default_factory=dict)
    takes_text: bool = True
    # How many input images a request may carry (edits, references); no kind takes any yet.
    image_inputs: int = 0
    # One upstream request can make several images; otherwise n images take n requests.
    native_n: bool = True
    # An asynchronous task API: its implementation is a TaskApi, driven by the task engine
    # (providers/task_engine.py), which submits and then polls.
    polls: bool = False

    @property
    def default_size(self) -> Size:
        """The size used when the prompt names no ratio and the request no size."""
        return self.ratios["1:1"]

    def build(self, settings: object) -> Any:
        """A new ProviderApi (or, for a local kind, Provider) given the settings it declares.

        ``settings`` is the gateway's Settings; only the fields named in ``settings_fields`` are
        read (config imports this table, so the type is not imported here).
        """
        implementation = pkgutil.resolve_name(self.implementation)
        arguments = {arg: getattr(settings, name) for arg, name in self.settings_fields.items()}
        return implementation(**arguments)


KINDS: dict[str, ProviderKind] = {
    kind.name: kind
    for kind in (
        ProviderKind(
            name="chat",
            description="chat completions that answer with an image",
            implementation="tornado_imagegate.providers.chat:ChatImagesApi",
            ratios=RATIOS_1024,
            endpoint_path="/chat/completions",
            native_n=False,
        ),
        ProviderKind(
            name="openai-images",
            description="OpenAI Images API or a compatible one",
            implementation="tornado_imagegate.providers.openai_images:OpenAIImagesApi",
            ratios=RATIOS_1024,
            endpoint_path="/images/generations",
        ),
        ProviderKind(
            name="siliconflow",
            description="SiliconFlow-type images API",
            implementation="tornado_imagegate.providers.siliconflow:SiliconFlowApi",
            ratios=RATIOS_1024,
            endpoint_path="/images/generations",
        ),
        ProviderKind(
            name="sd",
            description="SD-type API that answers with data.image_url",
            implementation="tornado_imagegate.providers.sd:SdApi",
            ratios=RATIOS_2048,
            default_endpoint="https://sd.exacg.cc/api/v1/generate_image",
            settings_fields={"steps": "sd_steps", "model_index": "sd_model_index"},
            native_n=False,
        ),
        ProviderKind(
            name="bfl",
            description="Black Forest Labs FLUX API (submits a task, polls it)",
            implementation="tornado_imagegate.providers.bfl:BflApi",
            ratios=RATIOS_1024,
            default_endpoint="https://api.bfl.ai/v1",
            native_n=False,
            polls=True,
        ),
        ProviderKind(
            name="replicate",
            description="Replicate predictions (waits, then polls)",
            implementation="tornado_imagegate.providers.replicate:ReplicateApi",
            ratios=RATIOS_1024,
            default_endpoint="https://api.replicate.com/v1",
            settings_fields={"timeout": "image_gen_timeout"},
            native_n=False,
            polls=True,
        ),
        ProviderKind(
            name="fal",
            description="fal queue (submits a request, polls it)",
            implementation="tornado_imagegate.providers.fal:FalApi",
            ratios=RATIOS_1024,
            default_endpoint="https://queue.fal.run",
            native_n=False,
            polls=True,
        ),
        ProviderKind(
            name="demo",
            description="built-in offline demo provider (renders locally, no keys)",
            implementation="tornado_imagegate.providers.demo:DemoProvider",
            ratios=RATIOS_1024,
            local=True,
        ),
    )
}


def provider_kind(name: str) -> ProviderKind:
    """The kind called ``name``; KeyError when there is none (configuration checks names first)."""
    return KINDS[name]


def group_kind_names() -> tuple[str, ...]:
    """The kinds a configured group may be (``IMAGE_GEN_KIND_n``): every kind that is not local."""
    return tuple(name for name, kind in KINDS.items() if not kind.local)
