"""LayerComposerPipeline against diffusers' own FluxKontextPipeline, and what the transformer sees."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from diffusers import FluxKontextPipeline
from diffusers.pipelines.flux.pipeline_output import FluxPipelineOutput
from diffusers.utils import BaseOutput
from PIL import Image

from conftest import disc_rgba, stock_kontext
from layercomposer.canvas import load_canvas
from layercomposer.geometry import Extent
from layercomposer.latents import LatentCache, pack_latents, unpack_latents
from layercomposer.layers import CanvasLayer, build_layers, flatten
from layercomposer.pipeline import LayerComposerOutput, LayerComposerPipeline
from layercomposer.tiny import tiny_kontext_components
from layercomposer.tokens import TEXT_TOKENS

STEPS = dict(num_inference_steps=3, guidance_scale=2.5)


@pytest.fixture(scope="module")
def components():
    return tiny_kontext_components(seed=1)


@pytest.fixture
def pipe(components):
    pipe = LayerComposerPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def stock(components):
    pipe = FluxKontextPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generator(seed=7):
    return torch.Generator().manual_seed(seed)


def kontext(components, image: np.ndarray) -> np.ndarray:
    """Stock FLUX.1 Kontext, reference image at the canvas size (no auto-resize)."""
    steps, guidance = STEPS["num_inference_steps"], STEPS["guidance_scale"]
    return stock_kontext(FluxKontextPipeline(**components), image, 7, steps, guidance)


def opaque_layer(width=96, height=64, lock=False, seed=0) -> CanvasLayer:
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((height, width), 255, np.uint8)])
    return CanvasLayer("full", "subject", lock, rgba, (0, 0), Extent(width, height), f"full{seed}")


def render(pipe, layers, **kwargs):
    """A layered canvas call with the test's steps, seed 7 and numpy output unless overridden."""
    arguments = dict(
        prompt="a photo", layers=layers, mode="layered", generator=generator(), output_type="np"
    )
    return pipe(**{**arguments, **STEPS, **kwargs})


# --- diffusers' contract -----------------------------------------------------------------------


def test_call_takes_every_kontext_argument_with_its_default_and_adds_the_canvas_by_keyword():
    ours = inspect.signature(LayerComposerPipeline.__call__).parameters
    theirs = inspect.signature(FluxKontextPipeline.__call__).parameters
    assert list(ours)[: len(theirs)] == list(theirs)  # same names, same positions
    for name, parameter in theirs.items():
        assert ours[name].kind == parameter.kind, name
        assert ours[name].default == parameter.default, name
    added = {name: p for name, p in ours.items() if name not in theirs}
    assert set(added) == {"layers", "canvas", "mode", "encode", "fill"}
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in added.values())


def stock_cases(components):
    """(name, call arguments) pairs covering Kontext's options, all on one 64x48 reference."""
    image = Image.fromarray(opaque_layer(64, 48).rgba[..., :3])
    base = dict(
        image=image, prompt="a photo", num_inference_steps=2, guidance_scale=3.0, height=48,
        width=64, max_area=64 * 48, _auto_resize=False, output_type="np",
    )  # fmt: skip
    seen = []

    def callback(pipe, step, timestep, tensors):
        seen.append(step)
        return {"latents": tensors["latents"] * 0.5} if step == 0 else {}

    with torch.no_grad():
        embeds = FluxKontextPipeline(**components).encode_prompt("a photo")
    latents = pack_latents(torch.randn(1, 16, 6, 8, generator=generator(3)))
    return [
        ("plain", base),
        ("tuple", {**base, "return_dict": False}),
        ("true cfg", {**base, "negative_prompt": "blurry", "true_cfg_scale": 2.0}),
        ("prompt list x2", {**base, "prompt": ["a photo", "a cat"], "num_images_per_prompt": 2}),
        ("prompt_2", {**base, "prompt_2": "another prompt"}),
        ("embeds", {**base, "prompt": None, "prompt_embeds": embeds[0],
                    "pooled_prompt_embeds": embeds[1]}),
        ("latents", {**base, "latents": latents}),
        ("sigmas", {**base, "sigmas": [1.0, 0.4]}),
        ("callback", {**base, "callback_on_step_end": callback,
                      "callback_on_step_end_tensor_inputs": ["latents", "prompt_embeds"]}),
        ("latent output", {**base, "output_type": "latent"}),
        ("auto resize", {**base, "_auto_resize": True, "max_area": 96 * 64}),
        ("text to image", {**base, "image": None, "height": 32, "width": 48, "max_area": 48 * 32}),
        ("72x57", {**base, "height": 72, "width": 57, "max_area": 72 * 57}),
    ]  # fmt: skip


