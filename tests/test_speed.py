"""The render path's speed: caches before the first step, and the transformer's speed options."""

from __future__ import annotations

import json
from copy import deepcopy
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import FluxKontextPipeline
from PIL import Image
from typer.testing import CliRunner

from conftest import disc_rgba
from layercomposer import speed
from layercomposer.cli.main import app
from layercomposer.geometry import Box, Extent
from layercomposer.latents import LatentCache
from layercomposer.layers import CanvasLayer
from layercomposer.pipeline import LayerComposerPipeline
from layercomposer.speed import SpeedOptions
from layercomposer.tiny import tiny_kontext_components
from layercomposer.tokens import valid_token_mask

STEPS = dict(num_inference_steps=3, guidance_scale=2.5, output_type="np")
TINY = ["--model", "builtin:tiny"]


def lc(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def tiny_canvas(make_canvas):
    spec = {
        "prompt": "two discs",
        "size": [128, 128],
        "steps": 2,
        "layers": [{"name": "a", "image": "a.png", "position": [48, 64]}],
    }
    return make_canvas(spec, {"a.png": disc_rgba(64)}, name="scene0.yaml")


@pytest.fixture(scope="module")
def components():
    return tiny_kontext_components(seed=2)


def blob(seed: int, size=(48, 40)) -> np.ndarray:
    """(h, w, 4) uint8 random colours with a ragged random alpha."""
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, (*size, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(rng.random(size) < 0.6, rng.integers(100, 256, size), 0)
    return rgba


def layers(origins=((8, 20), (80, 30))) -> list[CanvasLayer]:
    """Two ragged layers on a 192x96 canvas (the second one's encode box lies inside it in x)."""
    return [
        CanvasLayer(f"l{i}", "subject", False, blob(i), origin, Extent(192, 96), f"blob{i}")
        for i, origin in enumerate(origins)
    ]


def render(pipe, canvas_layers, seed=5, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        prompt="a photo", layers=canvas_layers, generator=torch.Generator().manual_seed(seed),
        **STEPS, **kwargs,
    )  # fmt: skip


# --- canvas preparation -----------------------------------------------------------------------


@pytest.mark.parametrize("origin", [(0, 0), (-13, 7), (100, -30), (85, 60), (-60, -50), (300, 0)])
def test_token_mask_pixels_and_crops_match_the_canvas_sized_layer(origin):
    layer = CanvasLayer("x", "subject", False, blob(3), origin, Extent(128, 96), "x")
    full = layer.rgba  # the canvas-sized reference, built the slow way
    np.testing.assert_array_equal(layer.token_mask, valid_token_mask(full[..., 3] / 255.0))
    assert layer.visible_pixels == np.count_nonzero(full[..., 3])
    box = Box(16, 32, 80, 96)
    np.testing.assert_array_equal(layer.crop(box), full[32:96, 16:80])


# --- caches before the first step -------------------------------------------------------------


def test_prompt_embeddings_are_cached_per_prompt_and_encoders(components, monkeypatch):
    pipe = LayerComposerPipeline(**components)
    calls = []
    encode = pipe.encode_prompt
    monkeypatch.setattr(pipe, "encode_prompt", lambda **kw: calls.append(kw) or encode(**kw))

    first, hit = pipe.encode_prompt_cached("a photo")
    assert not hit
    again, hit = pipe.encode_prompt_cached("a photo")
    assert hit and len(calls) == 1 and all(a is b for a, b in zip(first, again, strict=True))
    assert not pipe.encode_prompt_cached("another photo")[1]
    assert not pipe.encode_prompt_cached("a photo", max_sequence_length=256)[1]
    other = deepcopy(pipe.text_encoder_2)  # another encoder object, with other weights
    with torch.no_grad():
        other.shared.weight.add_(1.0)
    pipe.text_encoder_2 = other
    fresh, hit = pipe.encode_prompt_cached("a photo")
    assert not hit and not torch.equal(fresh[0], first[0])


def test_second_render_hits_both_caches_and_gives_the_same_image(components):
    pipe = LayerComposerPipeline(**components)
    first, second = render(pipe, layers()), render(pipe, layers())
    assert not first.prompt_cached and second.prompt_cached
    assert first.cache["misses"] == 2 and second.cache == {"hits": 2, "misses": 0}
    np.testing.assert_array_equal(first.images, second.images)


def test_prepare_after_moving_a_layer_by_whole_tokens_encodes_nothing_with_box(components):
    pipe = LayerComposerPipeline(**components)
    pipe.latent_cache = LatentCache()
    before = pipe.prepare("a photo", layers(), encode="box")
    moved = layers()
    moved[1] = replace(moved[1], origin=(moved[1].origin[0] - 32, moved[1].origin[1]))
    misses = pipe.latent_cache.misses
    after = pipe.prepare("a photo", moved, encode="box")
    assert pipe.latent_cache.misses == misses and after.prompt_cached
    torch.testing.assert_close(after.tokens, before.tokens, rtol=0, atol=0)
    split = int(moved[0].token_mask.sum())
    assert torch.equal(after.ids[split:, 2], before.ids[split:, 2] - 2)  # two tokens left


def test_a_key_mask_equals_dropping_the_masked_tokens(components):
    """Why padded batches would be exact (docs/benchmarks.md says why lc doesn't batch)."""
    transformer = components["transformer"]
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, 40, 64, generator=generator)
    text = torch.randn(1, 8, 32, generator=generator)
    ids = torch.randint(0, 6, (40, 3)).float()
    common = dict(
        encoder_hidden_states=text, pooled_projections=torch.randn(1, 32, generator=generator),
        timestep=torch.tensor([0.5]), guidance=torch.tensor([2.5]), txt_ids=torch.zeros(8, 3),
        return_dict=False,
    )  # fmt: skip
    with torch.no_grad():
        dropped = transformer(hidden_states=hidden[:, :30], img_ids=ids[:30], **common)[0]
        mask = torch.ones(1, 8 + 40, dtype=torch.bool)
        mask[:, 8 + 30 :] = False  # the last 10 image tokens are padding
        masked = transformer(
            hidden_states=hidden, img_ids=ids, joint_attention_kwargs={"attention_mask": mask},
            **common,
        )[0]  # fmt: skip
    torch.testing.assert_close(masked[:, :30], dropped, rtol=1e-5, atol=1e-5)


# --- speed options ----------------------------------------------------------------------------


def own_transformer(components) -> LayerComposerPipeline:
    """A pipeline of the shared components but with its own copy of the transformer."""
    return LayerComposerPipeline(
        **{**components, "transformer": deepcopy(components["transformer"])}
    )


def test_compile_gives_the_same_image(components, monkeypatch):
    monkeypatch.setattr(speed, "COMPILE_BACKEND", "eager")  # dynamo's tracing, without codegen
    torch._dynamo.reset()
    compiled = own_transformer(components)
    speed.apply_speed_options(compiled.transformer, SpeedOptions(compile=True))
    assert compiled.transformer.transformer_blocks[0]._compiled_call_impl is not None
    reference = render(LayerComposerPipeline(**components), layers()).images
    np.testing.assert_allclose(render(compiled, layers()).images, reference, atol=1e-5)


def test_first_block_cache_skips_steps_only_past_its_threshold(components):
    reference = render(LayerComposerPipeline(**components), layers())
    assert reference.first_block_cache is None
    pipe = own_transformer(components)

    speed.apply_speed_options(pipe.transformer, SpeedOptions(first_block_cache=1e-9))
    every = render(pipe, layers())
    assert every.first_block_cache == {"threshold": 1e-9, "steps": 3, "full_steps": 3}
    np.testing.assert_array_equal(every.images, reference.images)

    pipe.transformer.disable_cache()
    speed.apply_speed_options(pipe.transformer, SpeedOptions(first_block_cache=1e9))
    first_only = render(pipe, layers())
    assert first_only.first_block_cache["full_steps"] == 1  # only the first step runs in full
    assert np.abs(first_only.images - reference.images).max() > 0
    again = render(pipe, layers())  # the cache starts afresh for every render
    np.testing.assert_array_equal(again.images, first_only.images)


def test_first_block_cache_keeps_true_cfg_passes_apart_and_works_without_a_canvas(components):
    """Kontext's loop opens no cache context (stock Kontext refuses a first-block cache); lc's
    names the positive pass "cond" and true CFG's negative pass "uncond", as FluxPipeline does."""
    cfg = dict(negative_prompt="blurry", true_cfg_scale=3.0)
    reference = render(LayerComposerPipeline(**components), layers(), **cfg)
    pipe = own_transformer(components)
    speed.apply_speed_options(pipe.transformer, SpeedOptions(first_block_cache=1e-9))
    every = render(pipe, layers(), **cfg)
    assert every.first_block_cache == {"threshold": 1e-9, "steps": 3, "full_steps": 3}
    np.testing.assert_array_equal(every.images, reference.images)

    image = Image.fromarray(blob(0, (64, 64))[..., :3])
    plain = dict(
        image=image, prompt="a photo", height=64, width=64, max_area=64 * 64,
        _auto_resize=False, **STEPS,
    )  # fmt: skip
    stock = FluxKontextPipeline(**components)
    stock.set_progress_bar_config(disable=True)
    expected = stock(**plain, generator=torch.Generator().manual_seed(5)).images
    np.testing.assert_array_equal(
        pipe(**plain, generator=torch.Generator().manual_seed(5)).images, expected
    )
    with pytest.raises(ValueError, match="cache context"):  # why lc opens one
        FluxKontextPipeline(**{**components, "transformer": pipe.transformer})(
            **plain, generator=torch.Generator().manual_seed(5)
        )


def test_speed_options_are_recorded_and_change_the_inputs_hash(tmp_path, make_canvas):
    canvas = tiny_canvas(make_canvas)
    plain = lc("render", canvas, *TINY, "-o", tmp_path)
    assert plain.exit_code == 0, plain.output
    manifest = json.loads((tmp_path / "scene0" / "0.json").read_text())
    assert "speed" not in manifest["inputs"] and manifest["first_block_cache"] is None

    cached = lc("render", canvas, *TINY, "-o", tmp_path, "--first-block-cache", "0.2", "--resume")
    assert cached.exit_code == 0 and "rendered" in cached.output  # not skipped: other inputs
    manifest = json.loads((tmp_path / "scene0" / "0.json").read_text())
    assert manifest["inputs"]["speed"]["first_block_cache"] == 0.2
    assert manifest["first_block_cache"]["steps"] == 2
    again = lc("render", "--from-manifest", tmp_path / "scene0" / "0.json", "-o", tmp_path / "re")
    assert again.exit_code == 0 and "identical" in again.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--first-block-cache", "0"], "above 0"),
        (["--quantize", "int4"], "int8"),
        (["--quantize", "fp8", "--device", "cpu"], "compute capability"),
    ],
)
def test_bad_speed_options_are_usage_errors(tmp_path, make_canvas, args, message):
    canvas = tiny_canvas(make_canvas)
    result = lc("render", canvas, *TINY, "-o", tmp_path, *args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_int8_quantizes_the_linear_weights_and_keeps_the_image_close(components):
    pytest.importorskip("torchao")
    small = own_transformer(components)
    speed.quantize_transformer(small.transformer, "int8")
    weight = small.transformer.transformer_blocks[0].attn.to_q.weight
    assert type(weight) is not torch.nn.Parameter  # a torchao int8 tensor subclass
    reference = render(LayerComposerPipeline(**components), layers()).images
    quantized = render(small, layers()).images
    assert np.abs(quantized - reference).max() < 0.1  # int8 weights: a small, bounded change
