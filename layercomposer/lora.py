"""Load a FLUX.1 Kontext LoRA into a pipeline, refusing files that would quietly misbehave.

diffusers (0.42) converts kohya / ComfyUI / xlabs / BFL / fal LoRAs to its own module names, and
we use that. But it loads leniently: keys for modules that do not exist are dropped with a
warning, a file whose keys lack the `transformer.` prefix loads nothing at all, LoRA matrices
narrower than the layer are zero-padded, and a LoRA for a 128-channel Flux Control model widens
the transformer's `x_embedder`. Each gives a plausible but wrong image, so `load_lora` checks
every converted key against the real modules before anything is applied.

One conversion lc does itself: ComfyUI / kohya files whose keys are all attention and MLP
layers of the FLUX blocks (what `lc lora export` writes). diffusers' kohya converter splits the
single blocks' fused `linear1` at FLUX.1's hard-coded widths (3072 x 3 + 12288), so such a file
cannot load into any other width (builtin:tiny), and splits a block-diagonal fused LoRA of
unequal slots (q, k, v without the MLP) into rank-12 copies. `_split_fused_layers` splits at the
model's real widths and gives each projection back its own rows and rank (`lora_fused`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from layercomposer.errors import LcError, ModelError, UsageError
from layercomposer.files import sha256_file
from layercomposer.limits import check_regular
from layercomposer.lora_fused import diffusers_modules, parse_key, split_columns

ADAPTER_NAME = "layercomposer"
DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what save_lora_weights writes

_FLUX_HINT = (
    "Was it trained for FLUX.1 (Kontext) [dev]? LoRAs for SD/SDXL, SD3, FLUX.2 or Flux Control "
    "(128 input channels) cannot be applied; lc reads .safetensors LoRAs in diffusers, kohya or "
    "ComfyUI format."
)
# Never the Hub, never a pickle fallback (diffusers tries torch.load if safetensors fails).
_LOCAL_SAFETENSORS = {"use_safetensors": True, "local_files_only": True}
_SCALES_ATTR = "_lc_lora_scales"  # {adapter name: scale}, kept on the pipeline by set_lora_scale
_LOADED_ATTR = "_lc_loras"  # {adapter name: LoraInfo}, kept on the pipeline by load_lora
_LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".lora_B.bias")
# Key prefixes diffusers' kohya/ComfyUI converter reads; it drops any other key without a word.
_KOHYA_PREFIXES = (
    "lora_unet_",
    "lora_te_",
    "lora_te1_",
    "lora_transformer_",
    "diffusion_model.",
    "text_encoders.",
    "transformer.",
)


@dataclass(frozen=True)
class LoraInfo:
    """What was loaded, for run manifests."""

    path: str  # the .safetensors file itself, even if a folder was given
    sha256: str
    format: str  # "diffusers", "kohya", "comfyui", "xlabs", "bfl-control", "fal-kontext", "unknown"
    tensors: int  # tensors in the file, as stored
    rank: int  # largest lora_A rank after conversion to diffusers modules
    scale: float
    target_modules: int  # layers the LoRA changes (transformer and CLIP text encoder)
    adapter_name: str
    # Its lc.* metadata says lc trained it for the layered canvas (what `--mode auto` reads).
    layered: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Returns the fields as a JSON-ready dict."""
        return asdict(self)


