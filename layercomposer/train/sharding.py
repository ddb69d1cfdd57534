"""Sharded training (FSDP2): wrap the transformer's blocks, control gradient sync, and move the
trainable state between its shards and one full copy for checkpoints.

`accelerate launch --config_file configs/accelerate/fsdp.yaml` asks for FSDP through the
environment (`ACCELERATE_USE_FSDP`, `FSDP_*`). accelerate turns FSDP on only for accelerator
devices: on CPU processes (gloo) the same launch silently becomes plain data parallel. So lc
shards the transformer itself with torch's `fully_shard`, on GPUs and CPUs alike, reading the
config file's settings through accelerate's own `FullyShardedDataParallelPlugin`: the path the
two-CPU-process test runs is the path a GPU run takes.

Checkpoints hold *full* (unsharded) tensors keyed by parameter name, gathered to rank 0 with
`torch.distributed.checkpoint.state_dict`: a checkpoint does not depend on how many processes
wrote it, and only rank 0 reads it back (it broadcasts to the others).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..errors import LcError

# FLUX's double-stream and single-stream blocks: one FSDP unit each, so only one block's
# frozen weights are gathered at a time.
FLUX_BLOCKS = ("FluxTransformerBlock", "FluxSingleTransformerBlock")


@dataclass(frozen=True)
class ShardingSettings:
    wrap_classes: tuple[str, ...]  # module class names that become FSDP units
    reshard_after_forward: bool  # FULL_SHARD (True) or SHARD_GRAD_OP (False)
    offload_params: bool  # keep the shards in CPU memory between uses


def fsdp_requested() -> bool:
    """True when the launch asked for FSDP (`distributed_type: FSDP` in accelerate's config)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def settings_from_launch() -> ShardingSettings:
    """The FSDP settings of the accelerate config this process was launched with."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables accelerate set
    if plugin.fsdp_version != 2:
        raise LcError(
            f"the accelerate config asks for FSDP version {plugin.fsdp_version}; lc shards with "
            "FSDP2 (fully_shard)",
            hint="set fsdp_version: 2 in the config (configs/accelerate/fsdp.yaml does)",
        )
    classes = tuple(plugin.transformer_cls_names_to_wrap or FLUX_BLOCKS)
    offload = type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy"
    return ShardingSettings(classes, bool(plugin.reshard_after_forward), offload)


def shard_model(
    model: torch.nn.Module, settings: ShardingSettings, device_type: str
) -> torch.nn.Module:
    """Shard `model` in place over all processes: each block of `settings.wrap_classes` is one
    unit, the rest (embedders, final norm and projection) the root unit. Frozen and trainable
    parameters are sharded alike; only trainable ones get gradients."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    blocks = [m for m in model.modules() if type(m).__name__ in settings.wrap_classes]
    if not blocks:
        raise LcError(
            f"FSDP: no module of class {', '.join(settings.wrap_classes)} in the transformer",
            hint="check fsdp_transformer_layer_cls_to_wrap in the accelerate config",
        )
    options = {
        "mesh": init_device_mesh(device_type, (dist.get_world_size(),)),
        "offload_policy": CPUOffloadPolicy() if settings.offload_params else OffloadPolicy(),
    }
    # The blocks return views, which FSDP2 warns about (an in-place op on one would skip its
    # gradient hook); diffusers' FLUX does none, and the two-process test checks the gradients.
    warnings.filterwarnings("ignore", "FSDP2-wrapped module .* returned a view", UserWarning)
    for block in blocks:
        fully_shard(block, reshard_after_forward=settings.reshard_after_forward, **options)
    fully_shard(model, **options)
    return model


def repoint_optimizer(
    optimizer: torch.optim.Optimizer, old_names: dict[int, str], model: torch.nn.Module
) -> list[torch.nn.Parameter]:
    """Give the optimizer the sharded parameters that replaced the ones it was built with
    (`fully_shard` swaps in new parameter objects); returns them. `old_names` maps `id()` of each
    parameter before sharding to its name."""
    if optimizer.state:
        raise LcError("internal: the optimizer has state before the model was sharded")
    current = dict(model.named_parameters())
    trainable = []
    for group in optimizer.param_groups:
        group["params"] = [current[old_names[id(p)]] for p in group["params"]]
        trainable += group["params"]
    return trainable


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextmanager
def gradient_sync(model: torch.nn.Module, accelerator, enabled: bool) -> Iterator[None]:
    """Synchronise gradients across processes in this backward pass only if `enabled`.

    DDP skips its all-reduce under `no_sync`. FSDP2 has no `no_sync`: with
    `set_requires_gradient_sync(False)` it keeps the unsharded gradients and reduce-scatters
    their sum at the next synchronised backward, which is what per-example accumulation needs."""
    if enabled:
        yield
    elif is_sharded(model):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        with accelerator.no_sync(model):
            yield


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def full_trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters, unsharded, on the CPU, by parameter name: on rank 0 (empty on
    the others). Every process must call it when the model is sharded (it gathers)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(
        full_state_dict=True, cpu_offload=_distributed(), ignore_frozen_params=True
    )
    return get_model_state_dict(model, options=options)


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state, unsharded and keyed by parameter name, on rank 0 (see above)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=_distributed())
    return get_optimizer_state_dict(model, optimizer, options=options)


def load_full_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trainable: dict[str, torch.Tensor],
    optimizer_state: dict,
) -> None:
    """Load full trainable weights and optimizer state (read on rank 0; the others pass empty
    dicts and receive their shards by broadcast)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    distributed = _distributed()
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=distributed, strict=False)
    set_model_state_dict(model, trainable, options=options)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)
