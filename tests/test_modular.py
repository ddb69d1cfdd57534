"""LayerComposer's Modular Diffusers blocks: diffusers' Kontext set with three steps swapped, and
the same image as `LayerComposerPipeline` and `lc render`, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.modular_pipelines import FluxKontextAutoBlocks
from PIL import Image
from typer.testing import CliRunner

from conftest import disc_rgba
from layercomposer.canvas import load_canvas
from layercomposer.cli.main import app
from layercomposer.geometry import Extent
from layercomposer.layers import CanvasLayer, build_layers
from layercomposer.modular import LayerComposerKontextBlocks
from layercomposer.pipeline import LayerComposerPipeline
from layercomposer.tiny import tiny_kontext_components

SWAPPED = {"vae_encoder", "additional_inputs", "prepare_rope_inputs"}


def leaves(blocks, prefix=""):
    """{dotted path: block class name} of every step: a block without sub-blocks, or a swapped
    one whole; where diffusers picks a branch at run time, its image-conditioned Kontext one."""
    found = {}
    for name, block in blocks.sub_blocks.items():
        if getattr(block, "block_trigger_inputs", None):  # an AutoPipelineBlocks: image branch
            block = block.sub_blocks["image_conditioned"]
        if block.sub_blocks and name not in SWAPPED:
            found |= leaves(block, f"{prefix}{name}.")
        else:
            found[f"{prefix}{name}"] = type(block).__name__
    return found


def test_the_blocks_are_kontexts_with_three_swapped():
    ours, theirs = leaves(LayerComposerKontextBlocks()), leaves(FluxKontextAutoBlocks())
    assert list(ours) == list(theirs)  # the same steps in the same order
    differ = {path.rsplit(".", 1)[-1] for path in ours if ours[path] != theirs[path]}
    assert differ == SWAPPED
    assert all(
        ours[path].startswith("LayerComposer") for path in ours if path.endswith(tuple(SWAPPED))
    )


@pytest.fixture(scope="module")
def components():
    return tiny_kontext_components(seed=1)


def modular(components):
    pipe = LayerComposerKontextBlocks().init_pipeline()
    pipe.update_components(**{name: c for name, c in components.items() if c is not None})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ragged(seed: int, size=(48, 40)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, (*size, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(rng.random(size) < 0.6, rng.integers(100, 256, size), 0)
    return rgba


@pytest.mark.parametrize(
    "options",
    [{}, {"encode": "box", "fill": "grey"}, {"num_images_per_prompt": 2, "prompt": ["a", "b"]}],
    ids=["canvas", "box-grey", "batch"],
)
def test_modular_blocks_equal_the_pipeline_bit_for_bit(components, options):
    layers = [
        CanvasLayer(f"l{i}", "subject", i == 0, ragged(i), origin, Extent(192, 96), f"blob{i}")
        for i, origin in enumerate(((8, 20), (80, 30)))
    ]  # a locked and an unlocked layer, overlapping
    common = {
        "prompt": "a photo", "layers": layers, "num_inference_steps": 3, "guidance_scale": 2.5,
        "output_type": "np", **options,
    }  # fmt: skip
    pipe = LayerComposerPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(**common, generator=torch.Generator().manual_seed(7)).images
    got = modular(components)(**common, generator=torch.Generator().manual_seed(7), output="images")
    assert np.asarray(got).shape == expected.shape
    np.testing.assert_array_equal(np.asarray(got), expected)


def test_modular_blocks_render_what_lc_render_writes(tmp_path, make_canvas):
    spec = {
        "prompt": "two discs",
        "size": [128, 96],
        "steps": 2,
        "layers": [
            {"name": "a", "image": "a.png", "position": [40, 48], "lock": True},
            {"name": "b", "image": "b.png", "position": [80, 48]},
        ],
    }
    path = make_canvas(spec, {"a.png": disc_rgba(64), "b.png": disc_rgba(48, (20, 20, 200))})
    result = CliRunner().invoke(
        app, ["render", str(path), "--model", "builtin:tiny", "--mode", "layered", "--seed", "3",
              "-o", str(tmp_path / "out")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    written = np.asarray(Image.open(tmp_path / "out" / "scene" / "3.png"))

    canvas = load_canvas(path)
    images = modular(tiny_kontext_components())(
        prompt=canvas.spec.prompt, layers=build_layers(canvas), num_inference_steps=canvas.spec.steps,
        guidance_scale=canvas.spec.guidance, generator=torch.Generator("cpu").manual_seed(3),
        output="images",
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(images[0]), written)


def test_the_blocks_refuse_a_size_other_than_the_canvas(components):
    layer = CanvasLayer("a", "subject", False, ragged(0), (0, 0), Extent(64, 64), "a")
    with pytest.raises(ValueError, match="canvas's 64x64"):
        modular(components)(prompt="a", layers=[layer], height=128, num_inference_steps=1)
