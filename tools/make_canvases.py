#!/usr/bin/env python3
"""Regenerate the images of the example canvases in `canvases/images/`, and preview the canvases.

The example canvases (`canvases/*.yaml`) use real public-domain photographs that Python
packages ship (see `canvases/SOURCES.md` for each file's origin and licence):

* `skimage.data.astronaut()`  -- Eileen Collins, NASA portrait (public domain)
* matplotlib's `mpl-data/sample_data/grace_hopper.jpg` -- Grace Hopper, US Navy portrait
* `skimage.data.rocket()` and `skimage.data.hubble_deep_field()` -- backgrounds

Each person is cut out with a real person-segmentation model: MediaPipe's selfie-segmentation
model (`selfie_segmentation.tflite`, the "general" 256x256 model), run through the MediaPipe
Tasks `ImageSegmenter`. Its soft mask is reduced to the largest connected component with its
holes filled, refined with a guided filter (guided by the photo, so the edge follows hair and
shoulders rather than the model's 256-px grid), the edge colours are decontaminated (no light
rim of studio backdrop), and the cut-out is cropped to the subject's bounding box. The steps
are listed in `canvases/SOURCES.md`. The canvas YAML files are written by hand; this script
only makes their images.

Two sub-commands:

``images`` -- rebuild `canvases/images/*` (needs mediapipe; run it in a throwaway venv)::

    python3 -m venv /tmp/mpvenv
    /tmp/mpvenv/bin/pip install "mediapipe>=1.2,<2" scikit-image matplotlib pyyaml
    /tmp/mpvenv/bin/python tools/make_canvases.py images

  The model file is not on PyPI by itself: it sits inside the `mediapipe==0.10.21` wheel
  (`mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite`, 249,505 bytes). The
  script fetches that wheel with `pip download --no-deps mediapipe==0.10.21` (35.6 MB) into
  `--cache` (default `/tmp/lc-make-canvases`) and unzips just that file, unless `--model PATH`
  names a copy you already have. (0.10.21 itself wants numpy<2, so it is not installed: only
  its model file is used, by mediapipe 1.2.x's Tasks API.)

``preview`` -- render every canvas roughly (a stand-in for lc's own compositing: each layer is
cropped, scaled, flipped, rotated, anchored and alpha-composited over the background or a
checkerboard) into
`--out` (default `/tmp/lc-canvas-previews`) and print each layer's visible area. It needs only
numpy, pillow and pyyaml, so the project venv runs it::

    . /work/venv/bin/activate && python tools/make_canvases.py preview

Running with no sub-command does ``images`` then ``preview``. The output is deterministic
for a given mediapipe/numpy/pillow version; small differences across versions are expected.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CANVASES = ROOT / "canvases"
IMAGES = CANVASES / "images"

MODEL_WHEEL = "mediapipe==0.10.21"
MODEL_MEMBER = "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"
MAX_SIDE = 512  # committed images stay at most this many pixels on a side


# --- sources ----------------------------------------------------------------------------------


def load_sources() -> dict[str, np.ndarray]:
    """The shipped photographs, as uint8 RGB arrays."""
    import matplotlib.cbook
    import skimage.data

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as fh:
        hopper = np.asarray(Image.open(fh).convert("RGB"))
    return {
        "astronaut": np.asarray(skimage.data.astronaut())[..., :3],
        "grace_hopper": hopper,
        "rocket": np.asarray(skimage.data.rocket())[..., :3],
        "hubble": np.asarray(skimage.data.hubble_deep_field())[..., :3],
    }


# --- segmentation -----------------------------------------------------------------------------


def fetch_model(cache: Path) -> Path:
    """Return the selfie-segmentation model, unzipping it from the mediapipe 0.10.21 wheel."""
    model = cache / "selfie_segmentation.tflite"
    if model.exists():
        return model
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("mediapipe-0.10.21-*.whl"))
    if not wheels:
        print(f"downloading {MODEL_WHEEL} (35.6 MB, only for its model file) into {cache}")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "-q",
                MODEL_WHEEL,
                "-d",
                str(cache),
            ],
            check=True,
        )
        wheels = sorted(cache.glob("mediapipe-0.10.21-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download {MODEL_WHEEL} left no wheel in {cache}")
    with zipfile.ZipFile(wheels[0]) as zf:
        model.write_bytes(zf.read(MODEL_MEMBER))
    return model


class Segmenter:
    """MediaPipe selfie segmentation through the Tasks API (mediapipe 1.2.x)."""

    def __init__(self, model: Path):
        import mediapipe as mp
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core.base_options import BaseOptions

        self._mp = mp
        options = vision.ImageSegmenterOptions(
            base_options=BaseOptions(model_asset_path=str(model)),
            output_confidence_masks=True,
            output_category_mask=False,
        )
        self._segmenter = vision.ImageSegmenter.create_from_options(options)

    def person_confidence(self, rgb: np.ndarray) -> np.ndarray:
        """Per-pixel probability (0..1) that the pixel is a person, at the image's size."""
        image = self._mp.Image(
            image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb)
        )
        result = self._segmenter.segment(image)
        conf = np.asarray(result.confidence_masks[0].numpy_view(), dtype=np.float32)
        return conf.reshape(rgb.shape[:2])

    def close(self):
        self._segmenter.close()


