"""Export a diffusers-format FLUX LoRA to the ComfyUI key format (`diffusion_model.*`).

ComfyUI follows the original FLUX code, where q, k and v (and in single blocks also the MLP
input) are one fused linear layer. A LoRA on the separate diffusers projections becomes one LoRA
on the fused layer: the down matrices stacked, the up matrices block-diagonal, so that
up @ down reproduces each projection's own delta and leaves the others at zero.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import LcError

# diffusers module -> (ComfyUI module, which slot of the fused output it fills, slot count)
_DOUBLE = {
    "attn.to_q": ("img_attn.qkv", 0, 3),
    "attn.to_k": ("img_attn.qkv", 1, 3),
    "attn.to_v": ("img_attn.qkv", 2, 3),
    "attn.to_out.0": ("img_attn.proj", 0, 1),
    "attn.add_q_proj": ("txt_attn.qkv", 0, 3),
    "attn.add_k_proj": ("txt_attn.qkv", 1, 3),
    "attn.add_v_proj": ("txt_attn.qkv", 2, 3),
    "attn.to_add_out": ("txt_attn.proj", 0, 1),
    "ff.net.0.proj": ("img_mlp.0", 0, 1),
    "ff.net.2": ("img_mlp.2", 0, 1),
    "ff_context.net.0.proj": ("txt_mlp.0", 0, 1),
    "ff_context.net.2": ("txt_mlp.2", 0, 1),
}
# Single blocks fuse q, k, v and the MLP input; the MLP slot is 4x wider than the others.
_SINGLE = {
    "attn.to_q": ("linear1", 0, 4),
    "attn.to_k": ("linear1", 1, 4),
    "attn.to_v": ("linear1", 2, 4),
    "proj_mlp": ("linear1", 3, 4),
    "proj_out": ("linear2", 0, 1),
}
_KEY = re.compile(
    r"^transformer\.(?P<block>transformer_blocks|single_transformer_blocks)\.(?P<i>\d+)\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$"
)


def read_lora(path: Path) -> tuple[dict[str, torch.Tensor], float | None]:
    """The tensors of a diffusers LoRA file and its alpha/rank scale, if the file records one."""
    try:
        with safe_open(str(path), "pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
            metadata = handle.metadata() or {}
    except (OSError, ValueError, RuntimeError) as exc:
        raise LcError(f"{path} is not a readable .safetensors LoRA ({exc})") from None
    # diffusers writes the peft config flattened, as {"transformer.r": 4, "transformer.lora_alpha": 8}
    config = json.loads(metadata.get("lora_adapter_metadata") or "{}")
    alpha, rank = config.get("transformer.lora_alpha"), config.get("transformer.r")
    return tensors, (alpha / rank if alpha and rank else None)


def to_comfyui(tensors: dict[str, torch.Tensor], scale: float | None) -> dict[str, torch.Tensor]:
    """ComfyUI `diffusion_model.*.lora_down/lora_up/alpha` tensors for a diffusers FLUX LoRA."""
    scale = 1.0 if scale is None else scale
    groups: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
    slots: dict[str, int] = {}
    unknown = []
    pairs: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        match = _KEY.match(key)
        if not match:
            unknown.append(key)
            continue
        pairs.setdefault((match["block"], match["i"], match["module"]), {})[match["ab"]] = value
    for (block, index, module), pair in pairs.items():
        table = _DOUBLE if block == "transformer_blocks" else _SINGLE
        if module not in table or set(pair) != {"A", "B"}:
            unknown.append(f"transformer.{block}.{index}.{module}")
            continue
        target, slot, count = table[module]
        prefix = "double_blocks" if block == "transformer_blocks" else "single_blocks"
        name = f"diffusion_model.{prefix}.{index}.{target}"
        groups.setdefault(name, {})[slot] = (pair["A"], pair["B"])
        slots[name] = count
    if unknown:
        raise LcError(
            f"{len(unknown)} LoRA keys have no ComfyUI equivalent here (e.g. {unknown[0]})",
            hint="export supports the double- and single-block attention and MLP projections",
        )
    out: dict[str, torch.Tensor] = {}
    for name, members in groups.items():
        down, up = _fuse(members, slots[name])
        out[f"{name}.lora_down.weight"] = down
        out[f"{name}.lora_up.weight"] = up
        out[f"{name}.alpha"] = torch.tensor(scale * down.shape[0])  # ComfyUI scales by alpha/rank
    return out


def _fuse(
    members: dict[int, tuple[torch.Tensor, torch.Tensor]], count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the down matrices and place each up matrix in its own rows and columns."""
    widths = {slot: b.shape[0] for slot, (_, b) in members.items()}
    # A missing slot still takes its rows (zeros): q, k and v are one unit wide, the single
    # blocks' MLP input (slot 3 of 4) four units.
    factor = [4 if count == 4 and slot == 3 else 1 for slot in range(count)]
    unit = next(width // factor[slot] for slot, width in widths.items())
    slot_width = [widths.get(slot, unit * factor[slot]) for slot in range(count)]
    ranks = [members[slot][0].shape[0] for slot in sorted(members)]
    down = torch.cat([members[slot][0] for slot in sorted(members)], dim=0)  # (sum r, in)
    up = torch.zeros(sum(slot_width), sum(ranks), dtype=down.dtype)  # (sum out, sum r)
    row_starts = [sum(slot_width[:slot]) for slot in range(count)]
    column = 0
    for slot, rank in zip(sorted(members), ranks, strict=True):
        b = members[slot][1]
        up[row_starts[slot] : row_starts[slot] + b.shape[0], column : column + rank] = b
        column += rank
    return down.contiguous(), up.contiguous()


def export_comfyui(source: str | Path, target: str | Path) -> Path:
    """Write `source` (diffusers format) as a ComfyUI LoRA at `target`; return it."""
    from ..files import TEMP_SUFFIX
    from ..lora_metadata import PREFIX, read_safetensors_header

    tensors, scale = read_lora(Path(source))
    converted = to_comfyui(tensors, scale)
    # How it was trained (lc.fill, lc.shift, ...) travels with it: `lc render --lora` and
    # `lc lora info` read the exported file as they read the original.
    trained = {k: v for k, v in read_safetensors_header(source)[0].items() if k.startswith(PREFIX)}
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(target.name + TEMP_SUFFIX)
    metadata = {"format": "pt", "exported_by": "lc", **trained}
    save_file(converted, str(temp), metadata=metadata)
    temp.replace(target)
    return target
