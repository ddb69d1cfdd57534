"""Where the model comes from: a Hugging Face hub id, a local folder, or `builtin:tiny`.

Hub ids are read through the normal Hugging Face cache and honour `HF_HUB_OFFLINE`. Every way
loading can fail becomes a `ModelError` that says what to do.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .choices import Dtype, Offload, names
from .errors import ModelError, UsageError, exception_text

if TYPE_CHECKING:  # torch is imported when a model is loaded, so `lc validate` starts fast
    import torch

    from .speed import SpeedOptions

DEFAULT_MODEL = "black-forest-labs/FLUX.1-Kontext-dev"
QWEN_EDIT_MODEL = "Qwen/Qwen-Image-Edit"  # lc bench's qwen-image-edit baseline
# lc dataset caption's (see captioner.py): Apache-2.0; the 3B is under the Qwen Research Licence.
DEFAULT_CAPTIONER = "Qwen/Qwen2.5-VL-7B-Instruct"
TINY_MODEL_ID = "builtin:tiny"
DTYPE_NAMES = tuple(name for name in names(Dtype) if name != "auto")


@dataclass(frozen=True)
class ModelKind:
    """Which family a model option loads, for the messages that say how to get its weights."""

    name: str  # "FLUX.1"
    example: str  # a hub id to suggest
    option: str  # the command-line option that names the model
    gated: bool  # the hub asks users to accept a licence before downloading


FLUX_KIND = ModelKind("FLUX.1", DEFAULT_MODEL, "--model", gated=True)
QWEN_EDIT_KIND = ModelKind("Qwen-Image-Edit", QWEN_EDIT_MODEL, "--qwen-model", gated=False)


def local_folder(
    model: str, kind: ModelKind, marker: str, library: str, what: str
) -> tuple[Path, bool]:
    """The folder `model` names and whether it names one (else it is a hub id `owner/name`);
    a folder without its `marker` file is a ModelError saying what to pass instead."""
    folder = Path(model).expanduser()
    looks_local = folder.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1
    if looks_local and not (folder / marker).is_file():
        problem = "does not exist" if not folder.exists() else f"has no {marker}"
        raise ModelError(
            f"{what} folder {folder} {problem}",
            hint=f"pass a {library} folder of a {kind.name} model, a hub id such as "
            f"{kind.example}, or builtin:tiny for a random-weight test {what}",
        )
    return folder, looks_local


@dataclass(frozen=True)
class ModelInfo:
    """Which weights a render used, for its manifest."""

    id: str  # what was asked for: a hub id, a folder, or builtin:tiny
    source: Literal["hub", "local", "builtin"]
    revision: str | None  # the hub commit, when known
    path: str | None  # the folder the weights were read from
    config_sha256: str | None  # of model_index.json, to tell local folders apart
    random_weights: bool  # builtin:tiny: the image is noise

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(device: str) -> torch.device:
    """`auto` -> cuda if available, else cpu; anything else as given (`cuda:1`, `cpu`, `mps`)."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UsageError(
            f"--device {device!r} is not a device torch knows (try cpu, cuda, cuda:1)"
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            f"--device {device}: CUDA is not available on this machine", hint="use --device cpu"
        )
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` -> bfloat16 on CUDA (what FLUX is trained in), float32 elsewhere."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPE_NAMES:
        raise UsageError(f"--dtype {dtype!r}: choose one of auto, {', '.join(DTYPE_NAMES)}")
    return getattr(torch, dtype)


def load_pipeline(
    model: str = DEFAULT_MODEL,
    revision: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    offload: Offload = "none",
    attention_backend: str | None = None,
    pipeline_class=None,
    speed: SpeedOptions | None = None,
    tiny_components: Callable[[], dict[str, Any]] | None = None,
    kind: ModelKind = FLUX_KIND,
):
    """Return a ready `LayerComposerPipeline` and the `ModelInfo` that describes its weights.

    `pipeline_class` loads another FLUX pipeline the same way (`lc autolayout`'s prior uses
    diffusers' `FluxPipeline`; builtin:tiny has the same components). `speed` compiles, caches
    or quantizes the transformer (see speed.py). Another family's pipeline (see
    `load_qwen_edit_pipeline`) names its own builtin:tiny components and its `kind`.
    """
    import torch

    from .pipeline import LayerComposerPipeline
    from .speed import SpeedOptions, apply_speed_options, quantize_transformer
    from .tiny import tiny_kontext_components

    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    if model == TINY_MODEL_ID:
        pipe = (pipeline_class or LayerComposerPipeline)(
            **(tiny_components or tiny_kontext_components)()
        )
        if torch_dtype != torch.float32:
            pipe.to(dtype=torch_dtype)
        info = ModelInfo(model, "builtin", None, None, None, random_weights=True)
    else:
        pipe, info = _from_pretrained(model, revision, torch_dtype, pipeline_class, kind)
    pipe.cache_namespace = f"{info.id}@{info.revision or info.config_sha256 or ''}"
    pipe.set_progress_bar_config(disable=True)

    if attention_backend:
        try:
            pipe.transformer.set_attention_backend(attention_backend)
        except (ValueError, ImportError, RuntimeError) as exc:
            raise UsageError(f"--attention-backend {attention_backend}: {exc}") from None
    if offload != "none" and target.type == "cpu":
        raise UsageError(
            f"--offload {offload} moves weights between the CPU and a GPU; on a CPU use --offload none"
        )
    if offload not in ("none", "model", "sequential"):
        raise UsageError(f"--offload {offload!r}: choose none, model or sequential")
    speed = speed or SpeedOptions()
    if offload == "none":
        pipe.to(target)  # quantize where the weights will run: fp8 checks the GPU it runs on
    quantize_transformer(pipe.transformer, speed.quantize)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=target)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=target)
    apply_speed_options(pipe.transformer, speed)
    return pipe, info


def load_qwen_edit_pipeline(
    model: str = QWEN_EDIT_MODEL,
    revision: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    offload: Offload = "none",
):
    """Return diffusers' `QwenImageEditPipeline` and the `ModelInfo` of its weights.

    Resolved like `lc render`'s model: a hub id (through the Hugging Face cache, honouring
    `HF_HUB_OFFLINE`), a local diffusers folder, or builtin:tiny (random weights, see tiny_qwen).
    """
    from diffusers import QwenImageEditPipeline

    from .tiny_qwen import tiny_qwen_edit_components

    try:
        return load_pipeline(
            model, revision, dtype, device, offload, pipeline_class=QwenImageEditPipeline,
            tiny_components=tiny_qwen_edit_components, kind=QWEN_EDIT_KIND,
        )  # fmt: skip
    except ImportError as exc:  # transformers' Qwen2-VL video processor needs torchvision
        raise ModelError(
            f"cannot load {model}: its processor needs a package that is missing ({_first_line(exc)})",
            hint="pip install torchvision, the build made for your torch version",
        ) from None


def _from_pretrained(
    model: str, revision: str | None, torch_dtype, pipeline_class=None, kind: ModelKind = FLUX_KIND
):
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from .pipeline import LayerComposerPipeline

    folder, looks_local = local_folder(model, kind, "model_index.json", "diffusers", "model")
    download = f"download it with `hf download {model}` (or point {kind.option} at a local copy)"
    gated_hint = (
        f"{model} is gated: accept its licence on https://huggingface.co/{model}, log in with "
        f"`hf auth login`, then {download}"
        if kind.gated
        else download
    )
    try:
        pipe = (pipeline_class or LayerComposerPipeline).from_pretrained(
            str(folder) if looks_local else model, revision=revision, dtype=torch_dtype
        )
    except GatedRepoError:
        raise ModelError(f"no access to {model}", hint=gated_hint) from None
    except RevisionNotFoundError:
        raise ModelError(f"{model} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise ModelError(
            f"no model {model!r} on the hub (or it is private)", hint=gated_hint
        ) from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        why = "HF_HUB_OFFLINE is set" if offline else _first_line(exc)
        raise ModelError(
            f"cannot load {model}: its weights are not in the Hugging Face cache ({why})",
            hint=gated_hint,
        ) from None

    path = Path(getattr(pipe, "_name_or_path", None) or pipe.config.get("_name_or_path", model))
    index = _find_model_index(model if looks_local else None, pipe)
    config_hash = hashlib.sha256(index.read_bytes()).hexdigest() if index else None
    snapshot_revision = (
        index.parent.name if index and index.parent.parent.name == "snapshots" else None
    )
    source = "local" if looks_local else "hub"
    info = ModelInfo(
        model,
        source,
        revision or snapshot_revision,
        str(index.parent if index else path),
        config_hash,
        False,
    )
    return pipe, info


def fetch_lora(spec: str, option: str = "--lora") -> str:
    """A LoRA's local path: `spec` itself, or a hub LoRA read through the Hugging Face cache
    (honouring `HF_HUB_OFFLINE`).

    Hub LoRAs are `owner/name` (the repo's one `.safetensors` file) or
    `owner/name/path/in/repo.safetensors`. A `spec` that is neither an existing path nor shaped
    like either is returned unchanged, for `load_lora` to report as missing.
    """
    parts = spec.split("/")
    is_file = len(parts) > 2 and spec.lower().endswith(".safetensors")
    is_repo = len(parts) == 2 and not spec.lower().endswith(".safetensors")
    looks_hub = (is_repo or is_file) and all(parts) and not spec.startswith((".", "~"))
    if Path(spec).expanduser().exists() or not looks_hub:
        return spec
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    hint = f"download it with `hf download {repo}`, or pass {option} a local .safetensors file"
    try:
        if is_file:
            return hf_hub_download(repo, filename)
        folder = Path(snapshot_download(repo, allow_patterns=["*.safetensors"]))
    except GatedRepoError:
        raise ModelError(f"no access to the LoRA {spec}", hint=hint) from None
    except RepositoryNotFoundError:
        raise ModelError(f"{spec}: no such LoRA file, nor a repo on the hub", hint=hint) from None
    except (HfHubHTTPError, OSError, ValueError) as exc:  # LocalEntryNotFoundError is an OSError
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        why = "HF_HUB_OFFLINE is set" if offline else _first_line(exc)
        raise ModelError(
            f"{spec}: no such LoRA file, and not in the Hugging Face cache as a hub LoRA ({why})",
            hint=hint,
        ) from None
    found = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.safetensors"))
    if len(found) != 1:
        raise ModelError(
            f"the LoRA repo {repo} holds {len(found)} .safetensors files ({', '.join(found)})",
            hint=f"name one: {option} {repo}/FILE",
        )
    return str(folder / found[0])


def _find_model_index(local: str | None, pipe) -> Path | None:
    if local:
        return Path(local).expanduser() / "model_index.json"
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(pipe.config["_name_or_path"], "model_index.json")
    except Exception:  # noqa: BLE001 - only a manifest detail
        return None
    return Path(found) if isinstance(found, str) else None


def _first_line(exc: BaseException) -> str:
    """Why a load failed, for the message: a hub that cannot be reached is said so (the
    library's own text is about the cache, its arguments and a stack trace we do not show)."""
    cause: BaseException | None = exc
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:  # a chain can loop back on itself
        seen.add(id(cause))
        if any(word in type(cause).__name__ for word in ("Connect", "Timeout")):
            return f"the hub cannot be reached: {exception_text(cause)}"
        cause = cause.__cause__ or cause.__context__
    return exception_text(exc)
