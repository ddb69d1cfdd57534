"""A tiny, randomly initialised Qwen-Image-Edit for tests and offline smoke runs.

The components are those of diffusers' `QwenImageEditPipeline` (a Qwen2.5-VL text encoder with
its processor, `QwenImageTransformer2DModel`, `AutoencoderKLQwenImage`, a flow-matching
scheduler) at the shapes diffusers' own pipeline tests use, but nothing is downloaded: the
tokenizer is a byte-level BPE with no merges and the processor is built in code.

The VAE keeps the real model's 8x downsampling (four stages) because the pipeline always encodes
the reference image at about one megapixel: a 4x VAE would hand the transformer 16k reference
tokens. Even so a call spends most of its time in that encode (about a second on a CPU).

The same Qwen2.5-VL, with wider random weights, is `lc dataset caption`'s builtin:tiny
captioner (`tiny_qwen_vl_captioner`); it needs no diffusers.
"""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import pre_tokenizers
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen2VLProcessor,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

END_OF_TEXT = "<|endoftext|>"
# The chat and vision markers QwenImageEditPipeline's prompt template and the processor use.
SPECIAL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
LATENT_CHANNELS = 16  # as Qwen-Image's VAE
# The vision tower sees at most 112x112 px (16 patches of 14 px, 4 tokens after merging), so the
# text encoder's sequence stays short; the real processor allows ~1 MP.
VISION_MAX_PIXELS = 112 * 112
CAPTIONER_WEIGHT_STD = 0.5  # the tiny captioner's random weights


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """`Qwen2VLProcessor` without a video processor.

    Qwen-Image-Edit only gives it images, and transformers' video processors need torchvision,
    which does not install beside every torch: its class check is skipped for a missing one.
    """

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


def tiny_qwen_tokenizer() -> Qwen2Tokenizer:
    """Returns a Qwen2 tokenizer over the 256 byte symbols (no merges) plus Qwen's markers."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    for token in (END_OF_TEXT, *SPECIAL_TOKENS):
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[])
    # Marked special, so that the template's markers stay single tokens.
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    return tokenizer


def tiny_qwen_edit_components(seed: int = 0) -> dict[str, Any]:
    """Returns the keyword arguments of ``QwenImageEditPipeline`` for a tiny random-weight model."""
    # Imported here: the tiny captioner (`tiny_qwen_vl_captioner`) needs no diffusers, which
    # takes seconds to import.
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageTransformer2DModel,
    )

    tokenizer = tiny_qwen_tokenizer()
    processor = ImageOnlyQwen2VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=VISION_MAX_PIXELS),
        tokenizer=tokenizer,
    )
    # fork_rng keeps the caller's global RNG stream untouched by our reseeding.
    with torch.random.fork_rng(devices=[]):
        # Reseed before each model, in a fixed order, so each one's weights depend only on seed.
        torch.manual_seed(seed)
        transformer = QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=4 * LATENT_CHANNELS,  # 2x2 packed latents
            out_channels=LATENT_CHANNELS,
            num_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=16,  # the text encoder's hidden size
            guidance_embeds=False,  # Qwen-Image-Edit uses true classifier-free guidance
            axes_dims_rope=(8, 4, 4),  # sums to attention_head_dim
        )

        torch.manual_seed(seed)
        vae = AutoencoderKLQwenImage(
            base_dim=4,
            z_dim=LATENT_CHANNELS,
            dim_mult=[1, 2, 4, 4],  # four stages: 8x, like the real VAE
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
            latents_mean=[0.0] * LATENT_CHANNELS,
            latents_std=[1.0] * LATENT_CHANNELS,
        )

        torch.manual_seed(seed)
        text_encoder = Qwen2_5_VLForConditionalGeneration(tiny_qwen_vl_config(tokenizer))

    for model in (transformer, vae, text_encoder):
        model.eval()
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "processor": processor,
        "transformer": transformer,
    }


def tiny_qwen_vl_config(tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLConfig:
    """Returns the config of a Qwen2.5-VL with 16-wide layers over ``tokenizer``'s vocabulary."""
    token_id = tokenizer.convert_tokens_to_ids
    end_of_text = token_id(END_OF_TEXT)
    return Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "rope_scaling": {
                "mrope_section": [1, 1, 2],
                "rope_type": "default",
                "type": "default",
            },
            "rope_theta": 1000000.0,
            "vocab_size": len(tokenizer),
            "bos_token_id": end_of_text,
            "eos_token_id": end_of_text,
            "pad_token_id": end_of_text,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": 16,
        },
        hidden_size=16,
        vocab_size=len(tokenizer),
        # Where the vision embeddings go: the processor expands <|image_pad|>.
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
    )


def tiny_qwen_vl_captioner(seed: int = 0):
    """Returns a random-weight ``Qwen2_5_VLForConditionalGeneration`` and its image-only
    processor (with Qwen's chat template): `lc dataset caption --model builtin:tiny`."""
    from .captioner import QWEN_VL_CHAT_TEMPLATE, ImageOnlyQwen2_5_VLProcessor

    tokenizer = tiny_qwen_tokenizer()
    processor = ImageOnlyQwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=VISION_MAX_PIXELS),
        tokenizer=tokenizer,
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(tiny_qwen_vl_config(tokenizer))
        # Wider than the usual 0.02: at 16 channels the answer would not depend on the image,
        # and tests could not tell one image's caption from another's.
        for weight in model.parameters():
            if weight.dim() > 1:
                weight.normal_(0.0, CAPTIONER_WEIGHT_STD)
    return model.eval(), processor
