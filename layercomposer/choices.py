"""The closed sets of names lc's options take, each typed once.

The command-line options (`cli/_common.py`) are typed with these, so `--help` lists the choices,
shell completion offers them and a wrong value is a usage error (exit 2) that names them; the
modules that act on a value take the same type and derive their tuples from it with `names`.
No torch here: `lc --help` and the canvas commands start without it.
"""

from __future__ import annotations

from typing import Literal, get_args

Mode = Literal["auto", "layered", "collage"]  # auto: layered with a LayerComposer LoRA
Encode = Literal["canvas", "box"]  # what each layer's VAE encode sees
Fill = Literal["black", "grey"]  # the colour transparent layer pixels are encoded as
FillSetting = Literal["auto", Fill]  # auto: the LoRA's recorded fill, else black
Offload = Literal["none", "model", "sequential"]
Dtype = Literal["auto", "bfloat16", "float16", "float32"]  # auto: bf16 on CUDA, fp32 elsewhere
Quantize = Literal["none", "int8", "fp8"]
Detector = Literal["mediapipe", "dlib", "insightface"]  # face detectors
Embedder = Literal["dlib", "insightface"]  # identity embedders
Segmenter = Literal["mediapipe"]  # person segmenters
Assign = Literal["order", "size", "manual"]  # which prior face each subject takes
Fallback = Literal["error", "grid"]  # too few prior faces
PriorPrompt = Literal["given", "rewrite"]  # the text a generated prior comes from
Suite = Literal["1p", "2p", "4p"]  # lc bench: persons per image
IdentityBackend = Literal["insightface", "antelopev2", "dlib"]
LoraFormat = Literal["comfyui"]  # lc lora export


def names(choice) -> tuple[str, ...]:
    """The values of a choice type above, in their order: `names(Mode)` -> ("auto", ...)."""
    return get_args(choice)