def test_without_a_canvas_it_is_stock_kontext_bit_for_bit(components, pipe, stock):
    for name, arguments in stock_cases(components):
        expected = stock(**arguments, generator=generator())
        got = pipe(**arguments, generator=generator())
        assert type(got) is type(expected), name
        expected, got = expected[0], got[0]
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected), err_msg=name)


# --- the canvas call -------------------------------------------------------------------------


def test_collage_mode_equals_stock_kontext_on_the_collage(components, pipe, two_discs):
    layers = build_layers(load_canvas(two_discs))
    ours = render(pipe, layers, mode="collage")
    expected = kontext(components, flatten(layers))
    np.testing.assert_array_equal(ours.images, expected)
    assert ours.mode == "collage" and ours.tokens["conditioning"] == 64


def test_one_opaque_unlocked_canvas_layer_equals_kontext_on_that_image(components, pipe):
    layer = opaque_layer()
    ours = render(pipe, [layer])
    expected = kontext(components, layer.rgba[..., :3])
    np.testing.assert_array_equal(ours.images, expected)


def test_locking_changes_the_image(pipe):
    free = render(pipe, [opaque_layer()])
    locked = render(pipe, [opaque_layer(lock=True)])
    assert np.abs(free.images - locked.images).max() > 0


def test_the_output_is_a_diffusers_output_and_return_dict_false_a_tuple(pipe, two_discs):
    layers = build_layers(load_canvas(two_discs))
    out = render(pipe, layers)
    assert isinstance(out, FluxPipelineOutput) and isinstance(out, BaseOutput)
    assert isinstance(out, LayerComposerOutput)
    np.testing.assert_array_equal(out[0], out.images)  # indexable like any diffusers output
    assert out["mode"] == "layered" and set(out.timings) == {"text", "encode", "denoise", "decode"}
    assert out.cache["misses"] + out.cache["hits"] == len(layers)
    (images,) = render(pipe, layers, return_dict=False)
    np.testing.assert_array_equal(images, out.images)


def test_pil_output_is_lc_renders_rounding_of_the_numpy_output(pipe, two_discs):
    layers = build_layers(load_canvas(two_discs))
    pixels = np.clip(np.rint(render(pipe, layers).images[0] * 255), 0, 255).astype(np.uint8)
    image = render(pipe, layers, output_type="pil").images[0]
    assert image.size == (128, 128)
    np.testing.assert_array_equal(np.asarray(image), pixels)


class TransformerSpy:
    """Wraps the transformer's forward and records what it was given."""

    def __init__(self, transformer):
        self.calls = []
        self.forward = transformer.forward

        def spy(*args, **kwargs):
            self.calls.append(
                {
                    "hidden": kwargs["hidden_states"].shape,
                    "img_ids": kwargs["img_ids"].clone(),
                    "text": kwargs["encoder_hidden_states"].clone(),
                    "attention": kwargs["joint_attention_kwargs"],
                }
            )
            return self.forward(*args, **kwargs)

        transformer.forward = spy


