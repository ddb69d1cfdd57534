"""Where the pipeline's networks live while training: what keeps a 12 B base within one GPU."""

from __future__ import annotations

import torch


def stage_on_cpu(model_quantization: str, t5_encoder: str) -> bool:
    """Whether to load on the CPU first: int8 weights are made there, and an offloaded T5 stays
    there, so the GPU never holds the bf16 transformer or T5."""
    return model_quantization != "none" or t5_encoder == "offload"


def place_for_training(pipe, device: torch.device, t5_encoder: str) -> None:
    """Move the networks to `device`, except an offloaded T5: its weights stay in CPU memory and
    stream to `device` one layer at a time when a caption is encoded (accelerate's cpu_offload).

    CLIP always moves: the pipeline takes its device from `text_encoder`, and an offloaded
    module's parameters are meta placeholders.
    """
    for network in (pipe.transformer, pipe.vae, pipe.text_encoder):
        network.to(device)
    if t5_encoder == "offload":
        from accelerate import cpu_offload

        cpu_offload(pipe.text_encoder_2, execution_device=device)
    else:
        pipe.text_encoder_2.to(device)
