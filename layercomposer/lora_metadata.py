"""What a LoRA file says about how it was trained: `lc.*` keys in its safetensors metadata.

`lc train` writes them (the fill, the timestep shift, rank and alpha, the base model, the lc
version, ...) beside the `lora_adapter_metadata` that diffusers writes; `lc render --lora` reads
the fill back, and `lc lora info` shows all of it. Values are strings, as safetensors requires:
plain text for text, numbers as their decimal form, lists as JSON.

The header is read here, not with the safetensors package, so that `lc lora info` works
without torch and reads at most `MAX_HEADER_BYTES` however large a size the file claims.

A ComfyUI / kohya file fuses q, k, v (and in single blocks the MLP input) into one layer whose
rank is the sum of the projections' (`lora_fused`): 12 for a rank-4 LoRA exported by lc. The
rank shown is per projection: `lc.rank` where the file records it, otherwise read from the
blocks of one fused up matrix of each kind (the only tensor data `lc lora info` reads).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError, LcError
from .limits import loads_json_bounded, open_regular_file
from .lora import detect_format, resolve_lora_file
from .lora_fused import parse_key, slot_rows, split_columns

MAX_HEADER_BYTES = 16 * 1024 * 1024  # a rank-512 FLUX LoRA's header is ~60 KB; kohya's ~1 MB
_READ_CHUNK = 16 * 1024 * 1024  # bytes of a fused up matrix read at a time
# float dtypes by size; a value is zero when every bit but the sign is
_FLOAT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
# The dtypes the safetensors loader (0.8) reads, by bits an element; any other is refused.
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F4": 4,
    "F6_E2M3": 6, "F6_E3M2": 6, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32,
    "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}  # fmt: skip
PREFIX = "lc."
FILL_KEY = PREFIX + "fill"
DIFFUSERS_ADAPTER_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
METADATA_VERSION = 1

# key (without the prefix) -> (type, what it means). The order is the order `lc lora info` shows.
LC_KEYS: dict[str, tuple[type, str]] = {
    "metadata_version": (int, "version of these lc.* keys"),
    "lc_version": (str, "lc that trained it"),
    "base_model": (str, "base model (hub id, folder or builtin:tiny)"),
    "base_revision": (str, "base model revision (hub commit)"),
    "base_config_sha256": (str, "sha256 of the base model's model_index.json"),
    "fill": (str, "colour of transparent layer pixels (render with the same)"),
    "shift": (str, "timestep shift rule: auto (FLUX's, by image tokens) or a number"),
    "shift_value": (float, "timestep shift used"),
    "timestep_sampling": (str, "noise-level density before the shift"),
    "logit_mean": (float, "logit-normal mean"),
    "logit_std": (float, "logit-normal std"),
    "resolution": (int, "training resolution (px, square)"),
    "image_tokens": (int, "noisy image tokens per example"),
    "guidance": (float, "guidance embedding value in training"),
    "conditioning": (str, "what it was trained to read: layered (lc's canvas, locking ids)"),
    "sample_guidance": (float, "guidance its validation renders used (render with it)"),
    "config_sha256": (str, "fingerprint of the run's settings (what --resume checks)"),
    "rank": (int, "LoRA rank"),
    "alpha": (float, "LoRA alpha"),
    "dropout": (float, "LoRA dropout"),
    "target_modules": (list, "modules with a LoRA"),
    "step": (int, "optimizer steps done"),
    "steps": (int, "optimizer steps configured"),
    "batch_size": (int, "examples per step, per process"),
    "processes": (int, "training processes"),
    "learning_rate": (float, "learning rate"),
    "optimizer": (str, "optimizer (adamw or adamw8bit)"),
    "base_quantization": (str, "frozen base weights in training (none or int8)"),
    "seed": (int, "training seed"),
}


@dataclass(frozen=True)
class FusedRank:
    """How the rank of one kind of fused layer reads: stored_rank = projections x rank."""

    layer: str  # "qkv" (double blocks' img_attn / txt_attn) or "linear1" (single blocks)
    layers: int  # how many the file has
    stored_rank: int  # rows of their lora_down, the largest
    projections: int  # with their own block of rows and columns; 1: one LoRA across all
    rank: int  # per projection
    source: str  # "lc.rank"; "tensors": the blocks of an up matrix; "shapes": not readable


@dataclass(frozen=True)
class LoraFileInfo:
    """A LoRA file as its header describes it, for `lc lora info`."""

    path: str
    size_bytes: int
    tensors: int
    format: str  # as `lora.detect_format` names it
    rank: int | None  # the largest rank per projection (a fused layer's divided, `fused`)
    lc: dict[str, Any] | None  # the decoded lc.* keys; None: the file has none
    adapter: dict[str, Any] | None  # diffusers' lora_adapter_metadata, parsed
    other_metadata: dict[str, str] = field(default_factory=dict)
    fused: list[FusedRank] = field(default_factory=list)  # ComfyUI / kohya fused layers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def encode_lc_metadata(values: dict[str, Any]) -> dict[str, str]:
    """`lc.*` string metadata for `values` (keys of `LC_KEYS`; None values are left out)."""
    unknown = sorted(set(values) - set(LC_KEYS))
    if unknown:
        raise ValueError(f"not lc LoRA metadata keys: {unknown}")
    out = {}
    for key, value in values.items():
        if value is None:
            continue
        kind = LC_KEYS[key][0]
        out[PREFIX + key] = json.dumps(list(value)) if kind is list else str(kind(value))
    return out


def decode_lc_metadata(metadata: dict[str, str]) -> dict[str, Any] | None:
    """The `lc.*` keys of a file's metadata as Python values (unknown ones kept as text)."""
    found = {k.removeprefix(PREFIX): v for k, v in metadata.items() if k.startswith(PREFIX)}
    if not found:
        return None
    position = {key: i for i, key in enumerate(LC_KEYS)}  # keys of other lc versions: last
    found = dict(sorted(found.items(), key=lambda item: (position.get(item[0], 999), item[0])))
    decoded: dict[str, Any] = {}
    for key, text in found.items():
        kind = LC_KEYS.get(key, (str,))[0]
        try:
            decoded[key] = loads_json_bounded(text) if kind is list else kind(text)
        except (ValueError, TypeError):
            decoded[key] = text  # written by another lc version: show it as it is
    return decoded


