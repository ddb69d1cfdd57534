"""Export a diffusers-format FLUX LoRA to the ComfyUI key format (`diffusion_model.*`).

ComfyUI follows the original FLUX code, where q, k and v (and in single blocks also the MLP
input) are one fused linear layer (`lora_fused`). A LoRA on the separate diffusers projections
becomes one LoRA on the fused layer: the down matrices stacked, the up matrices block-diagonal,
so that up @ down reproduces each projection's own delta and leaves the others at zero. Its rank
is the sum of theirs, so `alpha` is the LoRA's scale times that sum: ComfyUI (`weight_adapter/
lora.py`) and diffusers' kohya converter both scale by alpha / lora_down rows.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import LcError
from ..lora_fused import FUSED, comfyui_layer, slot_rows

_KEY = re.compile(
    r"^transformer\.(?P<block>transformer_blocks|single_transformer_blocks)\.(?P<i>\d+)\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$"
)
# peft options a single alpha / rank scale cannot express
_UNSUPPORTED = ("use_rslora", "rank_pattern", "alpha_pattern", "use_dora")


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
    unsupported = [key for key in _UNSUPPORTED if config.get(f"transformer.{key}")]
    if unsupported:
        raise LcError(
            f"{path}: its adapter config sets {', '.join(unsupported)}; the ComfyUI format has "
            "one alpha per layer, scaled by alpha / rank",
            hint="export supports LoRAs with one rank and alpha, as `lc train` writes them",
        )
    alpha, rank = config.get("transformer.lora_alpha"), config.get("transformer.r")
    return tensors, (alpha / rank if alpha and rank else None)


def to_comfyui(tensors: dict[str, torch.Tensor], scale: float | None) -> dict[str, torch.Tensor]:
    """ComfyUI `diffusion_model.*.lora_down/lora_up/alpha` tensors for a diffusers FLUX LoRA."""
    scale = 1.0 if scale is None else scale
    pairs: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in tensors.items():
        match = _KEY.match(key)
        if not match:
            unknown.append(key)
            continue
        pairs.setdefault((match["block"], match["i"], match["module"]), {})[match["ab"]] = value
    groups: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
    for (block, index, module), pair in pairs.items():
        found = comfyui_layer(block, index, module)
        if found is None or set(pair) != {"A", "B"}:
            unknown.append(f"transformer.{block}.{index}.{module}")
            continue
        layer, slot = found
        groups.setdefault(layer, {})[slot] = (pair["A"], pair["B"])
    if unknown:
        raise LcError(
            f"{len(unknown)} LoRA keys have no ComfyUI equivalent here (e.g. {unknown[0]})",
            hint="export supports the double- and single-block attention and MLP projections",
        )
    out: dict[str, torch.Tensor] = {}
    for layer, members in groups.items():
        if layer.split(".", 2)[2] in FUSED:
            down, up = _fuse(layer, members)
        else:
            down, up = members[0]
        name = f"diffusion_model.{layer}"
        out[f"{name}.lora_down.weight"] = down.contiguous()
        out[f"{name}.lora_up.weight"] = up.contiguous()
        out[f"{name}.alpha"] = torch.tensor(scale * down.shape[0])  # scaled by alpha / rank
    return out


def _fuse(
    layer: str, members: dict[int, tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the down matrices and place each up matrix in its own rows and columns."""
    hidden = next(iter(members.values()))[0].shape[1]  # every slot reads the hidden state
    rows = slot_rows(layer, hidden)  # a missing slot still takes its rows, as zeros
    for slot, (_, b) in members.items():
        if b.shape[0] != rows[slot]:
            raise LcError(
                f"{layer}: slot {slot} has {b.shape[0]} outputs, a FLUX of hidden size {hidden} "
                f"has {rows[slot]}"
            )
    slots = sorted(members)
    down = torch.cat([members[slot][0] for slot in slots], dim=0)  # (sum r, hidden)
    up = torch.zeros(sum(rows), down.shape[0], dtype=down.dtype)  # (sum out, sum r)
    column = 0
    for slot in slots:
        b = members[slot][1]  # (out, r)
        start = sum(rows[:slot])
        up[start : start + b.shape[0], column : column + b.shape[1]] = b
        column += b.shape[1]
    return down, up


def export_comfyui(source: str | Path, target: str | Path) -> Path:
    """Write `source` (diffusers format) as a ComfyUI LoRA at `target`; return it."""
    from ..files import atomic_path
    from ..lora_metadata import PREFIX, read_safetensors_header

    tensors, scale = read_lora(Path(source))
    converted = to_comfyui(tensors, scale)
    # How it was trained (lc.fill, lc.shift, lc.rank, ...) travels with it: `lc render --lora`
    # and `lc lora info` read the exported file as they read the original.
    trained = {k: v for k, v in read_safetensors_header(source)[0].items() if k.startswith(PREFIX)}
    target = Path(target)
    metadata = {"format": "pt", "exported_by": "lc", **trained}
    with atomic_path(target) as temp:
        save_file(converted, str(temp), metadata=metadata)
    return target
