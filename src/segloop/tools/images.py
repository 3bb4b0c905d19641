"""Reading images and masks from disk into the arrays every tool works on.

Images become ``uint8`` RGB arrays of shape (H, W, 3) whatever the file holds (grayscale, RGBA, palette,
16-bit, EXIF-rotated); masks become ``bool`` arrays of shape (H, W). Anything unreadable raises
``ImageError`` with the path and the reason, never a bare decoder traceback.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from segloop.tools.encoding import encode_png
from segloop.tools.files import write_bytes

# Largest image accepted, in pixels. PIL's own guard (~89 MP) is a multi-line DecompressionBombWarning below
# 2x and an obscure error above; ours is explicit: PIL's warning is silenced and anything over this limit is
# refused in one line. A 10000x8000 photo (80 MP, 240 MB as RGB) is allowed.
MAX_IMAGE_PIXELS = 120_000_000


# EXIF tag 0x0112: how the camera was held; 1 means the pixels are already upright.
_EXIF_ORIENTATION = 0x0112
# Pixels converted per step by _rgb_in_strips (about 12 MB of RGB).
_STRIP_PIXELS = 4_000_000


class ImageError(ValueError):
    """An image or mask that cannot be used, with a message that says why."""


@contextlib.contextmanager
def _quiet_bomb_check() -> Iterator[None]:
    """A context in which PIL's DecompressionBombWarning is silent (``MAX_IMAGE_PIXELS`` is the limit)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _open(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image")
    try:
        with _quiet_bomb_check():
            img = Image.open(path)
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageError(
                    f"{path}: {width}x{height} is larger than the {MAX_IMAGE_PIXELS:,}-pixel limit"
                )
            img.load()
    except ImageError:
        raise
    except Image.DecompressionBombError:  # over twice PIL's own limit: PIL refuses before we see the size
        raise ImageError(f"{path}: larger than the {MAX_IMAGE_PIXELS:,}-pixel limit") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from exc
    return img


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any PIL image as (H, W, 3) uint8 RGB, with EXIF orientation applied and alpha dropped."""
    # exif_transpose copies the whole image even when there is nothing to rotate: only call it when
    # the orientation tag asks for a rotation or flip.
    if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale the actual range to 0..255 rather than clip at 255.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        gray = ((arr - lo) * scale).round().astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        gray = ((arr - lo) * scale).round().astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on white so transparent regions do not turn into arbitrary colours.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return _rgb_in_strips(img)


def _rgb_in_strips(img: Image.Image) -> np.ndarray:
    """``img`` converted to RGB strip by strip into one preallocated array: converting a large image
    in one go holds two more full copies (PIL's converted image and its bytes) at the peak."""
    width, height = img.size
    out = np.empty((height, width, 3), np.uint8)
    rows = max(1, _STRIP_PIXELS // width)
    for top in range(0, height, rows):
        strip = img.crop((0, top, width, min(top + rows, height)))
        out[top : top + strip.height] = np.asarray(strip.convert("RGB") if strip.mode != "RGB" else strip)
    return out


def load_image(path: str | Path) -> np.ndarray:
    """The image at ``path`` as (H, W, 3) uint8 RGB."""
    img = _open(path)
    with _quiet_bomb_check():
        return to_rgb_array(img)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """An in-memory array (gray, gray+alpha, RGB, RGBA; any integer or float dtype) as uint8 RGB."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise ImageError(f"expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"empty image of shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8) * 255
        elif np.issubdtype(arr.dtype, np.floating):
            arr = np.nan_to_num(arr.astype(np.float64))
            arr = (np.clip(arr, 0.0, 1.0) * 255).round() if arr.max() <= 1.0 else np.clip(arr, 0, 255)
            arr = arr.astype(np.uint8)
        else:
            hi = 65535 if arr.max() > 255 else 255
            arr = (arr.astype(np.float64) * (255.0 / hi)).round().astype(np.uint8)
    channels = arr.shape[2]
    if channels in (2, 4):
        arr = arr[:, :, : channels - 1]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def load_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A mask PNG as a bool (H, W) array: any non-zero pixel is foreground.

    With ``shape`` given, a mask of another size is an error rather than silently misaligned.
    """
    img = _open(path)
    if img.mode == "P":
        # Palette masks (VOC style) hold class indices; 255 marks "void" and is not foreground.
        arr = np.asarray(img)
        mask = (arr > 0) & (arr != 255)
    else:
        arr = np.asarray(img.convert("L") if img.mode not in ("1", "L", "I;16", "I") else img)
        mask = arr > 0
    if shape is not None and mask.shape != tuple(shape):
        raise ImageError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]}, image is {shape[1]}x{shape[0]}")
    return mask


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of the image at ``path``, read from its header (the pixels are not decoded)."""
    try:
        with _quiet_bomb_check(), Image.open(path) as img:
            return img.size
    except Image.DecompressionBombError:
        raise ImageError(f"{path}: larger than the {MAX_IMAGE_PIXELS:,}-pixel limit") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from exc


def save_mask(mask: np.ndarray, path: str | Path) -> Path:
    """Write a bool mask as a 0/255 grayscale PNG."""
    return write_bytes(path, encode_png(np.asarray(mask, dtype=bool).astype(np.uint8) * 255))


def save_image(image: np.ndarray, path: str | Path) -> Path:
    """Write an image array as an RGB PNG (the same array always gives the same bytes)."""
    return write_bytes(path, encode_png(as_rgb(image)))
