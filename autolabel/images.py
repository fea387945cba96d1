"""Safe image decoding: any file becomes RGB uint8 or one clear InputError, never a crash.

EXIF orientation is applied; every PIL mode (grayscale, palette, RGBA, CMYK, 16-bit, float)
becomes RGB; the pixel count is checked from the header before decoding (decompression bombs).
TIFFs PIL cannot read (float RGB, many-channel planar) or reads wrongly (16-bit planar RGB) are
decoded with `tifffile` instead: its first page, high bit depths scaled by their range like PIL's.
A multi-page file is labelled by its first page, and a note says so. A folder's images are listed
in natural order (img2 before img10) by every command alike (`folder_images`).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from autolabel.errors import InputError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
_DIGITS = re.compile(r"(\d+)")
DEFAULT_MAX_PIXELS = 178_956_970  # PIL's own bomb threshold (2x its warning level)
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
# TIFF orientation tag -> the transpose that shows the image upright (as ImageOps.exif_transpose)
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def natural_key(text: str) -> list:
    """Sort key where img2 comes before img10, case-insensitively."""
    return [int(part) if part.isdigit() else part.lower() for part in _DIGITS.split(text)]


def folder_images(folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """A group folder's image files in natural order, and the names left out with why (a folder, a
    file that is not an image); dotfiles are left out silently. Every command lists a folder so."""
    images, skipped = [], []
    for f in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        if f.name.startswith("."):
            continue
        if f.is_dir():
            skipped.append((f.name, "a folder inside a group folder"))
        elif is_image_file(f):
            images.append(f)
        else:
            skipped.append((f.name, "not an image file (by its extension)"))
    return images, skipped


def decode_image(path: Path, file: str, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 notes: list[str] | None = None) -> np.ndarray:
    """Decode `path` to an RGB uint8 HxWx3 array; `file` is the name used in errors. What the
    caller should know about a file that did decode (which page of several) is appended to `notes`."""
    notes = [] if notes is None else notes
    try:
        if path.is_dir():
            raise InputError(file, "is a directory, not an image")
        if path.stat().st_size == 0:
            raise InputError(file, "empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                _check_pixels(file, w, h, max_pixels)
                if img.format == "TIFF" and _pil_misreads_tiff(img):
                    try:
                        return _decode_tiff(path, file, max_pixels, notes)
                    except _TiffUnreadable:
                        pass  # e.g. a compression tifffile needs imagecodecs for: PIL's 8 bits then
                img.load()  # a full decode: truncated data fails here, not later
                pages = getattr(img, "n_frames", 1)
                img = ImageOps.exif_transpose(img)
                rgb = _to_rgb(img)
        if pages > 1:
            notes.append(f"{file}: page 1 of {pages} used")
        return rgb
    except InputError:
        raise
    except FileNotFoundError:
        reason = f"broken symlink (to {os.readlink(path)})" if path.is_symlink() else "file not found"
        raise InputError(file, reason) from None
    except PermissionError:
        raise InputError(file, "permission denied") from None
    except UnidentifiedImageError:
        if _is_tiff(path):
            try:
                return _decode_tiff(path, file, max_pixels, notes)
            except _TiffUnreadable as e:
                raise InputError(file, f"a TIFF neither PIL nor tifffile can read: {e}") from None
        raise InputError(file, "not an image, or a format PIL cannot read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(file, f"over the pixel limit: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(file, f"corrupt or truncated image: {e}") from None


class _TiffUnreadable(Exception):
    """tifffile could not read the file either (its message says why)."""


def _check_pixels(file: str, w: int, h: int, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise InputError(file, f"{w}x{h} = {w * h} pixels is over the limit of {max_pixels} "
                               "(possible decompression bomb; raise --max-pixels to allow it)")


def _is_tiff(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) in _TIFF_MAGIC


def _pil_misreads_tiff(img: Image.Image) -> bool:
    """PIL opens 16-bit RGB TIFFs as 8-bit RGB (planar ones as their low bytes): tifffile reads them."""
    bits = img.tag_v2.get(258, (1,))  # BitsPerSample
    bits = bits if isinstance(bits, tuple) else (bits,)
    return img.mode in ("RGB", "RGBA", "RGBX") and max(bits) > 8


def _decode_tiff(path: Path, file: str, max_pixels: int, notes: list[str]) -> np.ndarray:
    """The first page of a TIFF via tifffile: planar (S, H, W) becomes (H, W, S); RGB keeps its
    three channels, anything else (one channel, or many as in microscopy) its first; high bit depths
    and floats are scaled by their range, as PIL's 16-bit images are."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            _check_pixels(file, int(page.imagewidth), int(page.imagelength), max_pixels)
            values = page.asarray()
            axes, photometric = page.axes, page.photometric
            orientation = int(page.tags.valueof(274, 1))  # the TIFF Orientation tag
            pages = len(tif.pages)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - tifffile raises many types for files it cannot read
        raise _TiffUnreadable(f"{type(e).__name__}: {e}") from None
    for axis in [a for a in axes if a not in "YXS"]:  # e.g. depth: its first plane
        values = values.take(0, axis=axes.index(axis))
        axes = axes.replace(axis, "")
    if "S" in axes:
        values = np.moveaxis(values, axes.index("S"), -1)
    else:
        values = values[..., None]
    channels = values.shape[-1]
    if photometric == 2 and channels >= 3:  # RGB
        values = values[..., :3]
    else:
        values = values[..., 0]
        if channels > 1:
            notes.append(f"{file}: channel 1 of {channels} used")
    rgb = values if values.dtype == np.uint8 else _high_depth_to_rgb(values)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    if photometric == 0:  # MINISWHITE: 0 is white
        rgb = 255 - rgb
    if orientation in _ORIENTATION:
        rgb = np.asarray(Image.fromarray(rgb).transpose(_ORIENTATION[orientation]))
    if pages > 1:
        notes.append(f"{file}: page 1 of {pages} used")
    return np.array(rgb, dtype=np.uint8)  # a contiguous, writable copy


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
    """16-bit / 32-bit / float images (HxW, or HxWx3 scaled together) by their real range to 8 bits
    (not clipped)."""
    values = values.astype(np.float64)
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    scaled = np.zeros_like(values) if hi <= lo else (np.clip(values, lo, hi) - lo) / (hi - lo) * 255.0
    out = np.nan_to_num(scaled).round().astype(np.uint8)
    return np.ascontiguousarray(out if out.ndim == 3 else np.repeat(out[..., None], 3, axis=2))