def read_safetensors_header(
    path: str | Path, max_bytes: int = MAX_HEADER_BYTES
) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """(metadata, tensors) of a .safetensors file: its `__metadata__` and each tensor's entry.

    Reads 8 bytes and then the header only, refusing one that claims more than `max_bytes`, more
    than the file holds, or that is not the format's JSON. Raises InputError saying which.
    """
    path = Path(path)
    try:
        with open_regular_file(path) as handle:  # a FIFO is refused, not waited on
            size = os.fstat(handle.fileno()).st_size
            length_bytes = handle.read(8)
            if len(length_bytes) < 8:
                raise InputError(f"{path}: {size} bytes, too short to be a .safetensors file")
            length = int.from_bytes(length_bytes, "little")
            if length > max_bytes:
                raise InputError(
                    f"{path}: its header claims {length:,} bytes, more than the {max_bytes:,} "
                    "lc reads: not a .safetensors LoRA, or a damaged one"
                )
            if 8 + length > size:
                raise InputError(
                    f"{path}: its header claims {length:,} bytes but the file has {size:,}: "
                    "truncated, or not a .safetensors file"
                )
            raw = handle.read(length)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder, not a .safetensors file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        header = loads_json_bounded(raw.decode("utf-8"), max_bytes)
    except ValueError as exc:  # not UTF-8, not JSON, or nested too deeply (a format's is 3)
        reason = "nested too deeply" if "nested" in str(exc) else "not JSON"
        raise InputError(f"{path}: the header is {reason}: not a .safetensors file") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: the header is not a JSON object: not a .safetensors file")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InputError(f"{path}: __metadata__ must map strings to strings")
    data_bytes = size - 8 - length
    for name, entry in header.items():
        if not _valid_entry(entry, data_bytes):
            raise InputError(f"{path}: tensor {name!r} has an invalid header entry")
    # As the safetensors loader checks: the tensors, in the order of their offsets, cover the
    # data exactly, with no gap, overlap or bytes left over.
    end = 0
    for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"]):
        if entry["data_offsets"][0] != end:
            raise InputError(f"{path}: tensor {name!r} does not start where the one before ends")
        end = entry["data_offsets"][1]
    if end != data_bytes:
        raise InputError(
            f"{path}: its tensors hold {end:,} bytes but the file has {data_bytes:,} after its "
            "header: truncated or damaged"
        )
    return metadata, header


