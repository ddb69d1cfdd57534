"""Memory per GPU and time per step of a training config, counted from the model's architecture
(`architecture.py`) before anything is loaded: what `lc train --estimate` prints.

Pure arithmetic over layer shapes. What is counted exactly: parameters (base, LoRA, text encoders,
VAE), their bytes at their dtype or quantization, gradients and optimizer state, and matmul
FLOPs. What is modelled: the activations autograd keeps (tensor by tensor, below; checked
against the tensors torch saves on a small FLUX in the tests), and the rate a GPU sustains.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .architecture import Architecture, LinearShape
from .config import TrainConfig

GB = 1e9  # decimal gigabytes, as GPU memory is sold
# bf16 dense matmul rate an H100 SXM sustains in large DiT training: ~40% of its 989 TFLOP/s peak.
H100_SUSTAINED_TFLOPS = 400.0
TEXT_TOKENS = 512  # the trainer pads every T5 prompt to 512 tokens (FLUX's max_sequence_length)
# CUDA context, cuBLAS/attention workspaces and allocator fragmentation: an assumption, not a count.
RUNTIME_OVERHEAD_BYTES = 2 * GB
# torchao's AdamW8bit: tensors of >= 4096 values (and a multiple of the block) get 8-bit moments
# with one fp32 scale per 256-value block; smaller ones keep fp32 moments.
ADAMW8BIT_MIN_VALUES, ADAMW8BIT_BLOCK = 4096, 256
# Flash attention's backward: five N^2 matmuls (it recomputes the scores) against the forward's two.
ATTENTION_BACKWARD_RATIO = 2.5
ATTENTION_OUTPUTS = ("to_out.0", "to_add_out")  # their input is the attention output, saved anyway
NORMED_INPUTS = ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "proj_mlp")


@dataclass(frozen=True)
class Tokens:
    """Sequence lengths of one training example."""

    noisy: int  # the target's latent tokens: (resolution / 16)^2
    conditioning: int  # the layers' kept tokens
    text: int = TEXT_TOKENS

    @property
    def image(self) -> int:  # the image stream: noisy and conditioning tokens
        return self.noisy + self.conditioning

    @property
    def joint(self) -> int:
        return self.image + self.text

    def through(self, stream: str) -> int:
        """How many tokens a linear layer of `stream` processes."""
        return {"image": self.image, "text": self.text, "joint": self.joint, "vector": 1}[stream]


@dataclass(frozen=True)
class MemoryItem:
    name: str
    bytes: float
    note: str


@dataclass(frozen=True)
class Estimate:
    model: str
    resolution: int
    tokens: Tokens
    parameters: dict[str, int]
    memory: tuple[MemoryItem, ...]
    flops_per_example: float  # one example's forward and backward (and recompute)
    batch_size: int  # examples per optimizer step per GPU
    gpus: int
    steps: int
    device_tflops: float
    host_bytes: float  # CPU memory: loading (bf16 everything), an offloaded T5, the text cache
    assumptions: list[str] = field(default_factory=list)
    host_memory: tuple[MemoryItem, ...] = ()  # what host_bytes is made of

    @property
    def total_bytes(self) -> float:
        """Memory per GPU during training."""
        return sum(item.bytes for item in self.memory)

    @property
    def seconds_per_step(self) -> float:
        return self.batch_size * self.flops_per_example / (self.device_tflops * 1e12)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.gpus

    def to_dict(self) -> dict:
        """The `--json` form (keys documented in docs/training.md)."""
        return {
            "model": self.model,
            "resolution": self.resolution,
            "tokens": {
                "noisy": self.tokens.noisy,
                "conditioning": self.tokens.conditioning,
                "text": self.tokens.text,
            },
            "parameters": self.parameters,
            "memory": [
                {"item": item.name, "bytes": round(item.bytes), "note": item.note}
                for item in self.memory
            ],
            "total_bytes": round(self.total_bytes),
            "host_bytes": round(self.host_bytes),
            "host_memory": [
                {"item": item.name, "bytes": round(item.bytes), "note": item.note}
                for item in self.host_memory
            ],
            "flops_per_example": self.flops_per_example,
            "device_tflops": self.device_tflops,
            "batch_size": self.batch_size,
            "gpus": self.gpus,
            "global_batch": self.global_batch,
            "seconds_per_step": self.seconds_per_step,
            "steps": self.steps,
            "run_hours": self.steps * self.seconds_per_step / 3600,
            "assumptions": self.assumptions,
        }


# --- parameters ---------------------------------------------------------------------------------


def lora_targets(linears: tuple[LinearShape, ...], target_modules: list[str] | str) -> list:
    """The linear layers a LoRA with these `target_modules` wraps (peft's rule: a list matches a
    module whose name is an entry or ends with `.entry`; a string is a regex matching the whole
    name)."""
    if isinstance(target_modules, str):
        return [s for s in linears if re.fullmatch(target_modules, s.name)]
    return [
        s for s in linears if any(s.name == t or s.name.endswith("." + t) for t in target_modules)
    ]


def lora_matrices(targets: list[LinearShape], rank: int) -> list[int]:
    """The sizes of the LoRA's matrices: A (rank x in) and B (out x rank) per target."""
    return [size for s in targets for size in (rank * s.in_features, s.out_features * rank)]


