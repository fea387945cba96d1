"""Safe decoding: every bad file is one InputError naming it; every mode becomes RGB."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autolabel.errors import InputError
from autolabel.images import decode_image


def save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"this is text, not an image", "not an image"),
])
def test_bad_bytes(tmp_path, content, reason):
    p = tmp_path / "x.jpg"
    p.write_bytes(content)
    with pytest.raises(InputError, match=reason) as e:
        decode_image(p, "g/x.jpg")
    assert e.value.file == "g/x.jpg"


def test_truncated_and_corrupt(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    data = buf.getvalue()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt or truncated"):
        decode_image(tmp_path / "t.png", "t.png")
    (tmp_path / "c.png").write_bytes(data[:40] + b"\x00" * 200 + data[240:])
    with pytest.raises(InputError):
        decode_image(tmp_path / "c.png", "c.png")


def test_missing_directory_and_unreadable(tmp_path):
    with pytest.raises(InputError, match="not found"):
        decode_image(tmp_path / "nope.png", "nope.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(InputError, match="directory"):
        decode_image(tmp_path / "dir.png", "dir.png")


def test_pixel_limit_checked_before_decoding(tmp_path):
    p = save(Image.new("RGB", (100, 100)), tmp_path / "big.png")
    with pytest.raises(InputError, match="over the limit"):
        decode_image(p, "big.png", max_pixels=5000)
    assert decode_image(p, "big.png", max_pixels=10_000).shape == (100, 100, 3)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    p = save(img, tmp_path / "r.jpg", exif=exif.tobytes())
    assert decode_image(p, "r.jpg").shape == (40, 20, 3)


@pytest.mark.parametrize("mode", ["L", "1", "LA", "RGBA", "CMYK", "P"])
def test_modes_become_rgb(tmp_path, mode):
    img = Image.new("RGB", (8, 6), (200, 100, 50)).convert(mode)
    p = save(img, tmp_path / ("x.tif" if mode == "CMYK" else "x.png"))
    out = decode_image(p, "x")
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8


def test_transparency_is_composited_on_white(tmp_path):
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    out = decode_image(save(img, tmp_path / "a.png"), "a.png")
    assert (out == 255).all()
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0] * 256)
    out = decode_image(save(pal, tmp_path / "p.png", transparency=0), "p.png")
    assert (out == 255).all()


def test_16_bit_is_scaled_by_its_range_not_clipped(tmp_path):
    values = np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16)
    p = save(Image.fromarray(values), tmp_path / "d.png")
    out = decode_image(p, "d.png")
    assert out[..., 0].tolist() == [[0, 64], [128, 255]]