def describe_lora_file(path: str | Path) -> LoraFileInfo:
    """What `lc lora info` shows: the file's tensors, format, rank and training metadata."""
    try:
        file = resolve_lora_file(path)
    except LcError as exc:  # missing, a folder without one LoRA, a pickle: the input is wrong
        raise InputError(exc.message, hint=exc.hint) from None
    metadata, tensors = read_safetensors_header(file)
    if not tensors:
        raise InputError(f"{file}: the file holds no tensors: not a LoRA")
    lc = decode_lc_metadata(metadata)
    fused = _fused_ranks(file, tensors, lc)
    ranks = [kind.rank for kind in fused] + [
        entry["shape"][0]
        for key, entry in tensors.items()
        if key.endswith((".lora_A.weight", ".lora_down.weight"))
        and entry["shape"]
        and not _fused_part(key)
    ]
    adapter = _adapter_config(metadata.get(DIFFUSERS_ADAPTER_KEY))
    other = {
        k: v for k, v in metadata.items() if not k.startswith(PREFIX) and k != DIFFUSERS_ADAPTER_KEY
    }
    return LoraFileInfo(
        str(file), file.stat().st_size, len(tensors), detect_format(list(tensors)),
        max(ranks) if ranks else None, lc, adapter, other, fused,
    )  # fmt: skip


def _fused_part(key: str) -> tuple[str, str] | None:
    """(layer, part) of a key of a fused FLUX layer (qkv, linear1), else None."""
    parsed = parse_key(key)
    return parsed if parsed and parsed[0].endswith((".qkv", ".linear1")) else None


def _fused_ranks(
    file: Path, tensors: dict[str, dict[str, Any]], lc: dict[str, Any] | None
) -> list[FusedRank]:
    """Per kind of fused layer in the file, its stored rank and the rank per projection."""
    layers: dict[str, dict[str, dict[str, Any]]] = {}  # layer -> part -> header entry
    for key, entry in tensors.items():
        if parsed := _fused_part(key):
            layers.setdefault(parsed[0], {})[parsed[1]] = entry
    kinds: dict[str, list[tuple[str, dict[str, dict[str, Any]]]]] = {}
    for layer, parts in sorted(layers.items(), key=lambda item: _block_order(item[0])):
        if "down" in parts and len(parts["down"]["shape"]) == 2:
            kind = "linear1" if layer.endswith(".linear1") else "qkv"
            kinds.setdefault(kind, []).append((layer, parts))
    trained_rank = (lc or {}).get("rank")
    out = []
    for kind, members in kinds.items():
        stored = max(parts["down"]["shape"][0] for _, parts in members)
        slots = 4 if kind == "linear1" else 3
        if (
            isinstance(trained_rank, int)
            and trained_rank > 0
            and all(
                parts["down"]["shape"][0] % trained_rank == 0
                and parts["down"]["shape"][0] // trained_rank <= slots
                for _, parts in members
            )
        ):  # exported by lc: one block of lc.rank per projection
            out.append(
                FusedRank(
                    kind, len(members), stored, stored // trained_rank, trained_rank, "lc.rank"
                )
            )
            continue
        # The layer with the largest stored rank decides, as for the plain layers.
        layer, parts = next(m for m in members if m[1]["down"]["shape"][0] == stored)
        blocks = _up_blocks(file, layer, parts)
        if blocks is None:
            out.append(FusedRank(kind, len(members), stored, 1, stored, "shapes"))
        else:
            widths = [len(columns) for columns in blocks or [] if len(columns)]
            projections, rank = (len(widths), max(widths)) if widths else (1, stored)
            out.append(FusedRank(kind, len(members), stored, projections, rank, "tensors"))
    return out