def _box(a: np.ndarray, r: int) -> np.ndarray:
    from scipy.ndimage import uniform_filter

    return uniform_filter(a, size=2 * r + 1, mode="reflect")


def guided_filter(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter with a grayscale guide (edge-aware smoothing of `src`)."""
    mean_i, mean_p = _box(guide, r), _box(src, r)
    cov_ip = _box(guide * src, r) - mean_i * mean_p
    var_i = _box(guide * guide, r) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return _box(a, r) * guide + _box(b, r)


def person_alpha(rgb: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """A clean soft alpha (0..1) for the one person in `rgb`, from the model's confidence."""
    from scipy import ndimage

    core = conf > 0.5
    labels, count = ndimage.label(core)
    if count == 0:
        raise SystemExit("the segmentation found no person")
    sizes = ndimage.sum(core, labels, range(1, count + 1))
    core = ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))
    # Drop thin slivers of background the model let through (an opening with a ~9-px disc).
    yy, xx = np.mgrid[-4:5, -4:5]
    core = ndimage.binary_opening(core, structure=xx * xx + yy * yy <= 16)
    # Edge-aware refinement: the guided filter pulls the mask's edge onto the photo's edges.
    gray = rgb.astype(np.float32).mean(axis=2) / 255.0
    refined = np.clip(guided_filter(gray, conf, r=4, eps=2e-3), 0.0, 1.0)
    # Only near the person: inside a slightly grown core, nothing from stray blobs elsewhere.
    near = ndimage.binary_dilation(core, iterations=3)
    inner = ndimage.binary_erosion(core, iterations=6)
    alpha = np.where(near, refined, 0.0)
    alpha = np.where(inner, 1.0, alpha)
    # A touch of feathering, then a contrast stretch that pulls the edge ~1 px inwards (the
    # model's 0.5 contour sits on or just outside the hair, which left a light rim of studio
    # backdrop) and makes the flat parts exactly 0 or 1.
    alpha = ndimage.gaussian_filter(alpha, 0.7)
    alpha = np.clip((alpha - 0.3) / 0.6, 0.0, 1.0)
    return alpha.astype(np.float32)


# --- image helpers ----------------------------------------------------------------------------


