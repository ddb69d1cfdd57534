"""A tiny layered dataset made from the example cut-outs (real photographs), for training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from layercomposer.layers import resize_rgba
from layercomposer.train.dataset import (
    DatasetIndex,
    ImageRecord,
    LayerRecord,
    SceneRecord,
    split_layers,
    write_index,
)

REPO = Path(__file__).resolve().parents[1]
PEOPLE = {"collins": "canvases/images/collins.png", "hopper": "canvases/images/hopper.png"}


def cutout(name: str, height: int) -> np.ndarray:
    with Image.open(REPO / PEOPLE[name]) as image:
        rgba = np.asarray(image.convert("RGBA"))
    width = round(rgba.shape[1] * height / rgba.shape[0])
    return resize_rgba(rgba, (width, height))


def make_dataset(
    root: Path, resolution: int = 64, scenes: int = 2, images: int = 3, seed: int = 0
) -> DatasetIndex:
    """Scenes of two people on a coloured background, each image with its own poses and light."""
    rng = np.random.default_rng(seed)
    scene_records = []
    for s in range(scenes):
        image_records = []
        for i in range(images):
            base = rng.integers(40, 215, 3)
            image = np.empty((resolution, resolution, 3), np.float32)
            image[:] = base
            image += np.linspace(-30, 30, resolution)[
                None, :, None
            ]  # a gradient, so backgrounds differ
            masks = {}
            for p, name in enumerate(PEOPLE):
                person = cutout(name, int(rng.integers(resolution // 3, resolution // 2)))
                h, w = person.shape[:2]
                x = int(rng.integers(0, resolution // 2 - w // 2)) + p * (resolution // 2)
                x = min(x, resolution - w)
                y = resolution - h
                alpha = person[..., 3:].astype(np.float32) / 255
                region = image[y : y + h, x : x + w]
                region[:] = person[..., :3] * alpha + region * (1 - alpha)
                mask = np.zeros((resolution, resolution), np.uint8)
                mask[y : y + h, x : x + w] = person[..., 3]
                masks[f"scene{s}/{name}"] = mask
            pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
            folder = root / f"scene{s}"
            folder.mkdir(parents=True, exist_ok=True)
            file = f"scene{s}/img{i}.png"
            Image.fromarray(pixels).save(root / file)
            layers = []
            for identity, (rgba, box) in split_layers(pixels, masks).items():
                layer_file = f"scene{s}/img{i}.{identity.rsplit('/', 1)[-1]}.png"
                Image.fromarray(rgba, "RGBA").save(root / layer_file)
                layers.append(LayerRecord(identity, layer_file, box))
            image_records.append(
                ImageRecord(file, "two colleagues standing together", tuple(layers))
            )
        scene_records.append(SceneRecord(f"scene{s}", tuple(image_records)))
    index = DatasetIndex(root, resolution, tuple(scene_records))
    write_index(index)
    return index