def _block_order(layer: str) -> tuple[str, int, str]:
    """Sort key of a ComfyUI layer name: block kind, then block index as a number."""
    block, index, module = layer.split(".", 2)
    return block, int(index), module


def _up_blocks(file: Path, layer: str, parts: dict[str, dict[str, Any]]) -> list[Any] | None:
    """The columns each slot of `layer`'s up matrix uses (`split_columns`), read from `file`.

    [] when the matrix is not split (one LoRA across the slots, or all zero); None when it
    cannot be read as a fused FLUX layer (shapes, dtype).
    """
    import numpy as np

    down, up = parts["down"], parts.get("up")
    if up is None or len(up["shape"]) != 2 or up["dtype"] not in _FLOAT_BYTES:
        return None
    rank, hidden = down["shape"]
    if rank == 0:
        return None
    rows = slot_rows(layer, hidden)
    size = _FLOAT_BYTES[up["dtype"]]
    start, end = up["data_offsets"]
    if up["shape"] != [sum(rows), rank] or end - start != sum(rows) * rank * size:
        return None
    magnitude = np.uint64((1 << (8 * size - 1)) - 1).astype(f"<u{size}")  # all bits but the sign
    with open_regular_file(file) as handle:
        data_start = 8 + int.from_bytes(handle.read(8), "little")
        handle.seek(data_start + start)
        supports = []
        per_read = max(1, _READ_CHUNK // (rank * size))  # rows
        for slot_rows_left in rows:
            used = np.zeros(rank, bool)
            while slot_rows_left:
                count = min(per_read, slot_rows_left)
                raw = np.frombuffer(handle.read(count * rank * size), f"<u{size}")
                used |= ((raw & magnitude) != 0).reshape(count, rank).any(axis=0)
                slot_rows_left -= count
            supports.append(used)
    return split_columns(supports) or []


def trained_for_layers(metadata: dict[str, str]) -> bool:
    """Whether a LoRA's metadata says lc trained it for the layered canvas (`--mode auto`).

    `lc train` writes `lc.conditioning: layered` into every LoRA it saves (`lc lora export`
    keeps it). LoRAs from lc before that key carry `lc.metadata_version` and `lc.lc_version`,
    and lc has only ever trained the layered conditioning. Any other LoRA, a style or character
    LoRA for instance, was never shown per-layer position indices.
    """
    if PREFIX + "conditioning" in metadata:
        return metadata[PREFIX + "conditioning"] == "layered"
    return PREFIX + "metadata_version" in metadata and PREFIX + "lc_version" in metadata


def lora_fill(path: str | Path) -> str | None:
    """The fill a LoRA file was trained with (`lc.fill`), or None if it records none.

    Also None for a file that cannot be read: loading it reports that, with the reason.
    """
    try:
        metadata, _ = read_safetensors_header(resolve_lora_file(path))
    except LcError:
        return None
    return metadata.get(FILL_KEY)


def _adapter_config(text: str | None) -> dict[str, Any] | None:
    """diffusers' flattened peft config (`{"transformer.r": 4, ...}`), or None if absent/invalid."""
    if not text:
        return None
    try:
        value = loads_json_bounded(text)
    except ValueError:  # not JSON, or nested deeper than MAX_JSON_DEPTH
        return None
    return value if isinstance(value, dict) else None


def _valid_entry(entry: Any, data_bytes: int) -> bool:
    """Whether a tensor's header entry is one the safetensors loader reads: a dtype it knows, a
    shape, and offsets inside the data spanning exactly the bytes that shape needs."""
    if not isinstance(entry, dict):
        return False
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    bits = DTYPE_BITS.get(entry.get("dtype"))  # type: ignore[arg-type]
    if not (
        bits is not None
        and isinstance(shape, list)
        and all(type(n) is int and n >= 0 for n in shape)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(n) is int for n in offsets)
        and 0 <= offsets[0] <= offsets[1] <= data_bytes
    ):
        return False
    stored_bits = math.prod(shape) * bits  # a Python int: a 2^40 x 2^40 shape cannot overflow
    return stored_bits % 8 == 0 and stored_bits // 8 == offsets[1] - offsets[0]
