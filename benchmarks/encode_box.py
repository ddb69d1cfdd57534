"""How far a layer's box encode (+ margin) is from the paper's full-canvas encode, and how fast.

    python benchmarks/encode_box.py                       # builtin:tiny, every example canvas
    python benchmarks/encode_box.py --model black-forest-labs/FLUX.1-Kontext-dev --device cuda

Prints one row per layer: kept tokens, the box's share of the canvas, the relative error of the
kept tokens (mean and max |box - canvas| / mean |canvas|), and the encode times. Random-weight
VAEs exaggerate the error (their GroupNorm and attention mix the whole image arbitrarily); run
it on the real VAE before trusting `--encode box` for final images.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from layercomposer.canvas import load_canvas
from layercomposer.latents import LatentCache
from layercomposer.layers import build_layers
from layercomposer.models import load_pipeline

REPO = Path(__file__).resolve().parents[1]


def timed_encode(pipe, layer, encode):
    pipe.latent_cache = LatentCache()  # no hits: time the VAE itself
    started = time.perf_counter()
    tokens, _ = pipe.encode_layer(layer, 1, encode)
    if tokens.device.type == "cuda":
        torch.cuda.synchronize()
    return tokens.float(), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="builtin:tiny")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument(
        "canvases", nargs="*", default=sorted(str(p) for p in (REPO / "canvases").glob("*.yaml"))
    )
    args = parser.parse_args()
    pipe, info = load_pipeline(args.model, dtype=args.dtype, device=args.device)
    print(f"model {info.id}, device {pipe._execution_device}, dtype {pipe.vae.dtype}")
    print(
        f"{'canvas':<20} {'layer':<12} {'tokens':>6} {'box/canvas':>10} {'mean err':>9} {'max err':>8} {'t box':>7} {'t canvas':>8}"
    )
    for path in args.canvases:
        layers = build_layers(load_canvas(path))
        for layer in layers:
            box = pipe.encode_box(layer, "box")
            box_tokens, box_seconds = timed_encode(pipe, layer, "box")
            canvas_tokens, canvas_seconds = timed_encode(pipe, layer, "canvas")
            scale = canvas_tokens.abs().mean()
            error = (box_tokens - canvas_tokens).abs()
            share = box.width * box.height / layer.canvas_size.area
            print(
                f"{Path(path).stem:<20} {layer.name:<12} {box_tokens.shape[1]:>6} {share:>10.2f} "
                f"{float(error.mean() / scale):>9.3f} {float(error.max() / scale):>8.3f} "
                f"{box_seconds:>6.3f}s {canvas_seconds:>7.3f}s"
            )


if __name__ == "__main__":
    main()