def base_weight_bytes(arch: Architecture, quantization: str, dtype_bytes: int = 2) -> float:
    """The frozen transformer's bytes: bf16, or int8 linear weights (one fp32 scale per row,
    torchao's Int8WeightOnlyConfig) with bf16 biases and norm scales."""
    total = arch.other_parameters * dtype_bytes
    for s in arch.linears:
        weights = s.in_features * s.out_features
        if quantization == "int8":
            total += weights + 4 * s.out_features
        else:
            total += weights * dtype_bytes
        total += s.out_features * dtype_bytes if s.bias else 0
    return total


def optimizer_state_bytes(matrices: list[int], name: str) -> float:
    """Bytes of the two Adam moments of tensors of these sizes."""
    if name == "adamw":
        return 8.0 * sum(matrices)
    total = 0.0
    for size in matrices:
        if size >= ADAMW8BIT_MIN_VALUES and size % ADAMW8BIT_BLOCK == 0:
            total += 2 * (size + 4 * size / ADAMW8BIT_BLOCK)
        else:
            total += 8.0 * size
    return total


# --- activations --------------------------------------------------------------------------------


def block_activation_values(
    arch: Architecture, targets: list[LinearShape], tokens: Tokens, rank: int
) -> dict[str, float]:
    """Values autograd keeps for backward, per block (key: the block's module path).

    With a frozen base, a linear layer keeps its input only if it has a LoRA; the rest is what
    the gradient must flow through. Per token of a double block (each stream): the inputs of its
    two LayerNorms and of the q/k RMSNorms (4 x width), attention's q, k, v and output (4 x width)
    and the GELU's input (mlp width); single blocks: one LayerNorm, the RMSNorms, attention and
    the GELU (7 x width + mlp). A LoRA adds its input where no other tensor holds it (the q/k/v
    projections share theirs; the attention output is already kept) and its rank-wide middle.
    """
    width, mlp = arch.width, arch.mlp_hidden
    blocks: dict[str, float] = {}
    for i in range(arch.double_blocks):
        blocks[f"transformer_blocks.{i}"] = (8 * width + mlp) * (tokens.image + tokens.text)
    for i in range(arch.single_blocks):
        blocks[f"single_transformer_blocks.{i}"] = (7 * width + mlp) * tokens.joint
    blocks["head"] = width * tokens.image  # norm_out's input
    shared_inputs = set()
    for s in targets:
        parts = s.name.split(".")
        block = ".".join(parts[:2]) if parts[0].endswith("blocks") else "head"
        count = tokens.through(s.stream)
        blocks[block] += rank * count  # the LoRA's middle: A's output, B's input
        if s.name.endswith(ATTENTION_OUTPUTS):
            continue
        if s.name.endswith(NORMED_INPUTS):
            key = (block, s.stream)
            if key in shared_inputs:
                continue
            shared_inputs.add(key)
        blocks[block] += s.in_features * count
    return blocks


def block_input_values(arch: Architecture, tokens: Tokens) -> float:
    """What gradient checkpointing keeps: each block's input hidden states (image and text)."""
    return (arch.double_blocks + arch.single_blocks) * arch.width * tokens.joint


def activation_bytes(
    arch: Architecture,
    targets: list[LinearShape],
    tokens: Tokens,
    rank: int,
    checkpointing: bool,
    dtype_bytes: int = 2,
) -> float:
    """Peak activation bytes of one example's forward and backward.

    Without checkpointing every block's kept tensors, plus about one block's worth of gradients
    in flight; with it, the blocks' inputs plus one block recomputed and its gradients.
    """
    blocks = block_activation_values(arch, targets, tokens, rank)
    largest = max(blocks.values())
    if checkpointing:
        values = block_input_values(arch, tokens) + blocks["head"] + 2 * largest
    else:
        values = sum(blocks.values()) + largest
    return values * dtype_bytes


