"""FLUX's fused layers as a LoRA sees them: diffusers' projections <-> ComfyUI / kohya names.

The original FLUX code, which ComfyUI and kohya follow, computes q, k and v with one linear layer
(`double_blocks.N.img_attn.qkv`, `txt_attn.qkv`) and in single blocks q, k, v and the MLP input
with one (`single_blocks.N.linear1`, in that order, the MLP part `MLP_RATIO` times as wide).
diffusers has one layer per projection. A LoRA on diffusers' projections is one LoRA on the fused
layer with the down matrices stacked and the up matrices block-diagonal, so the fused rank is the
sum of the projections' ranks (3 x 4 = 12 for a rank-4 q, k, v). `lc lora export` writes that;
lc's loader and `lc lora info` find the blocks again in the up matrix (`split_columns`).

No torch here: `lc lora info` uses this on header shapes and raw tensor bytes.
"""

from __future__ import annotations

import re

import numpy as np

MLP_RATIO = 4  # FLUX.1's single-block MLP width / hidden size (12288 / 3072)

# diffusers module in a double / single block -> (ComfyUI module, its slot in that module's output)
DOUBLE_BLOCK = {
    "attn.to_q": ("img_attn.qkv", 0),
    "attn.to_k": ("img_attn.qkv", 1),
    "attn.to_v": ("img_attn.qkv", 2),
    "attn.to_out.0": ("img_attn.proj", 0),
    "attn.add_q_proj": ("txt_attn.qkv", 0),
    "attn.add_k_proj": ("txt_attn.qkv", 1),
    "attn.add_v_proj": ("txt_attn.qkv", 2),
    "attn.to_add_out": ("txt_attn.proj", 0),
    "ff.net.0.proj": ("img_mlp.0", 0),
    "ff.net.2": ("img_mlp.2", 0),
    "ff_context.net.0.proj": ("txt_mlp.0", 0),
    "ff_context.net.2": ("txt_mlp.2", 0),
}
SINGLE_BLOCK = {
    "attn.to_q": ("linear1", 0),
    "attn.to_k": ("linear1", 1),
    "attn.to_v": ("linear1", 2),
    "proj_mlp": ("linear1", 3),
    "proj_out": ("linear2", 0),
}
# ComfyUI block name -> (diffusers block name, its module table)
BLOCKS = {
    "double_blocks": ("transformer_blocks", DOUBLE_BLOCK),
    "single_blocks": ("single_transformer_blocks", SINGLE_BLOCK),
}
FUSED = ("img_attn.qkv", "txt_attn.qkv", "linear1")

_PARTS = {
    "lora_down.weight": "down",
    "lora_A.weight": "down",
    "lora_up.weight": "up",
    "lora_B.weight": "up",
    "alpha": "alpha",
}
_SUFFIX = "|".join(re.escape(part) for part in _PARTS)
_COMFYUI_KEY = re.compile(
    rf"^diffusion_model\.(double_blocks|single_blocks)\.(\d+)\.(.+)\.({_SUFFIX})$"
)
_KOHYA_KEY = re.compile(rf"^lora_unet_(double_blocks|single_blocks)_(\d+)_(.+)\.({_SUFFIX})$")
_KOHYA_MODULES = {  # kohya writes the module's dots as underscores: img_attn_qkv
    block: {module.replace(".", "_"): module for module, _ in table.values()}
    for block, (_, table) in BLOCKS.items()
}


def parse_key(key: str) -> tuple[str, str] | None:
    """(layer, part) of a ComfyUI or kohya key of a FLUX block layer, else None.

    `layer` is the ComfyUI name without `diffusion_model.` ("double_blocks.0.img_attn.qkv"),
    `part` "down", "up" or "alpha". Only the attention and MLP layers in `BLOCKS` are known.
    """
    if match := _COMFYUI_KEY.match(key):
        block, index, module, part = match.groups()
    elif match := _KOHYA_KEY.match(key):
        block, index, kohya_module, part = match.groups()
        module = _KOHYA_MODULES[block].get(kohya_module, "")
    else:
        return None
    if module not in _KOHYA_MODULES[block].values():
        return None
    return f"{block}.{int(index)}.{module}", _PARTS[part]


def comfyui_layer(block: str, index: int | str, module: str) -> tuple[str, int] | None:
    """(ComfyUI layer, slot) holding diffusers' `module` of block `index`, or None.

    `block` is diffusers' "transformer_blocks" or "single_transformer_blocks".
    """
    for comfy_block, (diffusers_block, table) in BLOCKS.items():
        if block == diffusers_block and module in table:
            target, slot = table[module]
            return f"{comfy_block}.{int(index)}.{target}", slot
    return None


def diffusers_modules(layer: str) -> list[str]:
    """diffusers' modules (transformer-relative) in the slots of ComfyUI `layer`, in slot order."""
    block, index, module = layer.split(".", 2)
    diffusers_block, table = BLOCKS[block]
    slots = sorted((slot, name) for name, (target, slot) in table.items() if target == module)
    return [f"{diffusers_block}.{index}.{name}" for _, name in slots]


def slot_rows(layer: str, hidden: int) -> list[int]:
    """Output rows of each slot of ComfyUI `layer` in a FLUX of hidden size `hidden`."""
    module = layer.split(".", 2)[2]
    if module == "linear1":
        return [hidden, hidden, hidden, MLP_RATIO * hidden]
    if module.endswith(".qkv"):
        return [hidden, hidden, hidden]
    raise ValueError(f"{layer} is not a fused layer")


def split_columns(supports: list[np.ndarray]) -> list[np.ndarray] | None:
    """Per slot, the columns of a fused up matrix its rows use; None if that is not a split.

    `supports[s]` is a (rank,) bool array: which columns are non-zero in slot s's rows. A LoRA
    exported from separate projections uses disjoint columns (block-diagonal up); one trained on
    the fused layer itself (kohya) shares them, and an all-zero up uses none: both give None,
    and then every slot takes the whole down matrix.
    """
    stacked = np.stack(supports)  # (slots, rank)
    if not stacked.any() or (stacked.sum(axis=0) > 1).any():
        return None
    return [np.flatnonzero(used) for used in stacked]
