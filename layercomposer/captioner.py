"""A vision-language captioner: Qwen2.5-VL-Instruct, loaded natively by transformers.

`load_captioner` resolves the model like `lc render` does (a hub id through the Hugging Face
cache, honouring `HF_HUB_OFFLINE`; a local folder; or `builtin:tiny`, random weights built in
code) and `Captioner.caption` describes a batch of images with greedy decoding.

transformers' `AutoProcessor` for Qwen2.5-VL also loads its video processor, which needs
torchvision; torchvision does not import beside every torch (not beside torch 2.13, here).
Captions need images only, so the processor is loaded without one (`ImageOnlyQwen2_5_VLProcessor`)
and `AutoImageProcessor` picks the PIL image processor when torchvision is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor

from .errors import ModelError
from .models import (
    DEFAULT_CAPTIONER,
    TINY_MODEL_ID,
    ModelInfo,
    ModelKind,
    _first_line,
    local_folder,
    resolve_device,
    resolve_dtype,
)

if TYPE_CHECKING:
    import torch
    from PIL import Image

CAPTIONER_KIND = ModelKind("Qwen2.5-VL-Instruct", DEFAULT_CAPTIONER, "--model", gated=False)
MODEL_TYPES = ("qwen2_5_vl",)  # config.json's model_type of the models this module loads
# Qwen's own upper bound in its examples (1280 tokens of 28x28 px); a 512 px dataset image is
# ~330 vision tokens, a 2048 px one would be ~5,300 without it.
VISION_MAX_PIXELS = 1280 * 28 * 28

# Qwen2.5-VL's chat format (ChatML with vision markers), for a processor saved without its
# template; what the hub model's own template gives for a user turn of images and text.
QWEN_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` with no video processor (which needs torchvision)."""

    @classmethod
    def get_attributes(cls):
        return [name for name in super().get_attributes() if name != "video_processor"]

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


# Which captioner wrote the captions: the same record as a render's model (id, source, revision,
# folder, config hash, random weights), for the dataset's index.json.
CaptionerInfo = ModelInfo


@dataclass(frozen=True)
class Generated:
    """One image's decoded output."""

    text: str
    finished: bool  # the model ended it; False: cut off at max_new_tokens


