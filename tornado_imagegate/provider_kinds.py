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

from tornado_imagegate.sizing import (
    RATIOS_1024,
    RATIOS_2048,
    RATIOS_GEMINI,
    Size,
    SizeRules,
    size_for_ratio,
)

# The aspect_ratio values FLUX and most image models on Replicate take.
REPLICATE_ASPECT_RATIOS = (
    "1:1",
    "16:9",
    "21:9",
    "3:2",
    "2:3",
    "4:5",
    "5:4",
    "3:4",
    "4:3",
    "9:16",
    "9:21",
)
# Replicate's FLUX 1.1 [pro] takes all of these but 21:9 and 9:21 (its aspect_ratio enum); its
# Ultra model takes them all.
REPLICATE_FLUX_11_PRO_ASPECT_RATIOS = tuple(
    ratio for ratio in REPLICATE_ASPECT_RATIOS if ratio not in ("21:9", "9:21")
)
# Qwen-Image's five sizes, as DashScope and SiliconFlow list them (SiliconFlow adds 3:2 and 2:3).
QWEN_IMAGE_SIZES = ((1328, 1328), (1664, 928), (928, 1664), (1472, 1140), (1140, 1472))
# The most input images one request may carry, whatever its kind or group says.
MAX_INPUT_IMAGES = 4


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
    # The provider's official base URL (or endpoint): IMAGE_GEN_API_BASE_n may then be unset.
    default_endpoint: str = ""
    # Runs inside the gateway: no endpoint, no keys, not a value of IMAGE_GEN_KIND_n.
    local: bool = False
    # Its configuration: constructor argument of the implementation -> the Settings field it gets.
    settings_fields: Mapping[str, str] = field(default_factory=dict)
    takes_text: bool = True
    # How many input images (to edit, or as references) one request may carry; 0: none.
    image_inputs: int = 0
    # Per model family (a piece of the model id, lower case), how many it takes when that differs
    # from the kind's number; the first family that matches wins.
    model_image_inputs: tuple[tuple[str, int], ...] = ()
    # Takes the Images API's edit mask in a field of its own (every model of the kind, or the
    # model families named); a mask for any other model is refused, never dropped.
    takes_masks: bool = False
    model_masks: tuple[str, ...] = ()
    # One upstream request can make several images; otherwise n images take n requests.
    native_n: bool = True
    # An asynchronous task API: its implementation is a TaskApi, driven by the task engine
    # (providers/task_engine.py), which submits and then polls.
    polls: bool = False
    # The sizes it makes (its API module's fit_size reads them), and, per model family (a piece
    # of the model id, lower case), the rules that differ; the first family that matches wins.
    size_rules: SizeRules = field(default_factory=SizeRules)
    model_size_rules: tuple[tuple[str, SizeRules], ...] = ()

    @property
    def default_size(self) -> Size:
        """The size used when the prompt names no ratio and the request no size."""
        return self.ratios["1:1"]

    def image_inputs_for(self, model: str) -> int:
        """How many input images ``model`` takes: its family's number, else the kind's."""
        lowered = model.lower()
        return next(
            (n for part, n in self.model_image_inputs if part in lowered), self.image_inputs
        )

    def takes_mask(self, model: str) -> bool:
        """Whether ``model`` takes an edit mask: the kind's answer, or its family's."""
        lowered = model.lower()
        return self.takes_masks or any(part in lowered for part in self.model_masks)

    def sizes_for(self, model: str) -> SizeRules:
        """The size rules of ``model``: its family's, else the kind's."""
        lowered = model.lower()
        return next((r for part, r in self.model_size_rules if part in lowered), self.size_rules)

    def build(self, settings: object) -> Any:
        """A new ProviderApi (or, for a local kind, Provider) given the settings it declares.

        ``settings`` is the gateway's Settings; only the fields named in ``settings_fields`` are
        read (config imports this table, so the type is not imported here).
        """
        implementation = pkgutil.resolve_name(self.implementation)
        arguments = {arg: getattr(settings, name) for arg, name in self.settings_fields.items()}
        return implementation(**arguments)


def _replicate_sizes(ratios: tuple[str, ...]) -> SizeRules:
    """The sizes (about a megapixel) of these ``aspect_ratio`` values, as rules."""
    return SizeRules(sizes=tuple(size_for_ratio(*map(int, r.split(":")), 1024) for r in ratios))