# --- FLOPs --------------------------------------------------------------------------------------


def _linear_flops(shapes, tokens: Tokens, rank: int | None = None) -> float:
    """2 x in x out x tokens per layer; with `rank`, those of a LoRA of that rank on each."""
    if rank is None:
        return sum(2 * s.in_features * s.out_features * tokens.through(s.stream) for s in shapes)
    return sum(
        2 * rank * (s.in_features + s.out_features) * tokens.through(s.stream) for s in shapes
    )


def forward_flops(arch: Architecture, targets: list[LinearShape], tokens: Tokens, rank: int):
    """Forward matmul FLOPs of one example: (base linears, LoRA, attention)."""
    blocks = arch.double_blocks + arch.single_blocks
    attention = blocks * 4 * tokens.joint**2 * arch.width  # QK^T and PV over the joint sequence
    return _linear_flops(arch.linears, tokens), _linear_flops(targets, tokens, rank), attention


def training_flops(
    arch: Architecture,
    targets: list[LinearShape],
    tokens: Tokens,
    rank: int,
    checkpointing: bool,
    attention_backward: float = ATTENTION_BACKWARD_RATIO,
) -> float:
    """FLOPs of one example's forward, backward and (with checkpointing) recomputed forward.

    Backward through a frozen linear layer computes only its input's gradient (one forward's
    worth), and only where a gradient flows: not in the embedders, the modulation layers, or the
    first block's q/k/v projections when nothing before them trains.
    A LoRA layer also computes its weights' gradient (two forwards); attention
    `attention_backward` forwards.
    """
    base, lora, attention = forward_flops(arch, targets, tokens, rank)
    in_blocks = [
        s for s in arch.linears if s.stream != "vector" and s.name.split(".")[0].endswith("blocks")
    ]
    if all(s.name.split(".")[0].endswith("blocks") for s in targets):
        # Nothing before the first block trains, so its q/k/v projections' input needs no gradient.
        first = "transformer_blocks.0." if arch.double_blocks else "single_transformer_blocks.0."
        in_blocks = [
            s
            for s in in_blocks
            if not (s.name.startswith(first) and s.name.endswith(NORMED_INPUTS))
        ]
    recompute = 1 if checkpointing else 0
    return (
        base * (1 + recompute)
        + _linear_flops(in_blocks, tokens)
        + lora * (3 + recompute)
        + attention * (1 + attention_backward + recompute)
    )


def text_embedding_bytes(arch: Architecture, text_tokens: int) -> float:
    """Bytes of one caption's cached T5 and CLIP embeddings and text ids, in bf16."""
    widths = {s.name: s.in_features for s in arch.linears}
    t5, pooled = widths["context_embedder"], widths["time_text_embed.text_embedder.linear_1"]
    return 2.0 * (text_tokens * (t5 + 3) + pooled)


