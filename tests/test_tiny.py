"""The built-in tiny FLUX.1 Kontext runs offline, deterministically, with real token shapes."""

import os

# Nothing here may touch the network; set before huggingface_hub reads its constants.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from conftest import stock_kontext  # noqa: E402
from layercomposer.models import TINY_MODEL_ID  # noqa: E402
from layercomposer.tiny import tiny_kontext_components  # noqa: E402

PROMPT_UNICODE = "Ünïcödé 東京 🙂 \t tabs\nand\u00a0nbsp ~`|"


@pytest.fixture(scope="module")
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), mode="RGB")


def _render(components: dict, image: Image.Image, seed: int = 0) -> np.ndarray:
    return stock_kontext(diffusers.FluxKontextPipeline(**components), image, seed)


def test_model_id() -> None:
    assert TINY_MODEL_ID == "builtin:tiny"


def test_pipeline_runs_offline(image: Image.Image) -> None:
    result = _render(tiny_kontext_components(), image)
    assert result.shape == (1, 64, 64, 3)
    assert np.isfinite(result).all()
    assert result.min() >= 0.0 and result.max() <= 1.0


def test_same_seed_same_output(image: Image.Image) -> None:
    first = _render(tiny_kontext_components(seed=3), image, seed=7)
    second = _render(tiny_kontext_components(seed=3), image, seed=7)
    np.testing.assert_array_equal(first, second)


def test_same_seed_bit_identical_weights() -> None:
    a, b = tiny_kontext_components(seed=5), tiny_kontext_components(seed=5)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        sa, sb = a[name].state_dict(), b[name].state_dict()
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"{name}.{key}"


def test_different_seed_different_transformer() -> None:
    a = tiny_kontext_components(seed=0)["transformer"].state_dict()
    b = tiny_kontext_components(seed=1)["transformer"].state_dict()
    assert any(not torch.equal(a[key], b[key]) for key in a)


def test_caller_rng_untouched() -> None:
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    tiny_kontext_components(seed=9)
    assert torch.equal(torch.rand(4), expected)


def test_vae_downsamples_8x_to_16_channels() -> None:
    vae = tiny_kontext_components()["vae"]
    with torch.no_grad():
        latent = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
    assert latent.shape == (1, 16, 8, 8)


def test_shapes_match_between_components() -> None:
    c = tiny_kontext_components()
    cfg = c["transformer"].config
    assert cfg.in_channels == 4 * c["vae"].config.latent_channels
    assert cfg.pooled_projection_dim == c["text_encoder"].config.hidden_size
    assert cfg.joint_attention_dim == c["text_encoder_2"].config.d_model
    assert len(c["tokenizer"]) == c["text_encoder"].config.vocab_size
    assert len(c["tokenizer_2"]) == c["text_encoder_2"].config.vocab_size


def test_t5_tokenizer_pads_to_512() -> None:
    tok = tiny_kontext_components()["tokenizer_2"]
    ids = tok(
        PROMPT_UNICODE, padding="max_length", max_length=512, truncation=True, return_tensors="pt"
    ).input_ids
    assert ids.shape == (1, 512)
    assert ids.max() < len(tok)
    assert tok.unk_token_id in ids  # characters outside the tiny vocabulary
    assert tok.eos_token_id in ids and ids[0, -1] == tok.pad_token_id == 0
    # Longer prompts truncate to exactly 512, keeping the closing </s>.
    long_ids = tok("word " * 1000, padding="max_length", max_length=512, truncation=True).input_ids
    assert len(long_ids) == 512 and long_ids[-1] == tok.eos_token_id


def test_clip_tokenizer_pads_to_77() -> None:
    tok = tiny_kontext_components()["tokenizer"]
    assert tok.model_max_length == 77
    ids = tok(
        PROMPT_UNICODE, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    assert ids.shape == (1, 77)
    assert ids.max() < len(tok)
    assert ids[0, 0] == tok.bos_token_id
    # Byte-level BPE covers every byte, so unicode never falls back to the unknown token.
    content = tok(PROMPT_UNICODE, add_special_tokens=False).input_ids
    assert content and tok.unk_token_id not in content
