"""A tiny, randomly initialised FLUX.1 Kontext for tests and offline smoke runs.

Every component has the token shapes of the real model (16 latent channels, 8x VAE downsampling,
2x2 latent packing into 64 transformer channels, T5 + CLIP text encoders) but about 160k
parameters in all, so a 2-step 64x64 pipeline call takes well under a second on a CPU, and
nothing is ever downloaded.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import Unigram
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

# FluxKontextPipeline pads the T5 prompt to this many tokens and CLIP to model_max_length.
T5_MAX_LENGTH = 512
CLIP_MAX_LENGTH = 77

# FLUX.1 Kontext [dev] scheduler config (scheduler/scheduler_config.json on the Hub).
KONTEXT_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}


def _write_clip_tokenizer(path: Path) -> None:
    """Writes vocab.json and merges.txt of a byte-level BPE with no merges into ``path``."""
    # With no merges every byte is its own token; the last byte of a word carries "</w>".
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": CLIP_MAX_LENGTH}
    (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


def _write_t5_tokenizer(path: Path) -> None:
    """Writes tokenizer.json and tokenizer_config.json of a small T5-style Unigram into ``path``."""
    chars = [c for c in string.printable if not c.isspace()]
    # T5's fixed special ids: <pad>=0, </s>=1, <unk>=2 (unknown characters map to <unk>).
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in chars] + [("\u2581" + c, -2.5) for c in chars]
    tok = Tokenizer(Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tok.save(str(path / "tokenizer.json"))
    config = {
        "tokenizer_class": "T5Tokenizer",
        "model_max_length": T5_MAX_LENGTH,
        "pad_token": "<pad>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        # No <extra_id_*> sentinels: they would grow the vocabulary past the embedding table.
        "extra_ids": 0,
        "additional_special_tokens": [],
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


def tiny_tokenizers() -> tuple[CLIPTokenizer, T5TokenizerFast]:
    """Returns a fresh (CLIP tokenizer, T5 tokenizer) pair built from files written in code."""
    # from_pretrained reads everything eagerly, so the directory can go away right after.
    with tempfile.TemporaryDirectory(prefix="lc-tiny-tok-") as tmp:
        clip_dir, t5_dir = Path(tmp, "clip"), Path(tmp, "t5")
        clip_dir.mkdir()
        t5_dir.mkdir()
        _write_clip_tokenizer(clip_dir)
        _write_t5_tokenizer(t5_dir)
        tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
        tokenizer_2 = T5TokenizerFast.from_pretrained(t5_dir)
    return tokenizer, tokenizer_2


def tiny_kontext_components(seed: int = 0) -> dict[str, Any]:
    """Returns the keyword arguments of ``FluxKontextPipeline`` for a tiny random-weight model."""
    tokenizer, tokenizer_2 = tiny_tokenizers()
    # fork_rng keeps the caller's global RNG stream untouched by our reseeding.
    with torch.random.fork_rng(devices=[]):
        # Reseed before each model, in a fixed order, so each one's weights depend only on seed.
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,  # 16 latent channels packed 2x2
            out_channels=None,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=True,  # Kontext [dev] is guidance-distilled
            axes_dims_rope=(4, 4, 8),  # sums to attention_head_dim
        )

        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            # Four blocks -> three downsamplings -> 8x, like FLUX's VAE.
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 8, 8),
            layers_per_block=1,
            norm_num_groups=4,
            latent_channels=16,
            sample_size=64,
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.1159,
            scaling_factor=0.3611,
        )

        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,  # the pooled output feeds pooled_projection_dim
                intermediate_size=37,
                projection_dim=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=CLIP_MAX_LENGTH,
                # The pooled output is read at the first eos_token_id position.
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )

        torch.manual_seed(seed)
        text_encoder_2 = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer_2),
                d_model=32,
                d_kv=8,
                d_ff=37,
                num_layers=2,
                num_heads=2,
                pad_token_id=tokenizer_2.pad_token_id,
                eos_token_id=tokenizer_2.eos_token_id,
                decoder_start_token_id=tokenizer_2.pad_token_id,
            )
        )

    for model in (transformer, vae, text_encoder, text_encoder_2):
        model.eval()
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(**KONTEXT_SCHEDULER_CONFIG),
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": tokenizer_2,
        "transformer": transformer,
        "image_encoder": None,
        "feature_extractor": None,
    }