def decontaminate(rgb: np.ndarray, alpha: np.ndarray, sigma: float = 6.0) -> np.ndarray:
    """Remove the old backdrop's colour from the soft edge (so no light halo on dark scenes).

    An edge pixel is I = a*F + (1-a)*B. B is estimated by spreading the colours of the fully
    transparent pixels nearby (normalised Gaussian blur); F = (I - (1-a)*B) / a, blended with
    the nearby opaque colour where a is too small for that division to be trustworthy.
    """
    from scipy.ndimage import gaussian_filter

    img = rgb.astype(np.float32)

    def spread(weight):
        num = np.stack([gaussian_filter(img[..., c] * weight, sigma) for c in range(3)], -1)
        den = gaussian_filter(weight, sigma)[..., None]
        return num / np.maximum(den, 1e-6)

    back = spread((alpha <= 0.02).astype(np.float32))
    fore = spread((alpha >= 0.98).astype(np.float32))
    a = alpha[..., None]
    solved = np.clip((img - (1.0 - a) * back) / np.maximum(a, 1e-3), 0, 255)
    trust = np.clip((a - 0.15) / 0.5, 0.0, 1.0)  # a >= 0.65: use the solved colour
    edge = trust * solved + (1.0 - trust) * fore
    out = np.where((a > 0.02) & (a < 0.98), edge, img)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def rgba(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = np.round(np.clip(alpha, 0, 1) * 255).astype(np.uint8)
    rgb = np.where(a[..., None] > 0, rgb, 0).astype(np.uint8)  # no colour where transparent
    return np.dstack([rgb, a])


def bbox(alpha: np.ndarray, level: float = 0.02, pad: int = 2) -> tuple[int, int, int, int]:
    """[x0, y0, x1, y1) of the pixels whose alpha exceeds `level`, grown by `pad`."""
    ys, xs = np.nonzero(alpha > level)
    h, w = alpha.shape
    return (
        max(0, xs.min() - pad),
        max(0, ys.min() - pad),
        min(w, xs.max() + 1 + pad),
        min(h, ys.max() + 1 + pad),
    )


def crop(a: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return a[y0:y1, x0:x1]


def fit_max_side(img: Image.Image, side: int = MAX_SIDE) -> Image.Image:
    if max(img.size) <= side:
        return img
    k = side / max(img.size)
    return img.resize((round(img.width * k), round(img.height * k)), Image.LANCZOS)


def save_rgba(array: np.ndarray, name: str) -> Path:
    path = IMAGES / name
    img = fit_max_side(Image.fromarray(array, "RGBA"))
    img.save(path, optimize=True)
    return path


def tint(rgb: np.ndarray, gains: tuple[float, float, float], saturation: float = 1.0):
    """A colour shift: per-channel gains (white balance) and a saturation factor."""
    f = rgb.astype(np.float32)
    gray = f.mean(axis=2, keepdims=True)
    f = gray + (f - gray) * saturation
    f = f * np.asarray(gains, np.float32)
    return np.clip(np.round(f), 0, 255).astype(np.uint8)


# --- the images -------------------------------------------------------------------------------

# Eileen Collins holds her helmet in front of her right side, and the model (rightly) counts it
# as part of the person. The rows below this one are dropped so the cut-out is head, shoulders
# and upper chest only (the helmet's top is at about y=343 in the 512x512 photo).
COLLINS_LAST_ROW = 336
# [x0, y0, x1, y1) in the 512x512 photo: right of her left sleeve, where the cut-out must be orange.
COLLINS_SLEEVE_BOX = (330, 230, 512, 340)


def drop_pale(rgb: np.ndarray, alpha: np.ndarray, box, max_saturation: float) -> np.ndarray:
    """Zero the alpha of unsaturated (grey/white) pixels inside `box`."""
    f = rgb.astype(np.float32)
    hi, lo = f.max(axis=2), f.min(axis=2)
    saturation = (hi - lo) / np.maximum(hi, 1.0)
    x0, y0, x1, y1 = box
    inside = np.zeros(alpha.shape, bool)
    inside[y0:y1, x0:x1] = True
    return np.where(inside & (saturation < max_saturation), 0.0, alpha).astype(np.float32)


def build_images(args) -> None:
    try:
        import mediapipe  # noqa: F401
    except ImportError:
        raise SystemExit(
            "the `images` step needs mediapipe>=1.2 (use a throwaway venv; see this "
            "script's docstring); `preview` runs without it"
        ) from None
    IMAGES.mkdir(parents=True, exist_ok=True)
    src = load_sources()
    segmenter = Segmenter(Path(args.model) if args.model else fetch_model(Path(args.cache)))
    try:
        collins_rgb = src["astronaut"]
        collins_alpha = person_alpha(collins_rgb, segmenter.person_confidence(collins_rgb))
        hopper_rgb = src["grace_hopper"]
        hopper_alpha = person_alpha(hopper_rgb, segmenter.person_confidence(hopper_rgb))
    finally:
        segmenter.close()

    written = []

    # 1. collins.png: Eileen Collins, head + shoulders + upper chest.
    collins_alpha = collins_alpha.copy()
    collins_alpha[COLLINS_LAST_ROW:] = 0.0
    # The model also took a sliver of the pale backdrop and the shuttle model's stand beside
    # her left sleeve (image right); the suit there is saturated orange, the intruder is not.
    collins_alpha = drop_pale(collins_rgb, collins_alpha, COLLINS_SLEEVE_BOX, max_saturation=0.3)
    box = bbox(collins_alpha)
    collins_rgb = decontaminate(collins_rgb, collins_alpha)
    collins = rgba(crop(collins_rgb, box), crop(collins_alpha, box))
    written.append(save_rgba(collins, "collins.png"))

    # 2. hopper.png: Grace Hopper, everything the photo shows of her (down to mid-chest).
    box = bbox(hopper_alpha)
    hopper = rgba(crop(decontaminate(hopper_rgb, hopper_alpha), box), crop(hopper_alpha, box))
    written.append(save_rgba(hopper, "hopper.png"))

    # 3. collins_variant.png: DERIVED from collins.png -- mirrored left-right, cooler white
    #    balance and a little less saturation, so it reads as a different shot.
    variant = collins[:, ::-1].copy()
    variant[..., :3] = tint(variant[..., :3], (0.93, 0.98, 1.08), saturation=0.85)
    written.append(save_rgba(variant, "collins_variant.png"))

    # 4. hopper_variant.png: DERIVED from hopper.png -- mirrored, cropped tighter to head and
    #    shoulders (the top 72% of the cut-out), warmer white balance.
    h = hopper.shape[0]
    variant = hopper[: int(h * 0.72), ::-1].copy()
    variant[..., :3] = tint(variant[..., :3], (1.07, 1.0, 0.88), saturation=1.05)
    box = bbox(variant[..., 3] / 255.0)
    written.append(save_rgba(crop(variant, box), "hopper_variant.png"))

    # 5. rgb_with_mask.jpg + rgb_with_mask_mask.png: the same Hopper crop as an RGB photo
    #    (its own flag-and-sky background kept) plus a separate grayscale mask, to exercise
    #    the canvas format's `mask:` key. Head and shoulders only.
    box = bbox(hopper_alpha)
    x0, y0, x1, _ = box
    box = (x0, y0, x1, y0 + int((box[3] - y0) * 0.72))
    photo = fit_max_side(Image.fromarray(crop(hopper_rgb, box)))
    mask = Image.fromarray(np.round(crop(hopper_alpha, box) * 255).astype(np.uint8), "L")
    mask = mask.resize(photo.size, Image.LANCZOS) if mask.size != photo.size else mask
    photo.save(IMAGES / "rgb_with_mask.jpg", quality=88, optimize=True)
    mask.save(IMAGES / "rgb_with_mask_mask.png", optimize=True)
    written += [IMAGES / "rgb_with_mask.jpg", IMAGES / "rgb_with_mask_mask.png"]

    # 6. Backgrounds (plain RGB JPEGs).
    rocket = fit_max_side(Image.fromarray(src["rocket"]), 640)  # already 640x427
    rocket.save(IMAGES / "rocket.jpg", quality=85, optimize=True)
    hubble = fit_max_side(Image.fromarray(src["hubble"]), MAX_SIDE)
    hubble.save(IMAGES / "hubble.jpg", quality=85, optimize=True)
    written += [IMAGES / "rocket.jpg", IMAGES / "hubble.jpg"]

    total = 0
    for path in written:
        size = path.stat().st_size
        total += size
        with Image.open(path) as im:
            print(f"{path.relative_to(ROOT)}: {im.size[0]}x{im.size[1]} {im.mode}, {size:,} bytes")
    print(f"total {total:,} bytes")


# --- preview ----------------------------------------------------------------------------------

ANCHORS = {
    "top-left": (0.0, 0.0),
    "top": (0.5, 0.0),
    "top-right": (1.0, 0.0),
    "left": (0.0, 0.5),
    "center": (0.5, 0.5),
    "right": (1.0, 0.5),
    "bottom-left": (0.0, 1.0),
    "bottom": (0.5, 1.0),
    "bottom-right": (1.0, 1.0),
}


def _layer_rgba(base: Path, layer: dict) -> Image.Image:
    img = Image.open(base / layer["image"])
    if layer.get("mask"):
        mask = Image.open(base / layer["mask"]).convert("L")
        img = img.convert("RGB")
        img.putalpha(mask.resize(img.size) if mask.size != img.size else mask)
    else:
        img = img.convert("RGBA")
    if layer.get("crop"):
        img = img.crop(tuple(layer["crop"]))
    scale = float(layer.get("scale", 1.0))
    if scale != 1.0:
        img = img.resize(
            (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS
        )
    flip = layer.get("flip", "none")
    if flip in ("horizontal", "both"):
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if flip in ("vertical", "both"):
        img = img.transpose(Image.FLIP_TOP_BOTTOM)
    if layer.get("rotate"):
        img = img.rotate(float(layer["rotate"]), resample=Image.BICUBIC, expand=True)
    return img


def _background(base: Path, bg: dict, size: tuple[int, int]) -> Image.Image:
    img = Image.open(base / bg["image"]).convert("RGBA")
    w, h = size
    fit = bg.get("fit", "cover")
    if fit == "stretch":
        return img.resize(size, Image.LANCZOS)
    k = (max if fit == "cover" else min)(w / img.width, h / img.height)
    img = img.resize((round(img.width * k), round(img.height * k)), Image.LANCZOS)
    out = Image.new("RGBA", size, (0, 0, 0, 0))
    out.paste(img, ((w - img.width) // 2, (h - img.height) // 2))
    return out


def _checkerboard(size: tuple[int, int], cell: int = 32) -> Image.Image:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    v = np.where(((xx // cell) + (yy // cell)) % 2 == 0, 205, 235).astype(np.uint8)
    return Image.fromarray(np.dstack([v, v, v, np.full_like(v, 255)]), "RGBA")


def preview_canvas(path: Path, out: Path) -> dict:
    import yaml

    spec = yaml.safe_load(path.read_text())
    size = tuple(spec.get("size", (1024, 1024)))
    w, h = size
    base = path.parent
    canvas = _checkerboard(size)
    if spec.get("background"):
        canvas.alpha_composite(_background(base, spec["background"], size))
    owner = np.full((h, w), -1, np.int32)  # which layer is on top at each pixel (alpha >= .5)
    stats = []
    for i, layer in enumerate(spec.get("layers", [])):
        img = _layer_rgba(base, layer)
        fx, fy = ANCHORS[layer.get("anchor", "center")]
        px, py = layer["position"]
        ox, oy = round(px - fx * img.width), round(py - fy * img.height)
        placed = Image.new("RGBA", size, (0, 0, 0, 0))
        placed.paste(img, (ox, oy))
        canvas.alpha_composite(placed)
        a = np.asarray(placed)[..., 3] >= 128
        owner[a] = i
        total = int((np.asarray(img)[..., 3] >= 128).sum())
        stats.append(
            {
                "name": layer["name"],
                "lock": bool(layer.get("lock", False)),
                "inside": int(a.sum()),
                "total": total,
                "box": (ox, oy, ox + img.width, oy + img.height),
            }
        )
    for i, s in enumerate(stats):
        s["visible"] = int((owner == i).sum())
    out.mkdir(parents=True, exist_ok=True)
    canvas.convert("RGB").save(out / f"{path.stem}.png")
    union = int((owner >= 0).sum())
    return {"size": size, "layers": stats, "union": union, "fraction": union / (w * h)}


def preview(args) -> None:
    out = Path(args.out)
    for path in sorted(CANVASES.glob("*.yaml")):
        r = preview_canvas(path, out)
        w, h = r["size"]
        print(
            f"{path.name}: {w}x{h}, subjects cover {r['union']:,} px "
            f"({100 * r['fraction']:.0f}% of the canvas) -> {out / (path.stem + '.png')}"
        )
        for s in r["layers"]:
            share = s["inside"] / s["total"] if s["total"] else 0.0
            print(
                f"  {s['name']:<14} visible {s['visible']:>8,} px, {100 * share:.0f}% of it "
                f"inside the canvas, box {s['box']}{', locked' if s['lock'] else ''}"
            )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", nargs="?", choices=["images", "preview", "all"], default="all")
    parser.add_argument("--model", help="selfie_segmentation.tflite (default: fetch it)")
    parser.add_argument(
        "--cache",
        default="/tmp/lc-make-canvases",
        help="where the mediapipe wheel and model are kept",
    )
    parser.add_argument("--out", default="/tmp/lc-canvas-previews", help="preview folder")
    args = parser.parse_args(argv)
    if args.step in ("images", "all"):
        build_images(args)
    if args.step in ("preview", "all"):
        preview(args)


if __name__ == "__main__":
    main()