KINDS: dict[str, ProviderKind] = {
    kind.name: kind
    for kind in (
        ProviderKind(
            name="chat",
            description="chat completions that answer with an image",
            implementation="tornado_imagegate.providers.chat:ChatImagesApi",
            ratios=RATIOS_1024,
            endpoint_path="/chat/completions",
            # Forwarded as image_url parts of the user message.
            image_inputs=4,
            native_n=False,
        ),
        ProviderKind(
            name="openai-images",
            description="OpenAI Images API or a compatible one",
            implementation="tornado_imagegate.providers.openai_images:OpenAIImagesApi",
            ratios=RATIOS_1024,
            endpoint_path="/images/generations",
            # Sent to the edits endpoint (/images/edits) beside it, with the mask. OpenAI's edits
            # take the GPT image models and dall-e-2 (one image); dall-e-3 has no edits.
            image_inputs=4,
            model_image_inputs=(("dall-e-3", 0), ("dall-e-2", 1)),
            takes_masks=True,
        ),
        ProviderKind(
            name="siliconflow",
            description="SiliconFlow-type images API",
            implementation="tornado_imagegate.providers.siliconflow:SiliconFlowApi",
            ratios=RATIOS_1024,
            endpoint_path="/images/generations",
            # The Qwen-Image-Edit models, in image (and image2, image3 for the 2509 one).
            model_image_inputs=(("qwen-image-edit-2509", 3), ("qwen-image-edit", 1)),
            # The 1024 ratio table's sizes; Qwen-Image's are the seven its API reference
            # recommends (its edit models are sent no size).
            size_rules=SizeRules(sizes=tuple(dict.fromkeys(RATIOS_1024.values()))),
            model_size_rules=(
                (
                    "qwen-image",
                    SizeRules(sizes=(*QWEN_IMAGE_SIZES, (1584, 1056), (1056, 1584))),
                ),
            ),
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
            name="gemini",
            description="Google Gemini generateContent with image output",
            implementation="tornado_imagegate.providers.gemini:GeminiApi",
            ratios=RATIOS_GEMINI,
            # The model is part of the path: the API appends /models/{model}:generateContent.
            default_endpoint="https://generativelanguage.googleapis.com/v1beta",
            # inlineData parts beside the prompt: Gemini 2.5 Flash Image works best with up to
            # three; the Gemini 3 image models take up to fourteen (held to the gateway's most).
            image_inputs=3,
            model_image_inputs=(("gemini-3", MAX_INPUT_IMAGES),),
            native_n=False,
        ),
        ProviderKind(
            name="modelscope",
            description="ModelScope API-Inference images, asynchronous: Z-Image, Qwen-Image, FLUX",
            implementation="tornado_imagegate.providers.modelscope:ModelScopeApi",
            ratios=RATIOS_1024,
            endpoint_path="/images/generations",
            default_endpoint="https://api-inference.modelscope.cn/v1",
            # The Qwen-Image-Edit models, in image_url as a list of data URIs. The 2509 and 2511
            # models combine up to three images (as on SiliconFlow); the plain one and any other
            # edit model are held to one, as not every edit model is documented to take more.
            model_image_inputs=(
                ("qwen-image-edit-2509", 3),
                ("qwen-image-edit-2511", 3),
                ("image-edit", 1),
            ),
            native_n=False,
            polls=True,
            # Its parameter table: SD-family models 64-2048 a side, FLUX 64-1024, Qwen-Image
            # 64-1664. The multiple of 16 is ours (the table names none).
            size_rules=SizeRules(max_side=2048, multiple=16),
            model_size_rules=(
                ("flux", SizeRules(max_side=1024, multiple=16)),
                ("qwen-image", SizeRules(max_side=1664, multiple=16)),
            ),
        ),
        ProviderKind(
            name="dashscope",
            description="Alibaba DashScope images: Wan and Qwen-Image, tasks or answered at once",
            implementation="tornado_imagegate.providers.dashscope:DashScopeApi",
            ratios=RATIOS_1024,
            endpoint_path="/services/aigc/text2image/image-synthesis",
            default_endpoint="https://dashscope.aliyuncs.com/api/v1",
            # The Qwen image edit models (plain, plus, max) and the Qwen-Image 2.0 series, called
            # synchronously on the multimodal-generation endpoint: up to three data-URI images
            # before the text; and wan2.6-image, a task on the image-generation endpoint: up to
            # four after the text.
            model_image_inputs=(("qwen-image-edit", 3), ("qwen-image-2.0", 3), ("wan2.6-image", 4)),
            polls=True,
            # wan2.1/2.2: 512-1440 a side; wan2.5: 768*768 to 1440*1440 pixels, 1:4 to 4:1;
            # wan2.6: from 1280*1280 pixels; qwen-image (and -plus, -max): five sizes; the edit
            # models' plus and max series 512-2048 a side (plain qwen-image-edit is sent no
            # size); the 2.0 series 512*512 to 2048*2048 pixels. The multiple of 16 is ours.
            size_rules=SizeRules(min_side=512, max_side=1440, multiple=16),
            model_size_rules=(
                ("qwen-image-edit", SizeRules(min_side=512, max_side=2048, multiple=16)),
                (
                    "qwen-image-2.0",
                    SizeRules(
                        min_side=512,
                        max_side=2048,
                        multiple=16,
                        min_pixels=512 * 512,
                        max_pixels=2048 * 2048,
                    ),
                ),
                (
                    "wan2.6",
                    SizeRules(
                        max_side=2880,
                        multiple=16,
                        min_pixels=1280 * 1280,
                        max_pixels=1440 * 1440,
                        max_ratio=4,
                    ),
                ),
                (
                    "wan2.5",
                    SizeRules(
                        max_side=2880,
                        multiple=16,
                        min_pixels=768 * 768,
                        max_pixels=1440 * 1440,
                        max_ratio=4,
                    ),
                ),
                (
                    "qwen-image",
                    SizeRules(sizes=QWEN_IMAGE_SIZES),
                ),
            ),
        ),
        ProviderKind(
            name="bfl",
            description="Black Forest Labs FLUX API, asynchronous: FLUX 1.1, Kontext, FLUX.2",
            implementation="tornado_imagegate.providers.bfl:BflApi",
            ratios=RATIOS_1024,
            default_endpoint="https://api.bfl.ai/v1",
            # Kontext (input_image to input_image_4) and FLUX.2 (to input_image_8) edit; the fill
            # model (flux-pro-1.0-fill) inpaints one image, in image, with its mask in mask.
            model_image_inputs=(("kontext", 4), ("flux-2", 4), ("fill", 1)),
            model_masks=("fill",),
            native_n=False,
            polls=True,
            # Width and height: multiples of 32 from 256 to 1440, as BFL documents them for
            # FLUX 1.1 [pro] (FLUX.2 takes more; these suit every model that takes a size).
            # Kontext and Ultra take an aspect_ratio, "between 21:9 and 9:21".
            size_rules=SizeRules(min_side=256, max_side=1440, multiple=32),
            model_size_rules=(
                ("kontext", SizeRules(min_side=256, max_side=1440, multiple=32, max_ratio=21 / 9)),
                ("ultra", SizeRules(min_side=256, max_side=1440, multiple=32, max_ratio=21 / 9)),
            ),
        ),
        ProviderKind(
            name="replicate",
            description="Replicate predictions, asynchronous: owner/name or a version id",
            implementation="tornado_imagegate.providers.replicate:ReplicateApi",
            ratios=RATIOS_1024,
            default_endpoint="https://api.replicate.com/v1",
            settings_fields={"timeout": "image_gen_timeout"},
            native_n=False,
            polls=True,
            # Sized by aspect_ratio: the one of REPLICATE_ASPECT_RATIOS nearest the size asked
            # (for FLUX 1.1 [pro], of those its enum has: an aspect_ratio outside it is a 422).
            size_rules=_replicate_sizes(REPLICATE_ASPECT_RATIOS),
            model_size_rules=(
                ("flux-1.1-pro-ultra", _replicate_sizes(REPLICATE_ASPECT_RATIOS)),
                ("flux-1.1-pro", _replicate_sizes(REPLICATE_FLUX_11_PRO_ASPECT_RATIOS)),
            ),
        ),
        ProviderKind(
            name="fal",
            description="fal queue, asynchronous: the app id as the model",
            implementation="tornado_imagegate.providers.fal:FalApi",
            ratios=RATIOS_1024,
            default_endpoint="https://queue.fal.run",
            # Apps that edit take data URIs: image_urls, a list (the /edit apps, Kontext multi;
            # held to three, as not every such app is documented to take more), or image_url,
            # one (Kontext, inpainting apps, which take the mask in mask_url).
            model_image_inputs=(
                ("/multi", 3),  # the Kontext multi apps, kontext/multi and kontext/max/multi
                ("kontext", 1),
                ("/edit", 3),
                ("inpaint", 1),
            ),
            model_masks=("inpaint",),
            native_n=False,
            polls=True,
            # image_size: a preset, or any width and height (FLUX apps: multiples of 16).
            size_rules=SizeRules(min_side=256, max_side=2048, multiple=16),
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