@dataclass
class Captioner:
    model: object  # Qwen2_5_VLForConditionalGeneration
    processor: ImageOnlyQwen2_5_VLProcessor
    info: CaptionerInfo
    device: torch.device

    def caption(
        self, images: list[Image.Image], prompt: str, max_new_tokens: int
    ) -> list[Generated]:
        """The model's answer to `prompt` about each image, decoded greedily as one batch."""
        import torch

        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        text = self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        images = [_fit_vision(image) for image in images]
        inputs = self.processor(
            text=[text] * len(images), images=images, padding=True, return_tensors="pt"
        ).to(self.device)
        try:
            with torch.inference_mode():
                output = self.model.generate(
                    **inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1
                )
        except torch.OutOfMemoryError:
            raise ModelError(
                f"out of memory on {self.device} captioning {len(images)} images at once",
                hint="lower --batch-size (or --dtype bfloat16); the captions already written "
                "are kept and the next run goes on from there",
            ) from None
        new_tokens = output[:, inputs["input_ids"].shape[1] :]  # (B, <= max_new_tokens)
        ends = _end_token_ids(self.model, self.processor.tokenizer)
        texts = self.processor.batch_decode(
            new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return [
            Generated(text, any(int(token) in ends for token in tokens))
            for text, tokens in zip(texts, new_tokens, strict=True)
        ]


def load_captioner(
    model: str = DEFAULT_CAPTIONER,
    revision: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
) -> Captioner:
    """A ready captioner, or a ModelError that says how to get its weights."""
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    if model == TINY_MODEL_ID:
        from .tiny_qwen import tiny_qwen_vl_captioner

        network, processor = tiny_qwen_vl_captioner()
        config = json.dumps(network.config.to_dict(), sort_keys=True, default=str).encode()
        info = CaptionerInfo(
            model, "builtin", None, None, hashlib.sha256(config).hexdigest(), random_weights=True
        )
    else:
        network, processor, info = _from_pretrained(model, revision, torch_dtype, target)
    network.to(device=target, dtype=torch_dtype).eval()
    # Decoder-only models generate after the prompt: a batch pads on the left.
    processor.tokenizer.padding_side = "left"
    if not processor.chat_template:
        processor.chat_template = QWEN_VL_CHAT_TEMPLATE
    return Captioner(network, processor, info, target)


def _from_pretrained(model: str, revision: str | None, torch_dtype, target: torch.device):
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    kind = CAPTIONER_KIND
    folder, looks_local = local_folder(model, kind, "config.json", "transformers", "captioner")
    source = str(folder) if looks_local else model
    hint = f"download it with `hf download {model}` (or point {kind.option} at a local copy)"
    try:
        config = AutoConfig.from_pretrained(source, revision=revision)
        if config.model_type not in MODEL_TYPES:
            raise ModelError(
                f"{model} is a {config.model_type!r} model; lc dataset caption loads "
                f"{kind.name} models (model_type {', '.join(MODEL_TYPES)})",
                hint=f"for example --model {kind.example}",
            )
        processor = ImageOnlyQwen2_5_VLProcessor.from_pretrained(source, revision=revision)
        # Straight onto the GPU: a 7B in bfloat16 is 16 GB that need not pass through RAM.
        on_gpu = {"device_map": str(target)} if target.type != "cpu" else {}
        network = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            source, revision=revision, dtype=torch_dtype, **on_gpu
        )
    except ModelError:
        raise
    except RevisionNotFoundError:
        raise ModelError(f"{model} has no revision {revision!r}") from None
    except GatedRepoError:
        raise ModelError(f"no access to {model}", hint=hint) from None
    except RepositoryNotFoundError:
        raise ModelError(f"no model {model!r} on the hub (or it is private)", hint=hint) from None
    except ImportError as exc:  # a processor class that needs a package lc does not install
        raise ModelError(
            f"cannot load {model}: it needs a package that is missing ({_first_line(exc)})"
        ) from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError, KeyError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        why = "HF_HUB_OFFLINE is set" if offline else _first_line(exc)
        where = "in the folder" if looks_local else "in the Hugging Face cache"
        raise ModelError(
            f"cannot load {model}: its weights are not {where} ({why})", hint=hint
        ) from None
    config_file = _config_file(source, revision, looks_local)
    config_hash = hashlib.sha256(config_file.read_bytes()).hexdigest() if config_file else None
    snapshot = config_file.parent if config_file else None
    commit = snapshot.name if snapshot and snapshot.parent.name == "snapshots" else None
    info = CaptionerInfo(
        model,
        "local" if looks_local else "hub",
        None if looks_local else (commit or revision),
        str(config_file.parent) if config_file else None,
        config_hash,
        False,
    )
    return network, processor, info


def _config_file(source: str, revision: str | None, local: bool) -> Path | None:
    if local:
        return Path(source) / "config.json"
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(source, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - only a detail of the record
        return None
    return Path(found) if isinstance(found, str) else None


def _fit_vision(image: Image.Image) -> Image.Image:
    """The image in RGB, scaled down to at most VISION_MAX_PIXELS (the processor's own bound
    is the model's, ~12.8 MP for Qwen2.5-VL)."""
    from PIL import Image

    image = image.convert("RGB")
    if image.width * image.height <= VISION_MAX_PIXELS:
        return image
    scale = (VISION_MAX_PIXELS / (image.width * image.height)) ** 0.5
    size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _end_token_ids(network, tokenizer) -> set[int]:
    """The token ids that end a generation (the generation config's, else the tokenizer's)."""
    ends = getattr(getattr(network, "generation_config", None), "eos_token_id", None)
    if ends is None:
        ends = tokenizer.eos_token_id
    if ends is None:
        return set()
    return {int(ends)} if isinstance(ends, int) else {int(token) for token in ends}
