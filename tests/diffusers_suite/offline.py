"""Local stand-ins for the three Hugging Face Hub downloads of the Kontext tests' dummy components.

Written for lc (not part of diffusers). `get_dummy_components` in
pipelines/flux/test_pipeline_flux_kontext.py downloads a T5 config and two tokenizers from
`hf-internal-testing`; CI has no network, so these build equivalents in code: lc's tiny
tokenizers (a byte-level CLIP BPE and a T5-style Unigram, see layercomposer/tiny.py) and a T5
config with the tiny-random-t5 sizes, its vocabulary sized to the tokenizer.
"""

from __future__ import annotations

from transformers import T5Config

from layercomposer.tiny import tiny_tokenizers


def tiny_random_t5_config() -> T5Config:
    """For `AutoConfig.from_pretrained("hf-internal-testing/tiny-random-t5")`."""
    return T5Config(
        vocab_size=len(tiny_random_t5_tokenizer()), d_model=32, d_kv=8, d_ff=37, num_layers=5,
        num_heads=4, relative_attention_num_buckets=8,
    )  # fmt: skip


def tiny_random_clip_tokenizer():
    """For `CLIPTokenizer.from_pretrained("hf-internal-testing/tiny-random-clip")`."""
    return tiny_tokenizers()[0]


def tiny_random_t5_tokenizer():
    """For `AutoTokenizer.from_pretrained("hf-internal-testing/tiny-random-t5")`."""
    return tiny_tokenizers()[1]
