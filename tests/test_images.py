"""Safe decoding: every bad file is one InputError naming it; every mode becomes RGB."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tifffile
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


# -- TIFFs PIL cannot read (or reads wrongly), as tifffile writes them -------------------------
def planar_rgb(h: int = 20, w: int = 30) -> np.ndarray:
    """(3, H, W): red rises left to right, green top to bottom, blue is constant."""
    out = np.zeros((3, h, w), dtype=np.float64)
    out[0] = np.linspace(0, 1, w)[None, :]
    out[1] = np.linspace(0, 1, h)[:, None]
    out[2] = 0.5
    return out


def test_planar_float_rgb_tiff_becomes_hwc(tmp_path):
    values = planar_rgb().astype(np.float32)
    p = tmp_path / "planar.tif"
    tifffile.imwrite(p, values, photometric="rgb", planarconfig="separate")
    with pytest.raises(Exception):  # PIL itself refuses this file
        Image.open(p).load()
    out = decode_image(p, "planar.tif")
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8 and out.flags.writeable
    assert out[0, 0].tolist() == [0, 0, 128] and out[-1, -1].tolist() == [255, 255, 128]
    assert out[0, -1].tolist() == [255, 0, 128]  # red along x: the channel axis moved last, not mixed up


def test_planar_16_bit_rgb_tiff_is_scaled_by_its_range(tmp_path):
    """12-bit data in a 16-bit planar RGB TIFF: PIL opens it as 8-bit RGB of the low bytes."""
    values = (planar_rgb() * 4095).round().astype(np.uint16)
    p = tmp_path / "rgb12.tif"
    tifffile.imwrite(p, values, photometric="rgb", planarconfig="separate")
    out = decode_image(p, "rgb12.tif")
    assert out.shape == (20, 30, 3)
    expected = np.moveaxis(values, 0, -1).astype(np.float64) / 4095 * 255
    assert np.abs(out - expected).max() <= 1


def test_16_bit_grayscale_tiff_is_scaled_by_its_range(tmp_path):
    values = np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16)
    p = tmp_path / "g16.tif"
    tifffile.imwrite(p, values)
    assert decode_image(p, "g16.tif")[..., 1].tolist() == [[0, 64], [128, 255]]


def test_multi_page_tiff_uses_the_first_page_and_says_so(tmp_path):
    first, second = planar_rgb().astype(np.float32), np.zeros((3, 20, 30), np.float32)
    p = tmp_path / "stack.tif"
    tifffile.imwrite(p, np.stack([first, second]), photometric="rgb", planarconfig="separate")
    with tifffile.TiffFile(p) as tif:
        assert len(tif.pages) == 2
    notes: list[str] = []
    out = decode_image(p, "g/stack.tif", notes=notes)
    assert out[0, -1].tolist() == [255, 0, 128]  # the first page, not the black second one
    assert notes == ["g/stack.tif: page 1 of 2 used"]
    # a multi-page TIFF PIL reads itself gets the same note
    tifffile.imwrite(tmp_path / "gray.tif", np.arange(3 * 8 * 6, dtype=np.uint8).reshape(3, 8, 6),
                     photometric="minisblack")
    notes = []
    assert decode_image(tmp_path / "gray.tif", "gray.tif", notes=notes).shape == (8, 6, 3)
    assert notes == ["gray.tif: page 1 of 3 used"]


def test_many_channel_microscopy_tiff_uses_its_first_channel(tmp_path):
    values = np.zeros((5, 8, 6), dtype=np.uint16)
    values[0] = np.arange(6) * 100  # channel 1: a ramp along x; the others are noise
    values[1:] = np.random.default_rng(0).integers(0, 65535, (4, 8, 6))
    p = tmp_path / "channels.tif"
    tifffile.imwrite(p, values, photometric="minisblack", planarconfig="separate")
    notes: list[str] = []
    out = decode_image(p, "channels.tif", notes=notes)
    assert out[0, :, 0].tolist() == [0, 51, 102, 153, 204, 255] and (out[..., 0] == out[..., 2]).all()
    assert notes == ["channels.tif: channel 1 of 5 used"]


def test_pixel_limit_holds_for_tiffs_read_with_tifffile(tmp_path):
    p = tmp_path / "big.tif"
    tifffile.imwrite(p, np.zeros((3, 100, 100), np.float32), photometric="rgb", planarconfig="separate")
    with pytest.raises(InputError, match="over the limit"):
        decode_image(p, "big.tif", max_pixels=5000)
    assert decode_image(p, "big.tif", max_pixels=10_000).shape == (100, 100, 3)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # PIL's, on the way to refusing the file
def test_a_tiff_neither_reader_can_read_is_one_input_error(tmp_path):
    p = tmp_path / "broken.tif"
    buf = io.BytesIO()
    tifffile.imwrite(buf, planar_rgb().astype(np.float32), photometric="rgb", planarconfig="separate")
    p.write_bytes(buf.getvalue()[:12])  # the header, nothing it points to
    with pytest.raises(InputError) as e:
        decode_image(p, "broken.tif")
    assert e.value.file == "broken.tif"


def test_broken_symlink_is_named_as_one(tmp_path):
    (tmp_path / "link.jpg").symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(InputError, match="broken symlink"):
        decode_image(tmp_path / "link.jpg", "link.jpg")