def slow_expected_ids(layers, px=16):
    """Noisy [0, y, x] over the grid, then each layer's centre-sampled cells, locked 0, free 1..k."""
    grid_w, grid_h = layers[0].canvas_size.width // px, layers[0].canvas_size.height // px
    rows = [[0, y, x] for y in range(grid_h) for x in range(grid_w)]
    free = 0
    for layer in layers:
        index = 0 if layer.lock else (free := free + 1)
        for y in range(grid_h):
            for x in range(grid_w):
                if layer.rgba[px * y + px // 2, px * x + px // 2, 3] / 255 > 0.5:
                    rows.append([index, y, x])
    return np.array(rows)


@pytest.fixture
def three_layers(make_canvas):
    spec = {
        "prompt": "three",
        "size": [160, 128],
        "layers": [
            {"name": "a", "image": "a.png", "position": [50, 64], "lock": True},
            {"name": "b", "image": "b.png", "position": [80, 64]},  # overlaps a
            {"name": "c", "image": "c.png", "position": [120, 60], "scale": 0.75},  # overlaps b
        ],
    }
    images = {
        "a.png": disc_rgba(64),
        "b.png": disc_rgba(64, (0, 0, 255)),
        "c.png": disc_rgba(64, (0, 255, 0)),
    }
    return build_layers(load_canvas(make_canvas(spec, images)))


def test_transformer_gets_exactly_the_planned_ids_and_length(three_layers):
    pipe = LayerComposerPipeline(**tiny_kontext_components())
    spy = TransformerSpy(pipe.transformer)
    out = render(pipe, three_layers, prompt="three", num_inference_steps=2)

    expected = slow_expected_ids(three_layers)
    assert len(spy.calls) == 2
    for call in spy.calls:
        assert call["hidden"] == (1, len(expected), 64)
        np.testing.assert_array_equal(call["img_ids"].numpy(), expected)
    assert out.tokens["total"] == TEXT_TOKENS + len(expected)
    assert set(expected[80:, 0]) == {0, 1, 2}  # a locked (0), b and c free (1, 2)


def test_true_cfg_runs_the_negative_prompt_on_the_same_canvas(pipe, three_layers):
    spy = TransformerSpy(pipe.transformer)
    plain = render(pipe, three_layers)
    assert len(spy.calls) == 3
    spy.calls.clear()
    cfg = render(pipe, three_layers, negative_prompt="blurry", true_cfg_scale=3.0)
    assert len(spy.calls) == 6  # a positive and a negative pass per step
    expected = slow_expected_ids(three_layers)
    for call in spy.calls:
        np.testing.assert_array_equal(call["img_ids"].numpy(), expected)
    assert not torch.equal(spy.calls[0]["text"], spy.calls[1]["text"])
    assert np.abs(cfg.images - plain.images).max() > 1e-3
    # A negative prompt without a scale above 1 changes nothing, as in Kontext.
    np.testing.assert_array_equal(
        render(pipe, three_layers, negative_prompt="blurry").images, plain.images
    )


def test_prompt_lists_and_images_per_prompt_share_the_canvas(pipe, two_discs):
    layers = build_layers(load_canvas(two_discs))
    single = {p: render(pipe, layers, prompt=p, generator=generator(s)).images[0]
              for p, s in (("a photo", 1), ("a cat", 2))}  # fmt: skip
    out = render(pipe, layers, prompt=["a photo", "a cat"], generator=[generator(1), generator(2)])
    assert out.images.shape == (2, 128, 128, 3)
    np.testing.assert_allclose(out.images[0], single["a photo"], atol=1e-5)
    np.testing.assert_allclose(out.images[1], single["a cat"], atol=1e-5)
    assert np.abs(out.images[0] - out.images[1]).max() > 1e-3
    four = render(pipe, layers, prompt=["a photo", "a cat"], num_images_per_prompt=2)
    assert four.images.shape == (4, 128, 128, 3)
    assert four.tokens["conditioning"] == out.tokens["conditioning"]  # per image, not per batch


def test_precomputed_embeddings_and_latents_give_the_same_image(pipe, two_discs):
    layers = build_layers(load_canvas(two_discs))
    reference = render(pipe, layers)
    with torch.no_grad():  # embeddings that carry autograd state round differently (in Kontext too)
        embeds, pooled, _ = pipe.encode_prompt("a photo", max_sequence_length=512)
    given = render(pipe, layers, prompt=None, prompt_embeds=embeds, pooled_prompt_embeds=pooled)
    np.testing.assert_array_equal(given.images, reference.images)
    # The noise the seed gives, drawn by hand: (1, 16, H/8, W/8), packed 2x2.
    noise = pack_latents(torch.randn(1, 16, 16, 16, generator=generator()))
    seeded = render(pipe, layers, latents=noise, generator=None)
    np.testing.assert_array_equal(seeded.images, reference.images)
    latent = render(pipe, layers, output_type="latent").images
    assert latent.shape == (1, 64, 64)  # the packed noisy tokens, no conditioning


def test_step_callback_sees_and_changes_the_tensors_and_can_interrupt(pipe, two_discs):
    layers = build_layers(load_canvas(two_discs))
    reference = render(pipe, layers)
    seen = []

    def watch(pipe, step, timestep, tensors):
        seen.append((step, tuple(tensors["latents"].shape), tuple(tensors["prompt_embeds"].shape)))
        return {}

    watched = render(
        pipe, layers, callback_on_step_end=watch,
        callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"],
    )  # fmt: skip
    assert seen == [(i, (1, 64, 64), (1, TEXT_TOKENS, 32)) for i in range(3)]
    np.testing.assert_array_equal(watched.images, reference.images)

    def zero(pipe, step, timestep, tensors):
        return {"latents": torch.zeros_like(tensors["latents"])} if step == 2 else {}

    zeroed = render(pipe, layers, callback_on_step_end=zero, output_type="latent").images
    assert torch.count_nonzero(zeroed) == 0

    spy = TransformerSpy(pipe.transformer)

    def stop(pipe, step, timestep, tensors):
        pipe._interrupt = True
        return {}

    stopped = render(pipe, layers, callback_on_step_end=stop)
    assert len(spy.calls) == 1 and np.abs(stopped.images - reference.images).max() > 0


def test_joint_attention_kwargs_reach_the_transformer(pipe, two_discs):
    layers = build_layers(load_canvas(two_discs))
    spy = TransformerSpy(pipe.transformer)
    length = TEXT_TOKENS + 64 + render(pipe, layers, num_inference_steps=1).tokens["conditioning"]
    mask = torch.ones(1, length, dtype=torch.bool)
    render(pipe, layers, num_inference_steps=1, joint_attention_kwargs={"attention_mask": mask})
    assert spy.calls[-1]["attention"]["attention_mask"] is mask


def test_a_canvas_file_gives_the_same_image_as_its_layers(pipe, two_discs):
    layers = build_layers(load_canvas(two_discs))
    by_layers = render(pipe, layers)
    by_path = render(pipe, None, canvas=two_discs)
    by_canvas = render(pipe, None, canvas=load_canvas(two_discs))
    np.testing.assert_array_equal(by_path.images, by_layers.images)
    np.testing.assert_array_equal(by_canvas.images, by_layers.images)


def test_the_token_size_follows_the_vae_scale_factor():
    """diffusers' own dummy Kontext (a 1-block VAE: 2-px tokens) renders a layered canvas."""
    from diffusers_suite.pipelines.flux import test_pipeline_flux_kontext as pinned

    pipe = LayerComposerPipeline(**pinned.FluxKontextPipelineFastTests().get_dummy_components())
    pipe.set_progress_bar_config(disable=True)
    assert pipe.token_px == 2
    half = np.zeros((12, 16, 4), np.uint8)
    half[:, :8] = (200, 30, 30, 255)  # the left half is opaque
    layers = [
        CanvasLayer("bg", "background", True, opaque_layer(16, 12).rgba, (0, 0), Extent(16, 12), "b"),
        CanvasLayer("left", "subject", False, half, (0, 0), Extent(16, 12), "left"),
    ]  # fmt: skip
    spy = TransformerSpy(pipe.transformer)
    out = pipe(
        prompt="a photo", layers=layers, num_inference_steps=2, max_sequence_length=48,
        output_type="np", generator=generator(),
    )  # fmt: skip
    expected = slow_expected_ids(layers, px=2)
    assert len(expected) == 48 + 48 + 24  # noisy 8x6, the background 8x6, the left half 4x6
    assert spy.calls[0]["hidden"] == (1, len(expected), 4)
    np.testing.assert_array_equal(spy.calls[0]["img_ids"].numpy(), expected)
    assert out.images.shape == (1, 12, 16, 3) and out.tokens["conditioning"] == 72


def test_box_encoding_gives_the_same_ids_and_equals_canvas_when_the_box_is_the_canvas(
    pipe, two_discs
):
    layers = build_layers(load_canvas(two_discs))
    box_tokens, box_ids = pipe.encode_layer(layers[1], 1, encode="box")
    full_tokens, full_ids = pipe.encode_layer(layers[1], 1, encode="canvas")
    np.testing.assert_array_equal(box_ids, full_ids)
    assert box_tokens.shape == full_tokens.shape
    whole = opaque_layer(seed=3)  # its box plus margin is the whole canvas
    torch.testing.assert_close(
        pipe.encode_layer(whole, 1, "box")[0], pipe.encode_layer(whole, 1, "canvas")[0]
    )


def test_moving_a_layer_by_whole_tokens_hits_the_cache(pipe, make_canvas):
    pipe.latent_cache = LatentCache()

    def layer_at(x):
        spec = {
            "prompt": "p",
            "size": [256, 128],
            "layers": [{"name": "a", "image": "a.png", "position": [x, 64]}],
        }
        return build_layers(load_canvas(make_canvas(spec, {"a.png": disc_rgba(48)})))[0]

    first, first_ids = pipe.encode_layer(layer_at(96), 1, encode="box")
    moved, moved_ids = pipe.encode_layer(layer_at(96 + 32), 1, encode="box")
    assert (pipe.latent_cache.hits, pipe.latent_cache.misses) == (1, 1)
    torch.testing.assert_close(first, moved, rtol=0, atol=0)
    np.testing.assert_array_equal(moved_ids[:, 2], first_ids[:, 2] + 2)  # two tokens to the right
    pipe.encode_layer(layer_at(96 + 8), 1, encode="box")  # half a token: a different encode
    assert pipe.latent_cache.misses == 2
    pipe.encode_layer(layer_at(96), 1, encode="canvas")  # canvas encodes depend on the position
    pipe.encode_layer(layer_at(96 + 32), 1, encode="canvas")
    assert pipe.latent_cache.misses == 4


def test_disk_cache_round_trip(tmp_path, pipe, two_discs):
    layers = build_layers(load_canvas(two_discs))
    pipe.latent_cache = LatentCache(tmp_path / "cache")
    written, _ = pipe.encode_layer(layers[0], 0)
    pipe.latent_cache = LatentCache(tmp_path / "cache")  # a new process: memory empty
    read, _ = pipe.encode_layer(layers[0], 0)
    assert pipe.latent_cache.hits == 1
    torch.testing.assert_close(written, read, rtol=0, atol=0)


def test_pack_matches_diffusers_and_unpack_inverts_it():
    latents = torch.randn(2, 16, 8, 12)
    np.testing.assert_array_equal(
        pack_latents(latents).numpy(),
        FluxKontextPipeline._pack_latents(latents, 2, 16, 8, 12).numpy(),
    )
    torch.testing.assert_close(unpack_latents(pack_latents(latents), 4, 6), latents, rtol=0, atol=0)


def test_auto_mode_without_lora_is_collage_and_says_why(pipe):
    out = render(pipe, [opaque_layer()], mode="auto", num_inference_steps=1)
    assert out.mode == "collage" and "LoRA" in out.mode_reason


def test_bad_inputs_are_refused(pipe, two_discs):
    layers = [opaque_layer()]
    with pytest.raises(ValueError, match="mode"):
        pipe(prompt="a photo", layers=layers, mode="stacked")
    with pytest.raises(ValueError, match="empty"):
        pipe(prompt="a photo", layers=[])
    with pytest.raises(ValueError, match="not both"):
        pipe(image=Image.new("RGB", (96, 64)), prompt="a photo", layers=layers)
    with pytest.raises(ValueError, match="not both"):
        pipe(prompt="a photo", layers=layers, canvas=two_discs)
    with pytest.raises(ValueError, match="canvas's 64x96"):
        pipe(prompt="a photo", layers=layers, height=128, width=128)
    with pytest.raises(ValueError, match="prompt="):
        pipe("a photo", layers=layers)  # the prompt-first call of lc 0.1
    with pytest.raises(ValueError, match="multiple of 16"):
        pipe(prompt="a photo", layers=[opaque_layer(width=88)])
