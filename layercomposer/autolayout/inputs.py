"""Reading the images autolayout is given: EXIF orientation applied, every failure named."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import InputError
from ..files import sha256_file
from ..limits import TooLargeError, UnreadableImageError, open_image_bounded

EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True, eq=False)
class InputImage:
    """An image file as a person sees it: upright, RGB, with its alpha if it has one."""

    path: Path
    rgb: np.ndarray  # (H, W, 3) uint8
    alpha: np.ndarray | None  # (H, W) uint8, only when the file has real transparency
    sha256: str
    orientation: int  # the EXIF orientation tag that was applied (1: none)

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]


def read_image(path: str | Path, what: str) -> InputImage:
    """Return the image at `path` upright (EXIF applied), or an `InputError` naming the file."""
    path = Path(path)
    try:  # its size is checked before decoding; 16-bit and float images come back as 8-bit
        image = open_image_bounded(path)
        orientation = int(image.getexif().get(EXIF_ORIENTATION, 1) or 1)
        upright = ImageOps.exif_transpose(image)
    except TooLargeError as exc:
        raise InputError(f"{what} {exc.message}") from None
    except UnreadableImageError as exc:
        if exc.kind == "missing":
            raise InputError(f"{what} {path}: no such file") from None
        if exc.kind == "folder":
            raise InputError(f"{what} {path}: is a folder, not an image") from None
        if exc.kind == "special":  # a FIFO, socket or device: refused unread
            raise InputError(f"{what} {exc.message}") from None
        if exc.kind == "format":
            formats = "PNG, JPEG, WebP, TIFF, BMP, GIF"
            raise InputError(
                f"{what} {path}: not an image format lc can read",
                hint=f"convert it to one of {formats} (HEIC/RAW need converting first)",
            ) from None
        raise InputError(f"{what} {path}: corrupt or truncated image ({exc.message})") from None
    except (OSError, SyntaxError, ValueError, struct.error) as exc:  # a damaged EXIF block
        raise InputError(f"{what} {path}: corrupt image metadata ({exc})") from None

    alpha = None
    if upright.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in upright.info:
        rgba = np.asarray(upright.convert("RGBA"))
        if (rgba[..., 3] < 255).any():  # an alpha channel that is all opaque says nothing
            alpha = np.ascontiguousarray(rgba[..., 3])
    rgb = np.ascontiguousarray(np.asarray(upright.convert("RGB")))
    return InputImage(path, rgb, alpha, sha256_file(path), orientation)


def read_mask(path: str | Path, size: tuple[int, int], what: str) -> np.ndarray:
    """(H, W) uint8: a grayscale mask (white = subject) the same size as its image."""
    mask = read_image(path, what)
    if mask.size != size:
        raise InputError(
            f"{what} {mask.path} is {mask.size[0]}x{mask.size[1]} but its subject is "
            f"{size[0]}x{size[1]}; they must match (after EXIF orientation)"
        )
    if mask.alpha is not None:  # a cut-out given as the mask: its alpha is the mask
        return mask.alpha
    return np.asarray(Image.fromarray(mask.rgb).convert("L"))