def text_cache_item(arch: Architecture, text_tokens: int, train, captions: int | None):
    """The text-embedding cache in CPU memory: the dataset's captions, at most the cap."""
    per_caption = text_embedding_bytes(arch, text_tokens)
    cap = train.text_cache_gb * 1e9 if train.cache_text else 0.0
    if cap == 0:
        return MemoryItem("text embedding cache", 0.0, "off: every caption encoded when drawn")
    if captions is None:
        return MemoryItem(
            "text embedding cache",
            cap,
            f"its cap, {train.text_cache_gb:g} GB ({per_caption / 1e6:.1f} MB per caption)",
        )
    held = min(captions, int(cap // per_caption))
    note = f"{captions:,} distinct captions x {per_caption / 1e6:.1f} MB"
    if held < captions:
        note += f"; the cap ({train.text_cache_gb:g} GB) keeps {held:,}, the rest are re-encoded"
    return MemoryItem("text embedding cache", held * per_caption, note)


# --- the budget ---------------------------------------------------------------------------------


def estimate(
    config: TrainConfig,
    arch: Architecture,
    resolution: int = 512,
    conditioning_tokens: int | None = None,
    gpus: int = 1,
    device_tflops: float = H100_SUSTAINED_TFLOPS,
    captions: int | None = None,
) -> Estimate:
    """The memory per GPU and time per step of `config` on a CUDA GPU (bf16 base weights).

    `captions`: distinct captions in the dataset, whose text embeddings `train.cache_text` keeps
    in CPU memory up to `train.text_cache_gb` (None: unknown, the cap is counted).
    """
    noisy = (resolution // 16) ** 2
    tokens = Tokens(noisy, noisy if conditioning_tokens is None else conditioning_tokens)
    rank = config.lora.rank
    targets = lora_targets(arch.linears, config.lora.target_modules)
    matrices = lora_matrices(targets, rank)
    lora = sum(matrices)
    train = config.train
    quantized = config.model_quantization == "int8"
    t5, t5_offloaded = arch.text_encoder_2_parameters, train.t5_encoder == "offload"
    items = [
        MemoryItem(
            "transformer weights",
            base_weight_bytes(arch, config.model_quantization),
            "int8 linear weights, bf16 rest" if quantized else "bf16",
        ),
        MemoryItem(
            "text encoders",
            2.0 * (arch.text_encoder_parameters + (0 if t5_offloaded else t5)),
            "CLIP in bf16; T5 offloaded to CPU memory, streamed per layer"
            if t5_offloaded
            else "T5 and CLIP in bf16",
        ),
        MemoryItem("VAE", 2.0 * arch.vae_parameters, "bf16"),
        MemoryItem("LoRA weights", 4.0 * lora, f"{lora:,} parameters in fp32"),
        MemoryItem("LoRA gradients", 4.0 * lora, "fp32"),
        MemoryItem(
            "optimizer state",
            optimizer_state_bytes(matrices, config.optim.name),
            "AdamW8bit: 8-bit moments"
            if config.optim.name == "adamw8bit"
            else "AdamW: fp32 moments",
        ),
    ]
    if gpus > 1:
        items.append(MemoryItem("DDP gradient buckets", 4.0 * lora, "a copy of the gradients"))
    items += [
        MemoryItem(
            "activations",
            activation_bytes(arch, targets, tokens, rank, train.gradient_checkpointing),
            f"one example at a time ({tokens.joint:,} tokens), "
            + ("with" if train.gradient_checkpointing else "without")
            + " gradient checkpointing",
        ),
        MemoryItem(
            "VAE encoding",
            3 * 2.0 * arch.vae_channels * resolution**2,
            "three full-resolution feature maps, no gradient",
        ),
        MemoryItem(
            "runtime overhead",
            RUNTIME_OVERHEAD_BYTES,
            "CUDA context, workspaces, fragmentation (assumed)",
        ),
    ]
    # Every network is read into CPU memory in bf16 first; int8 weights are made there, layer by
    # layer (so the GPU never holds the bf16 transformer), and an offloaded T5 stays there.
    host_items = [
        MemoryItem(
            "weights read in bf16",
            base_weight_bytes(arch, "none")
            + 2.0 * (arch.text_encoder_parameters + t5 + arch.vae_parameters),
            "every network, before it moves to the GPU",
        ),
        text_cache_item(arch, tokens.text, train, captions),
    ]
    return Estimate(
        model=config.model,
        resolution=resolution,
        tokens=tokens,
        parameters={
            "transformer": arch.transformer_parameters,
            "lora": lora,
            "text_encoder": arch.text_encoder_parameters,
            "text_encoder_2": arch.text_encoder_2_parameters,
            "vae": arch.vae_parameters,
        },
        memory=tuple(items),
        flops_per_example=training_flops(arch, targets, tokens, rank, train.gradient_checkpointing),
        batch_size=train.batch_size,
        gpus=gpus,
        steps=train.steps,
        device_tflops=device_tflops,
        host_bytes=sum(item.bytes for item in host_items),
        host_memory=tuple(host_items),
        assumptions=[
            f"conditioning tokens: {tokens.conditioning:,} (one canvas of kept layer tokens)",
            f"device rate: {device_tflops:g} TFLOP/s sustained (default: an H100 SXM's bf16, "
            "~40% of its peak)",
            "the VAE encoder's FLOPs are not counted",
        ]
        + (
            ["distinct captions unknown (no dataset yet): the text cache counted at its cap"]
            if train.cache_text and captions is None
            else []
        )
        + (["int8 weights are dequantized in each matmul: bf16 FLOPs"] if quantized else []),
    )
