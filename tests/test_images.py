import io
import math
import random
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from mmrope.data.images import ImageError, ImageTransform, denormalize, load_image, smart_resize, to_tensor


def noisy_rgb(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def png_header_only(width, height):
    """A PNG whose header claims ``width x height`` and whose pixel data stops after 8 bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 1000) + b"IDAT" + zlib.compress(b"\0" * 64)[:8]


def assert_one_line_error(excinfo, path, words):
    msg = str(excinfo.value)
    assert "\n" not in msg and str(path) in msg
    assert any(w in msg for w in words), msg


# bad files

@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_is_detected_at_load(tmp_path, fmt):
    buf = io.BytesIO()
    noisy_rgb(64, 64).save(buf, format=fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError) as e:
        load_image(path)
    assert_one_line_error(e, path, ["truncated", "corrupt"])


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError) as e:
        load_image(path)
    assert_one_line_error(e, path, ["empty file"])


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageError) as e:
        load_image(path)
    assert_one_line_error(e, path, ["not an image"])


def test_missing_file(tmp_path):
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "nope.png")
    assert_one_line_error(e, tmp_path / "nope.png", ["not found"])


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    # the header says 5000 x 5000 and no pixels follow: decoding would report truncation, not the limit
    path = tmp_path / "big.png"
    path.write_bytes(png_header_only(5000, 5000))
    with pytest.raises(ImageError) as e:
        load_image(path, max_pixels=1_000_000)
    assert_one_line_error(e, path, ["over the limit max_pixels=1000000"])
    with pytest.raises(ImageError) as e:
        load_image(path, max_pixels=30_000_000)
    assert_one_line_error(e, path, ["truncated", "corrupt"])


def test_pixel_limit_on_a_real_image(tmp_path):
    path = tmp_path / "ok.png"
    noisy_rgb(40, 30).save(path)
    assert load_image(path, max_pixels=1200).size == (40, 30)
    with pytest.raises(ImageError, match="1200 pixels is over the limit"):
        load_image(path, max_pixels=1199)


def test_decompression_bomb_becomes_image_error(tmp_path):
    # Pillow itself refuses 10^10 pixels with DecompressionBombError, which is not an OSError
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(100_000, 100_000))
    with pytest.raises(ImageError) as e:
        load_image(path, max_pixels=10**11)
    assert_one_line_error(e, path, ["too many pixels"])


def test_image_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(ImageError("a.png", "empty file")))
    assert isinstance(err, ImageError) and str(err) == "a.png: empty file"


# modes

def load_saved(tmp_path, img, name="x.png", **save_kwargs):
    path = tmp_path / name
    img.save(path, **save_kwargs)
    out = load_image(path)
    assert out.mode == "RGB"
    return out


def test_16_bit_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 257 * 64, 32768, 65535]], dtype=np.uint16)
    img = Image.fromarray(a)
    assert img.mode == "I;16"
    out = load_saved(tmp_path, img)
    assert [out.getpixel((x, 0))[0] for x in range(4)] == [0, 64, 128, 255]


def test_32_bit_and_float_modes(tmp_path):
    i32 = Image.fromarray(np.array([[0, 100_000, 200_000]], dtype=np.int32))
    assert i32.mode == "I"
    out = load_saved(tmp_path, i32, "i32.tiff")
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    out = load_saved(tmp_path, f, "f.tiff")
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_cmyk(tmp_path):
    out = load_saved(tmp_path, Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "c.jpg", quality=95)
    r, g, b = out.getpixel((4, 4))
    assert r > 240 and g < 15 and b < 15


def test_palette_with_transparency_goes_on_white(tmp_path):
    img = Image.new("P", (4, 2), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.putpixel((0, 0), 1)
    img.info["transparency"] = 0  # index 0 (black) is transparent
    out = load_saved(tmp_path, img, transparency=0)
    assert out.getpixel((0, 0)) == (255, 0, 0) and out.getpixel((3, 1)) == (255, 255, 255)


@pytest.mark.parametrize("mode,colour", [("RGBA", (255, 0, 0, 0)), ("LA", (0, 0))])
def test_transparent_pixels_go_on_white(tmp_path, mode, colour):
    img = Image.new(mode, (4, 4), colour)
    half = (255, 0, 0, 128) if mode == "RGBA" else (0, 128)
    img.putpixel((1, 1), half)
    out = load_saved(tmp_path, img)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert abs(out.getpixel((1, 1))[1] - 127) <= 2  # half-transparent: half way to white


def test_greyscale_and_bilevel(tmp_path):
    assert load_saved(tmp_path, Image.new("L", (3, 3), 77)).getpixel((1, 1)) == (77, 77, 77)
    assert load_saved(tmp_path, Image.new("1", (3, 3), 1), "b.png").getpixel((1, 1)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display after turning 90 degrees clockwise
    out = load_saved(tmp_path, img, exif=exif)
    assert out.size == (20, 40)
    assert out.getpixel((10, 5)) == (255, 0, 0) and out.getpixel((10, 35)) == (0, 0, 255)  # left is now top


# resizing

def qwen2vl_smart_resize(height, width, factor=28, min_pixels=56 * 56, max_pixels=14 * 14 * 4 * 1280):
    """transformers' Qwen2-VL smart_resize, copied as the reference (it raises where ours pads)."""
    if height < factor or width < factor or max(height, width) / min(height, width) > 200:
        raise ValueError
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def test_smart_resize_matches_qwen2vl_where_it_is_defined():
    rng = random.Random(0)
    for _ in range(2000):
        h, w = rng.randint(28, 3000), rng.randint(28, 3000)
        assert smart_resize(h, w, 28, 56 * 56, 14 * 14 * 4 * 1280) == qwen2vl_smart_resize(h, w)


@pytest.mark.parametrize("h,w", [(1, 1), (3, 900), (900, 3), (10, 3000), (64, 64), (480, 640), (5000, 4000)])
def test_smart_resize_never_raises_and_respects_bounds(h, w):
    H, W = smart_resize(h, w, factor=16, min_pixels=32 * 32, max_pixels=256 * 256)
    assert H % 16 == 0 and W % 16 == 0 and H >= 16 and W >= 16
    assert H * W <= 256 * 256


def test_native_transform_keeps_grid_images_unchanged():
    img = noisy_rgb(64, 48)
    x = ImageTransform("native", patch_size=8, merge_size=2)(img)
    assert x.shape == (3, 48, 64)
    assert torch.allclose(x, to_tensor(img))


@pytest.mark.parametrize("w,h", [(1, 1), (300, 1), (1, 300), (3000, 10), (7, 5), (101, 67)])
def test_tiny_and_thin_images_are_padded_up(w, h):
    t = ImageTransform("native", patch_size=8, merge_size=2, min_pixels=32 * 32, max_pixels=128 * 128)
    x = t(Image.new("RGB", (w, h), (255, 0, 0)))
    _, H, W = x.shape
    assert H % 16 == 0 and W % 16 == 0 and H * W <= 128 * 128
    red = denormalize(x)[0] > 0.99  # (H, W): where the image is; the rest is padding
    rows, cols = red.any(1).sum().item(), red.any(0).sum().item()
    assert rows > 0 and cols > 0
    if max(w, h) / min(w, h) > 10:  # the aspect ratio survives (up to the 200:1 limit and rounding)
        assert (rows < cols) == (h < w) and min(rows, cols) < min(H, W)


def test_fixed_transform_and_its_validation():
    x = ImageTransform("fixed", size=(32, 64))(noisy_rgb(100, 30))
    assert x.shape == (3, 32, 64)
    with pytest.raises(ValueError, match="multiples of patch_size\\*merge_size = 16"):
        ImageTransform("fixed", size=40)
    with pytest.raises(ValueError, match="mode must be 'native' or 'fixed'"):
        ImageTransform("stretch")


def test_normalisation_round_trip():
    img = noisy_rgb(16, 16)
    x = to_tensor(img)
    assert x.mean().abs() < 1.0 and x.dtype == torch.float32
    back = (denormalize(x) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(back, np.asarray(img))


# augmentation

def test_augmentation_is_seeded_and_keeps_left_right_and_colours():
    img = Image.new("RGB", (64, 64), (255, 0, 0))
    img.paste((0, 0, 255), (32, 0, 64, 64))  # red left, blue right
    t = ImageTransform("native", augment=True)
    a, b = t(img, random.Random(1)), t(img, random.Random(1))
    assert torch.equal(a, b)
    assert any(not torch.equal(a, t(img, random.Random(s))) for s in range(2, 6))
    for s in range(20):
        x = denormalize(t(img, random.Random(s)))
        left, right = x[:, :, : x.shape[2] // 4].mean((1, 2)), x[:, :, -x.shape[2] // 4:].mean((1, 2))
        assert left[0] > left[2] + 0.5 and right[2] > right[0] + 0.5  # never flipped, never recoloured
    with pytest.raises(ValueError, match="needs an rng"):
        t(img)