def load_lora(
    pipe: Any, path: str | Path, scale: float = 1.0, adapter_name: str = ADAPTER_NAME
) -> LoraInfo:
    """Returns what was loaded after applying the LoRA at `path` to `pipe` with weight `scale`.

    `pipe` is a FluxKontextPipeline (or subclass). An adapter already loaded under `adapter_name`
    is replaced. Raises ModelError, leaving `pipe` unchanged, if the file is missing, unreadable,
    empty, or has any key that does not fit the pipeline's transformer / CLIP text encoder.
    """
    _require_peft()
    if not math.isfinite(scale):
        raise UsageError(f"LoRA scale must be a finite number, not {scale}")
    file = resolve_lora_file(path)
    keys = _safetensors_keys(file)
    fmt = detect_format(keys)
    if fmt in ("comfyui", "kohya") and all(parse_key(key) for key in keys):
        source, problems = _split_fused_layers(pipe, file)
        if problems:
            raise ModelError(
                f"{file}: {len(problems)} of {len(keys)} LoRA keys do not match the FLUX "
                f"transformer (e.g. {'; '.join(problems[:3])})",
                hint=_FLUX_HINT,
            )
    else:
        source = _diffusers_source(file, keys)

    try:
        # dict(...) because diffusers' kohya converter pops the keys it consumes.
        converted = pipe.lora_state_dict(_copy(source), **_LOCAL_SAFETENSORS)
    except Exception as err:  # any failure here means diffusers cannot map the file to FLUX
        raise _conversion_error(file, fmt, keys, err) from err
    if not converted:
        raise ModelError(f"{file}: no LoRA weights found ({len(keys)} tensors)", hint=_FLUX_HINT)

    dropped = _dropped_by_converter(keys, fmt)
    checked = check_lora_keys(pipe, converted)
    problems = dropped + checked.problems
    if problems:
        examples = "; ".join(problems[:3])
        total = len(converted) + len(dropped)
        raise ModelError(
            f"{file}: {len(problems)} of {total} LoRA keys do not match the FLUX transformer "
            f"(e.g. {examples})",
            hint=_FLUX_HINT,
        )

    if adapter_name in _loaded_adapters(pipe):
        pipe.delete_adapters(adapter_name)
    try:
        # Every key was checked above; what diffusers still says (e.g. "no LoRA keys for
        # CLIPTextModel" for a transformer-only LoRA) would only confuse.
        with _quiet_diffusers():
            pipe.load_lora_weights(_copy(source), adapter_name=adapter_name, **_LOCAL_SAFETENSORS)
    except Exception as err:
        # load_lora_weights applies the transformer part before the text encoder's; undo it.
        if adapter_name in _loaded_adapters(pipe):
            pipe.delete_adapters(adapter_name)
        raise ModelError(
            f"{file}: diffusers could not load the LoRA: {err}", hint=_FLUX_HINT
        ) from err
    set_lora_scale(pipe, scale, adapter_name)

    info = LoraInfo(
        path=str(file),
        sha256=sha256_file(file),
        format=fmt,
        tensors=len(keys),
        rank=checked.rank,
        scale=float(scale),
        target_modules=checked.modules,
        adapter_name=adapter_name,
        layered=_trained_for_layers(file),
    )
    loaded = {k: v for k, v in getattr(pipe, _LOADED_ATTR, {}).items() if k != adapter_name}
    setattr(pipe, _LOADED_ATTR, {**loaded, adapter_name: info})
    return info


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA to load: a .safetensors file (or a folder holding one) and its strength."""

    path: str
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str, default_scale: float = 1.0) -> LoraSpec:
        """`FILE` or `FILE:SCALE` (what `--lora` takes); a `:` not followed by a number is part
        of the path."""
        path, colon, scale = text.rpartition(":")
        if colon and path:
            try:
                value = float(scale)
            except ValueError:
                pass
            else:
                if not math.isfinite(value):
                    raise UsageError(f"--lora {text}: the scale must be a finite number")
                return cls(path, value)
        if not math.isfinite(default_scale):
            raise UsageError(f"--lora-scale {default_scale}: the scale must be a finite number")
        return cls(text, float(default_scale))

    def to_text(self) -> str:
        """The `--lora` value that gives this spec back."""
        return f"{self.path}:{self.scale:g}"


def adapter_names(count: int) -> list[str]:
    """The adapter names `load_loras` gives `count` LoRAs: layercomposer, layercomposer_2, ..."""
    return [ADAPTER_NAME if i == 0 else f"{ADAPTER_NAME}_{i + 1}" for i in range(count)]


def load_loras(pipe: Any, loras: Sequence[LoraSpec | str]) -> list[LoraInfo]:
    """Returns what was loaded after stacking `loras` (each at its scale) onto `pipe`, in order.

    Every file is checked, and a `ModelError` lists every one that cannot be loaded, each with its
    own key problems; `pipe` is then left with none of them.
    """
    specs = [spec if isinstance(spec, LoraSpec) else LoraSpec(str(spec)) for spec in loras]
    loaded: list[LoraInfo] = []
    failures: list[ModelError] = []
    for spec, name in zip(specs, adapter_names(len(specs)), strict=True):
        try:
            with warnings.catch_warnings():  # stacking is what was asked for
                warnings.filterwarnings("ignore", "Already found a `peft_config`", UserWarning)
                loaded.append(load_lora(pipe, spec.path, spec.scale, adapter_name=name))
        except ModelError as err:
            failures.append(err)
    if failures:
        for info in loaded:
            unload_lora(pipe, info.adapter_name)
        if len(specs) == 1:
            raise failures[0]
        raise ModelError(
            f"{len(failures)} of {len(specs)} LoRAs cannot be loaded: "
            + "; ".join(err.message for err in failures),
            hint=failures[0].hint,
        )
    return loaded


def unload_lora(pipe: Any, adapter_name: str = ADAPTER_NAME) -> None:
    """Returns nothing; removes an adapter `load_lora` loaded (the others keep their scales)."""
    if adapter_name in _loaded_adapters(pipe):
        pipe.delete_adapters(adapter_name)
    infos = {k: v for k, v in getattr(pipe, _LOADED_ATTR, {}).items() if k != adapter_name}
    setattr(pipe, _LOADED_ATTR, infos)
    scales = {k: v for k, v in getattr(pipe, _SCALES_ATTR, {}).items() if k != adapter_name}
    setattr(pipe, _SCALES_ATTR, scales)
    if scales:
        pipe.set_adapters(list(scales), adapter_weights=list(scales.values()))


def loaded_loras(pipe: Any) -> list[LoraInfo]:
    """Returns the LoRAs `load_lora` loaded into `pipe` that are still loaded, in load order."""
    loaded = _loaded_adapters(pipe)
    return [info for name, info in getattr(pipe, _LOADED_ATTR, {}).items() if name in loaded]


def other_adapters(pipe: Any) -> list[str]:
    """Returns the adapters loaded into `pipe` by other means (diffusers' `load_lora_weights`)."""
    return sorted(_loaded_adapters(pipe) - set(getattr(pipe, _LOADED_ATTR, {})))


def _trained_for_layers(file: Path) -> bool:
    """Whether `file`'s lc.* metadata says lc trained it for the layered canvas."""
    from layercomposer.lora_metadata import read_safetensors_header, trained_for_layers

    try:
        metadata, _ = read_safetensors_header(file)
    except LcError:  # safetensors itself read it: a header lc refuses is no lc LoRA
        return False
    return trained_for_layers(metadata)


def set_lora_scale(pipe: Any, scale: float, adapter_name: str = ADAPTER_NAME) -> None:
    """Returns nothing; sets the weight of an adapter loaded by `load_lora` (0 turns it off)."""
    # set_adapters activates exactly the adapters it is given, so remember every adapter's scale
    # to keep the others (loaded by load_lora under other names) active at theirs.
    loaded = _loaded_adapters(pipe)
    if adapter_name not in loaded:
        raise ValueError(f"no LoRA adapter named {adapter_name!r} is loaded")
    scales = dict(getattr(pipe, _SCALES_ATTR, {}))
    scales[adapter_name] = float(scale)
    scales = {name: weight for name, weight in scales.items() if name in loaded}
    setattr(pipe, _SCALES_ATTR, scales)
    # A weight of 0 makes peft add exactly 0 * B(A x), so the output equals the LoRA-free one.
    pipe.set_adapters(list(scales), adapter_weights=list(scales.values()))


def has_layercomposer_lora(pipe: Any) -> bool:
    """Returns whether a LoRA lc trained for the layered canvas is loaded (at any scale).

    What its file's lc.* metadata says (`lora_metadata.trained_for_layers`), not the adapter's
    name: `load_lora` names every LoRA it loads after the method.
    """
    return any(info.layered for info in loaded_loras(pipe))


def resolve_lora_file(path: str | Path) -> Path:
    """Returns the .safetensors file meant by `path`: the file, or the one LoRA in a folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelError(f"{path}: no such LoRA file or folder")
    if path.is_dir():
        if (path / DIFFUSERS_WEIGHT_NAME).is_file():
            return path / DIFFUSERS_WEIGHT_NAME
        found = sorted(p for p in path.glob("*.safetensors") if p.is_file())
        if len(found) != 1:
            raise ModelError(
                f"{path}: expected one .safetensors file in the folder, found {len(found)}",
                hint=f"Name the file itself, or call it {DIFFUSERS_WEIGHT_NAME}.",
            )
        return found[0]
    check_regular(path, path.stat().st_mode)  # a FIFO would block the loader for ever
    if path.suffix.lower() != ".safetensors":
        # .bin / .pt / .ckpt are pickles, which can run code when loaded.
        raise ModelError(
            f"{path}: only .safetensors LoRA files are supported",
            hint="Convert it with safetensors.torch.save_file, from a trusted environment.",
        )
    return path


def detect_format(keys: list[str]) -> str:
    """Returns the name of the LoRA layout of `keys`, tested in the order diffusers tests them."""
    if any(".lora_down.weight" in k for k in keys) or _is_comfyui_peft(keys):
        return "comfyui" if any(k.startswith("diffusion_model.") for k in keys) else "kohya"
    if any("processor" in k for k in keys):
        return "xlabs"
    if any("query_norm.scale" in k for k in keys):
        return "bfl-control"
    if any("base_model" in k for k in keys):
        return "fal-kontext"
    if any(k.startswith(("transformer.", "text_encoder.")) for k in keys):
        return "diffusers"
    return "unknown"


@dataclass(frozen=True)
class KeyCheck:
    """The result of `check_lora_keys`."""

    problems: list[str]  # "key: why", one per key that does not fit
    rank: int
    modules: int


def check_lora_keys(pipe: Any, state_dict: dict[str, Any]) -> KeyCheck:
    """Returns which keys of a diffusers-named LoRA state dict do not fit `pipe`'s modules."""
    problems: list[str] = []
    parts: dict[str, dict[str, Any]] = {"transformer": {}, "text_encoder": {}}
    for key, value in state_dict.items():
        component, _, rest = key.partition(".")
        if component in parts and rest:
            parts[component][rest] = value
        else:
            problems.append(f"{key}: not for the transformer or the CLIP text encoder")

    rank, modules = 0, 0
    for component, weights in parts.items():
        if not weights:
            continue
        model = getattr(pipe, component, None)
        if model is None:
            problems += [f"{component}.{k}: the pipeline has no {component}" for k in weights]
            continue
        try:
            weights = _peft_names(component, model, weights)
        except Exception as err:  # diffusers' own renaming fails on layouts it cannot load
            problems += [f"{component}.{k}: {err}" for k in weights]
            continue
        found = _check_module_shapes(dict(model.named_modules()), weights)
        problems += [f"{component}.{p}" for p in found.problems]
        rank, modules = max(rank, found.rank), modules + found.modules
    return KeyCheck(problems, rank, modules)


def _check_module_shapes(named: dict[str, Any], weights: dict[str, Any]) -> KeyCheck:
    """Returns the keys of peft-named `weights` whose module is missing or has other shapes."""
    problems: list[str] = []
    ranks: dict[str, int] = {}  # module -> rank of its valid lora_A
    b_ranks: dict[str, tuple[str, int]] = {}  # module -> (key, rank) of its valid lora_B
    with_a = {k.removesuffix(".lora_A.weight") for k in weights if k.endswith(".lora_A.weight")}
    with_b = {k.removesuffix(".lora_B.weight") for k in weights if k.endswith(".lora_B.weight")}
    for key, tensor in weights.items():
        suffix = next((s for s in _LORA_SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            problems.append(f"{key}: not a LoRA weight")
            continue
        name = key[: -len(suffix)]
        module = named.get(name)
        in_features = getattr(module, "in_features", None)
        out_features = getattr(module, "out_features", None)
        shape = tuple(tensor.shape)
        if module is None:
            problems.append(f"{key}: no module {name}")
        elif in_features is None or out_features is None:
            problems.append(f"{key}: {name} is not a linear layer")
        elif suffix == ".lora_A.weight" and (len(shape) != 2 or shape[1] != in_features):
            problems.append(f"{key}: shape {list(shape)}, layer has {in_features} in-features")
        elif suffix != ".lora_A.weight" and (len(shape) not in (1, 2) or shape[0] != out_features):
            problems.append(f"{key}: shape {list(shape)}, layer has {out_features} out-features")
        elif suffix == ".lora_A.weight":
            ranks[name] = shape[0]
        elif suffix == ".lora_B.weight":
            b_ranks[name] = (key, shape[1] if len(shape) == 2 else -1)

    # An A without its B (or the reverse, or another rank) leaves peft's init in the layer.
    for name, (key, b_rank) in b_ranks.items():
        if name not in with_a:
            problems.append(f"{key}: no matching lora_A.weight")
        elif name in ranks and ranks[name] != b_rank:
            problems.append(f"{key}: rank {b_rank}, its lora_A has rank {ranks[name]}")
            del ranks[name]
    for name in [n for n in ranks if n not in b_ranks]:
        if name not in with_b:  # a B of the wrong shape is reported already
            problems.append(f"{name}.lora_A.weight: no matching lora_B.weight")
        del ranks[name]
    return KeyCheck(problems, max(ranks.values(), default=0), len(ranks))


def _peft_names(component: str, model: Any, weights: dict[str, Any]) -> dict[str, Any]:
    """Returns `weights` renamed the way diffusers renames them just before peft loads them."""
    from diffusers.utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    if component == "transformer":  # as FluxTransformer2DModel.load_lora_adapter does
        first = next(iter(weights))
        return weights if "lora_A" in first else convert_unet_state_dict_to_peft(weights)
    # as diffusers.loaders.lora_base._load_lora_into_text_encoder does
    weights = convert_state_dict_to_peft(convert_state_dict_to_diffusers(weights))
    if not hasattr(model, "text_model"):  # recent transformers flatten CLIPTextModel
        weights = {k.removeprefix("text_model."): v for k, v in weights.items()}
    return weights


def _dropped_by_converter(keys: list[str], fmt: str) -> list[str]:
    """Returns "key: why" for file keys that diffusers' conversion would drop silently."""
    dropped = [f"{k}: DoRA scale, which diffusers ignores" for k in keys if "dora_scale" in k]
    if fmt in ("kohya", "comfyui"):
        dropped += [
            f"{k}: unknown kohya prefix"
            for k in keys
            if "dora_scale" not in k and not k.startswith(_KOHYA_PREFIXES)
        ]
    return dropped


def _conversion_error(file: Path, fmt: str, keys: list[str], err: Exception) -> ModelError:
    """Returns the ModelError for a file that diffusers' converter rejected with `err`."""
    message = str(err)
    marker = "Incompatible keys detected:"  # the kohya converter's list of keys it cannot place
    if message.startswith(marker):
        bad = [k.strip() for k in message[len(marker) :].split(",") if k.strip()]
        return ModelError(
            f"{file}: {len(bad)} of {len(keys)} LoRA keys do not match the FLUX transformer "
            f"(e.g. {', '.join(bad[:3])})",
            hint=_FLUX_HINT,
        )
    # The kohya converter hard-codes FLUX.1 sizes (19 + 38 blocks, 3072 wide) with bare asserts.
    reason = message.splitlines()[0] if message.strip() else type(err).__name__
    return ModelError(
        f"{file}: diffusers could not convert this {fmt}-format LoRA to FLUX modules ({reason})",
        hint=_FLUX_HINT,
    )


def _safetensors_keys(file: Path) -> list[str]:
    """Returns the tensor names in `file`, reading only its header."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            keys = list(handle.keys())
    except Exception as err:  # SafetensorError, OSError, or a header that is not JSON
        raise ModelError(
            f"{file}: not a readable .safetensors file ({err})",
            hint="Is the download complete? A .safetensors LoRA starts with a JSON header.",
        ) from err
    if not keys:
        raise ModelError(f"{file}: the file holds no tensors", hint=_FLUX_HINT)
    return keys


def _is_comfyui_peft(keys: list[str]) -> bool:
    """Returns whether `keys` are ComfyUI names with peft's lora_A/lora_B instead of down/up."""
    return any(k.startswith("diffusion_model.") and ".lora_A." in k for k in keys)


def _diffusers_source(file: Path, keys: list[str]) -> str | dict[str, Any]:
    """Returns what to hand diffusers for `file`: its path, or its tensors renamed."""
    if not _is_comfyui_peft(keys):
        # A path, not tensors, so diffusers also reads the adapter config (alpha) in the header.
        return str(file)
    from safetensors.torch import load_file

    # diffusers only recognises kohya/ComfyUI files by "lora_down"; the math is the same.
    renamed = {".lora_A.": ".lora_down.", ".lora_B.": ".lora_up."}
    tensors = load_file(str(file))
    out = {}
    for key, value in tensors.items():
        for old, new in renamed.items():
            key = key.replace(old, new)
        out[key] = value
    return out


def _split_fused_layers(pipe: Any, file: Path) -> tuple[dict[str, Any], list[str]]:
    """diffusers-named tensors (with alphas) for a ComfyUI / kohya file of FLUX block layers.

    Also returns "key: why" for each file key that does not fit `pipe`'s transformer. Every key
    of `file` must be known to `lora_fused.parse_key`.
    """
    import torch
    from safetensors.torch import load_file

    layers: dict[str, dict[str, tuple[str, Any]]] = {}  # layer -> part -> (file key, tensor)
    problems: list[str] = []
    for key, tensor in load_file(str(file)).items():
        layer, part = parse_key(key)
        if part in layers.setdefault(layer, {}):  # e.g. lora_down and lora_A, or two namings
            problems.append(f"{key}: a second {part} weight for {layer}")
            continue
        layers[layer][part] = (key, tensor)
    named = dict(pipe.transformer.named_modules())
    out: dict[str, Any] = {}
    for layer, parts in layers.items():
        keys = [key for key, _ in parts.values()]
        if "down" not in parts or "up" not in parts:
            missing = "lora_up" if "down" in parts else "lora_down"
            problems += [f"{key}: no matching {missing}.weight" for key in keys]
            continue
        (down_key, down), (up_key, up) = parts["down"], parts["up"]
        modules = [named.get(name) for name in diffusers_modules(layer)]
        if any(getattr(module, "out_features", None) is None for module in modules):
            problems += [f"{key}: the transformer has no layer {layer}" for key in keys]
            continue
        rows = [module.out_features for module in modules]
        rank = down.shape[0] if down.ndim == 2 else -1
        if down.ndim != 2 or down.shape[1] != modules[0].in_features:
            problems.append(
                f"{down_key}: shape {list(down.shape)}, {layer} has {modules[0].in_features} "
                "in-features"
            )
            continue
        if tuple(up.shape) != (sum(rows), rank):
            problems.append(
                f"{up_key}: shape {list(up.shape)}, {layer} has {sum(rows)} out-features "
                f"({' + '.join(map(str, rows))}) and the lora_down rank {rank}"
            )
            continue
        alpha_key, alpha = parts.get("alpha", (None, None))
        if alpha is not None and (alpha.numel() != 1 or not math.isfinite(alpha.item())):
            problems.append(f"{alpha_key}: not one finite number")
            continue
        # ComfyUI and diffusers scale the fused layer by alpha / its rank (1 without an alpha).
        scale = 1.0 if alpha is None else alpha.item() / rank
        starts = [sum(rows[:slot]) for slot in range(len(rows))]
        supports = [
            (up[start : start + n] != 0).any(dim=0).numpy()
            for start, n in zip(starts, rows, strict=True)
        ]
        columns = split_columns(supports) if len(rows) > 1 else None
        for slot, name in enumerate(diffusers_modules(layer)):
            used = torch.arange(rank) if columns is None else torch.from_numpy(columns[slot])
            if not len(used):
                continue  # a projection the LoRA leaves alone (zero rows)
            prefix = f"transformer.{name}"
            out[f"{prefix}.lora_A.weight"] = down[used].contiguous()  # (r, in)
            b = up[starts[slot] : starts[slot] + rows[slot]]  # (out, rank)
            out[f"{prefix}.lora_B.weight"] = b[:, used].contiguous()  # (out, r)
            # alpha / r = scale, so peft applies exactly the fused layer's scale to this slot.
            out[f"{prefix}.alpha"] = torch.tensor(scale * len(used), dtype=torch.float32)
    return out, problems


def _copy(source: str | dict[str, Any]) -> str | dict[str, Any]:
    """Returns `source`, with a dict copied (diffusers' converters consume their input)."""
    return dict(source) if isinstance(source, dict) else source


def _loaded_adapters(pipe: Any) -> set[str]:
    """Returns the names of the adapters loaded into any of `pipe`'s components."""
    try:
        listed = pipe.get_list_adapters()
    except Exception:  # no peft backend, or a pipeline without LoRA support
        return set()
    return {name for names in listed.values() for name in names}


def _require_peft() -> None:
    """Returns nothing; raises ModelError unless diffusers can use peft for LoRAs."""
    import diffusers.utils

    if not diffusers.utils.USE_PEFT_BACKEND:
        raise ModelError(
            "loading a LoRA needs the peft package (and a recent transformers)",
            hint="pip install 'peft>=0.15' 'transformers>=4.48'",
        )


@contextmanager
def _quiet_diffusers() -> Iterator[None]:
    """Returns a context in which diffusers logs errors only."""
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)
