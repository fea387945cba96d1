"""Safe image decoding: any file becomes RGB uint8 or one clear InputError, never a crash.

EXIF orientation is applied; every PIL mode (grayscale, palette, RGBA, CMYK, 16-bit, float)
becomes RGB; the pixel count is checked from the header before decoding (decompression bombs).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from autolabel.errors import InputError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
DEFAULT_MAX_PIXELS = 178_956_970  # PIL's own bomb threshold (2x its warning level)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def decode_image(path: Path, file: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode `path` to an RGB uint8 HxWx3 array; `file` is the name used in errors."""
    try:
        if path.is_dir():
            raise InputError(file, "is a directory, not an image")
        if path.stat().st_size == 0:
            raise InputError(file, "empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise InputError(file, f"{w}x{h} = {w * h} pixels is over the limit of {max_pixels} "
                                           "(possible decompression bomb; raise --max-pixels to allow it)")
                img.load()  # a full decode: truncated data fails here, not later
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(file, "file not found") from None
    except PermissionError:
        raise InputError(file, "permission denied") from None
    except UnidentifiedImageError:
        raise InputError(file, "not an image, or a format PIL cannot read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(file, f"over the pixel limit: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(file, f"corrupt or truncated image: {e}") from None


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _high_depth_to_rgb(np.asarray(img))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        # composite on white: transparent areas would otherwise turn into arbitrary colours
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return np.array(img.convert("RGB"), dtype=np.uint8)  # a writable copy: torch warns on read-only arrays


def _high_depth_to_rgb(values: np.ndarray) -> np.ndarray:
    """16-bit / 32-bit / float images scaled by their real range to 8 bits (not clipped)."""
    values = values.astype(np.float64)
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    scaled = np.zeros_like(values) if hi <= lo else (values - lo) / (hi - lo) * 255.0
    gray = np.nan_to_num(scaled).round().astype(np.uint8)
    return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
