"""Shared fixtures: small canvases with synthetic RGBA images written into a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "canvases").glob("*.yaml"))


def disc_rgba(size: int, colour=(200, 60, 40)) -> np.ndarray:
    """(size, size, 4) uint8: an opaque disc of `colour` on a transparent square."""
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 <= (size / 2) ** 2
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = np.where(inside, 255, 0)
    return rgba


@pytest.fixture
def make_canvas(tmp_path):
    """Write a canvas file (and any images it needs) into tmp_path; return its path."""

    def make(
        spec: dict | str, images: dict[str, np.ndarray] | None = None, name: str = "scene.yaml"
    ) -> Path:
        for filename, pixels in (images or {}).items():
            target = tmp_path / filename
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(target)
        path = tmp_path / name
        path.write_text(spec if isinstance(spec, str) else plain_yaml(spec))
        return path

    return make


class _NoAliasDumper(yaml.SafeDumper):
    """Writes a value shared twice in full: lc refuses YAML anchors and aliases."""

    def ignore_aliases(self, data) -> bool:
        return True


def plain_yaml(data) -> str:
    """`data` as YAML text with no anchors or aliases, keys in their given order."""
    return yaml.dump(data, Dumper=_NoAliasDumper, sort_keys=False)


@pytest.fixture
def two_discs(make_canvas):
    """A 128x128 canvas with two overlapping discs, the first locked."""
    spec = {
        "prompt": "two discs",
        "size": [128, 128],
        "layers": [
            {"name": "red", "image": "red.png", "position": [48, 64], "lock": True},
            {"name": "blue", "image": "blue.png", "position": [80, 64]},
        ],
    }
    images = {"red.png": disc_rgba(64, (220, 30, 30)), "blue.png": disc_rgba(64, (30, 30, 220))}
    return make_canvas(spec, images)


def tiny_transformer_output(transformer, guidance: float = 2.5):
    """One forward pass of a builtin:tiny transformer on fixed random inputs (to compare weights)."""
    import torch

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return transformer(
            hidden_states=torch.randn(1, 16, 64, generator=g),
            encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
            pooled_projections=torch.randn(1, 32, generator=g),
            timestep=torch.tensor([0.5]),
            guidance=torch.tensor([guidance]),
            img_ids=torch.zeros(16, 3),
            txt_ids=torch.zeros(8, 3),
            return_dict=False,
        )[0]


def stock_kontext(pipe, image, seed: int = 0, steps: int = 2, guidance: float = 3.5):
    """(1, H, W, 3) from diffusers' own Kontext call, at the reference image's size, no resize."""
    import torch
    from PIL import Image

    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    width, height = image.size
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        image=image, prompt="a photo", num_inference_steps=steps, guidance_scale=guidance,
        height=height, width=width, max_area=width * height, _auto_resize=False,
        output_type="np", generator=torch.Generator().manual_seed(seed),
    ).images  # fmt: skip


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """A tiny layered training dataset (tests/train_data.py), built once, read by the trainers."""
    from train_data import make_dataset

    root = tmp_path_factory.mktemp("data")
    make_dataset(root)
    return root
