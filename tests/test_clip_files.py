"""Clip files a user hands over: frame folders in natural order, animated GIF / WebP / PNG, thinning to max_frames,
and every bad clip as one ImageError line."""

import io
from pathlib import Path

import numpy as np
import pytest
from clip_writers import frames_to_folder, frames_to_gif
from PIL import Image, ImageSequence

from mmrope.data.images import ImageError
from mmrope.data.videos import (
    Clip,
    frame_indices,
    gif_frames,
    is_clip_path,
    load_clip,
)

# Flat colours survive GIF's palette exactly, and no two neighbours are equal (Pillow merges repeated GIF frames).
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (9, 9, 9),
           (200, 100, 50), (50, 100, 200), (128, 128, 128), (0, 0, 0), (255, 255, 255)]


def flat_frames(n, size=(16, 12)):
    return [Image.new("RGB", size, COLOURS[i % len(COLOURS)]) for i in range(n)]


def colours(clip):
    return [frame.getpixel((3, 3)) for frame in clip.frames]


def can_write_animated_webp():
    # features.check("webp_anim") is gone from recent Pillow (every WebP build animates); ask by trying instead.
    try:
        buf = io.BytesIO()
        flat_frames(2)[0].save(buf, format="WEBP", save_all=True, append_images=flat_frames(2)[1:], lossless=True)
        return Image.open(buf).n_frames == 2
    except Exception:  # noqa: BLE001 - no WebP support at all
        return False


needs_webp = pytest.mark.skipif(not can_write_animated_webp(), reason="Pillow built without animated WebP")


def assert_one_line_error(excinfo, path, words):
    msg = str(excinfo.value)
    assert "\n" not in msg and str(path) in msg, msg
    assert any(w in msg for w in words), msg


# round trips

def test_gif_round_trip(tmp_path):
    path = frames_to_gif(flat_frames(5), tmp_path / "clip.gif", fps=4.0)
    clip = load_clip(path)
    assert isinstance(clip, Clip) and clip.path == str(path)
    assert colours(clip) == COLOURS[:5]
    assert all(f.mode == "RGB" and f.size == (16, 12) for f in clip.frames)
    assert clip.fps == pytest.approx(4.0)


def test_gif_frames_are_independent_copies(tmp_path):
    clip = load_clip(frames_to_gif(flat_frames(3), tmp_path / "clip.gif"))
    assert len({id(f) for f in clip.frames}) == 3
    assert colours(clip) == COLOURS[:3]


def test_gif_with_transparency_is_composited_on_white(tmp_path):
    frames = [Image.new("RGBA", (8, 8), (0, 0, 0, 0)) for _ in range(2)]
    frames[0].paste((255, 0, 0, 255), (0, 0, 4, 8))  # red left half
    frames[1].paste((0, 0, 255, 255), (4, 0, 8, 8))  # blue right half
    clip = load_clip(frames_to_gif(frames, tmp_path / "alpha.gif"))
    assert [f.getpixel((1, 4)) for f in clip.frames] == [(255, 0, 0), (255, 255, 255)]  # disposal 2: red is gone
    assert [f.getpixel((6, 4)) for f in clip.frames] == [(255, 255, 255), (0, 0, 255)]


@needs_webp
def test_webp_round_trip_and_fps_from_durations(tmp_path):
    path = tmp_path / "clip.webp"
    frames = flat_frames(4)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=[100, 100, 200, 400], loop=0,
                   lossless=True)
    clip = load_clip(path)
    assert colours(clip) == COLOURS[:4]
    assert clip.fps == pytest.approx(1000 / 200)  # mean duration 200 ms


def test_animated_png_round_trip(tmp_path):
    path = tmp_path / "clip.png"
    frames = flat_frames(3)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=[50, 100, 150])
    clip = load_clip(path)
    assert colours(clip) == COLOURS[:3]
    assert clip.fps == pytest.approx(10.0)


def test_folder_round_trip(tmp_path):
    folder = frames_to_folder(flat_frames(3), tmp_path / "frames")
    assert sorted(p.name for p in folder.iterdir()) == ["0000.png", "0001.png", "0002.png"]
    clip = load_clip(folder)
    assert colours(clip) == COLOURS[:3] and clip.fps is None and clip.path == str(folder)


def test_folder_natural_order_ignores_hidden_and_other_files(tmp_path):
    for i, frame in enumerate(flat_frames(12), start=1):
        frame.save(tmp_path / f"frame{i}.png")
    (tmp_path / ".hidden.png").write_bytes(b"not read")
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (16, 12)).save(tmp_path / "FRAME13.JPG")  # extensions are case-insensitive
    clip = load_clip(tmp_path)
    assert colours(clip)[:12] == COLOURS[:12]  # frame2 before frame10
    assert len(clip.frames) == 13


# thinning long clips

def test_frame_indices_keep_first_and_last_evenly():
    assert frame_indices(5, 32) == [0, 1, 2, 3, 4]
    assert frame_indices(10, 4) == [0, 3, 6, 9]
    assert frame_indices(9, 5) == [0, 2, 4, 6, 8]
    assert frame_indices(9, 1) == [4]
    for n in range(2, 60):
        for m in range(2, n + 1):
            idx = frame_indices(n, m)
            assert len(set(idx)) == m and idx[0] == 0 and idx[-1] == n - 1 and idx == sorted(idx)


def test_long_gif_is_thinned_and_fps_scaled(tmp_path):
    path = frames_to_gif(flat_frames(10), tmp_path / "long.gif", fps=10.0)
    clip = load_clip(path, max_frames=4)
    assert colours(clip) == [COLOURS[i] for i in (0, 3, 6, 9)]
    assert clip.fps == pytest.approx(10.0 * 3 / 9)  # same 0.9 s span in 3 steps


def test_long_folder_is_thinned(tmp_path):
    folder = frames_to_folder(flat_frames(9), tmp_path / "f")
    (folder / "0004.png").write_bytes(b"garbage")  # kept, so read
    (folder / "0003.png").write_bytes(b"garbage")  # dropped, so never read
    with pytest.raises(ImageError, match="0004.png"):
        load_clip(folder, max_frames=5)
    (folder / "0004.png").unlink()
    clip = load_clip(folder, max_frames=3)  # 0000, 0001, 0002, 0005, ... 0008: keeps 0000, 0005, 0008
    assert colours(clip) == [COLOURS[i] for i in (0, 5, 8)]


def test_one_frame_clip_has_no_fps(tmp_path):
    clip = load_clip(frames_to_gif(flat_frames(9), tmp_path / "c.gif", fps=5.0), max_frames=1)
    assert colours(clip) == [COLOURS[4]] and clip.fps is None


def test_max_frames_below_one(tmp_path):
    with pytest.raises(ValueError, match="max_frames"):
        load_clip(tmp_path, max_frames=0)


# still images and is_clip_path

def test_still_image_is_a_one_frame_clip(tmp_path):
    path = tmp_path / "still.png"
    Image.new("L", (10, 6), 77).save(path)
    clip = load_clip(path)
    assert len(clip.frames) == 1 and clip.frames[0].mode == "RGB" and clip.frames[0].getpixel((0, 0)) == (77,) * 3
    assert clip.fps is None


def test_one_frame_gif_is_a_still(tmp_path):
    clip = load_clip(frames_to_gif(flat_frames(1), tmp_path / "one.gif"))
    assert colours(clip) == [COLOURS[0]] and clip.fps is None


def test_multi_picture_jpeg_is_a_still(tmp_path):
    # Cameras write MPO: a photo and a smaller preview. n_frames is 2, but it is not a clip.
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (32, 24), (0, 0, 255)).save(path, format="MPO", save_all=True,
                                                   append_images=[Image.new("RGB", (8, 6))])
    assert Image.open(path).n_frames == 2
    assert not is_clip_path(path)
    clip = load_clip(path)
    assert len(clip.frames) == 1 and clip.frames[0].size == (32, 24)


def test_is_clip(tmp_path):
    still = tmp_path / "still.png"
    Image.new("RGB", (4, 4)).save(still)
    garbage = tmp_path / "garbage.gif"
    garbage.write_bytes(b"GIF89a garbage")
    assert is_clip_path(tmp_path)
    assert is_clip_path(frames_to_gif(flat_frames(2), tmp_path / "a.gif"))
    assert not is_clip_path(frames_to_gif(flat_frames(1), tmp_path / "one.gif"))
    assert not is_clip_path(still)
    assert not is_clip_path(garbage)
    assert not is_clip_path(tmp_path / "missing.gif")


@needs_webp
def test_is_clip_webp(tmp_path):
    path = tmp_path / "a.webp"
    flat_frames(2)[0].save(path, save_all=True, append_images=flat_frames(2)[1:], lossless=True)
    assert is_clip_path(path)


# errors: one line, naming the path

def test_missing_path(tmp_path):
    path = tmp_path / "nope.gif"
    with pytest.raises(ImageError) as e:
        load_clip(path)
    assert_one_line_error(e, path, ["no such file or folder"])


@pytest.mark.parametrize("contents", [{}, {"notes.txt": b"hello", ".0001.png": b"hidden"}])
def test_folder_without_frames(tmp_path, contents):
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(ImageError) as e:
        load_clip(tmp_path)
    assert_one_line_error(e, tmp_path, ["no frames"])


def test_folder_mixed_sizes(tmp_path):
    frames_to_folder(flat_frames(3), tmp_path)
    Image.new("RGB", (20, 12)).save(tmp_path / "0002.png")
    with pytest.raises(ImageError) as e:
        load_clip(tmp_path)
    assert_one_line_error(e, tmp_path, ["0002.png"])
    assert "20x12" in str(e.value) and "16x12" in str(e.value) and "0000.png" in str(e.value)


def test_folder_frame_that_is_not_an_image(tmp_path):
    frames_to_folder(flat_frames(3), tmp_path)
    bad = tmp_path / "0001.png"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    with pytest.raises(ImageError) as e:
        load_clip(tmp_path)
    assert_one_line_error(e, bad, ["not an image", "cannot open"])


def test_truncated_gif(tmp_path):
    data = frames_to_gif(flat_frames(6), tmp_path / "full.gif").read_bytes()
    path = tmp_path / "cut.gif"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as e:
        load_clip(path)
    assert_one_line_error(e, path, ["truncated", "corrupt"])


def test_garbage_and_empty_files(tmp_path):
    garbage, empty = tmp_path / "garbage.gif", tmp_path / "empty.webp"
    garbage.write_bytes(b"GIF89a garbage")
    empty.write_bytes(b"")
    for path, words in [(garbage, ["cannot open", "not an image"]), (empty, ["empty file"])]:
        with pytest.raises(ImageError) as e:
            load_clip(path)
        assert_one_line_error(e, path, words)


def test_too_many_pixels(tmp_path):
    path = frames_to_gif(flat_frames(3, size=(40, 30)), tmp_path / "big.gif")
    with pytest.raises(ImageError) as e:
        load_clip(path, max_pixels=1000)
    assert_one_line_error(e, path, ["40x30 = 1200 pixels is over the limit max_pixels=1000"])
    folder = frames_to_folder(flat_frames(2, size=(40, 30)), tmp_path / "frames")
    with pytest.raises(ImageError, match="over the limit"):
        load_clip(folder, max_pixels=1000)


def test_errors_pickle(tmp_path):
    # DataLoader workers send errors back pickled
    import pickle

    with pytest.raises(ImageError) as e:
        load_clip(tmp_path / "nope")
    assert str(pickle.loads(pickle.dumps(e.value))) == str(e.value)


# what a clip costs is bounded before decoding: a few KB of GIF can describe billions of pixels

def gif_of_dots(width: int, height: int, frames: int, screen: tuple[int, int] | None = None) -> bytes:
    """A GIF with a width x height canvas and ``frames`` frames of one pixel each, the first in the bottom-right
    corner: 23 bytes a frame, while every frame decodes to the whole canvas. ``screen`` is the size its header says
    (default: the canvas); Pillow enlarges a smaller one to hold the frames."""
    dots = [(width - 1 - i % width, height - 1 - i // width % height) for i in range(frames)]
    return gif_bytes(screen or (width, height), dots)


def gif_bytes(screen: tuple[int, int], dots: list[tuple[int, int]]) -> bytes:
    """A GIF whose header says ``screen`` and whose frames are one white pixel each, at ``dots``, 100 ms each."""
    import struct

    data = bytearray(b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff")
    for x, y in dots:
        data += b"\x21\xf9\x04\x04" + struct.pack("<H", 10) + b"\x00\x00"  # graphic control: 100 ms, keep drawn
        data += b"\x2c" + struct.pack("<HHHH", x, y, 1, 1) + b"\x00"  # a 1x1 image
        data += b"\x02\x02\x4c\x01\x00"  # LZW: clear, pixel 1, end
    return bytes(data + b"\x3b")


def test_gif_of_dots_is_what_pillow_reads(tmp_path):
    path = tmp_path / "dots.gif"
    path.write_bytes(gif_of_dots(20, 10, 7))
    clip = load_clip(path)
    assert len(clip.frames) == 7 and clip.frames[0].size == (20, 10) and clip.fps == pytest.approx(10)
    assert clip.frames[-1].getpixel((13, 9)) == (255, 255, 255)  # every dot drawn so far
    assert gif_frames(path, 100) == (7, 20, 10)


@pytest.mark.parametrize("width, height, frames, screen, words", [
    (4000, 4000, 300, None, "300 frames of 4000x4000 = 4800000000 pixels to decode is over the limit max_clip_pixels="),
    (7000, 7000, 200, None, "200 frames of 7000x7000 = 9800000000 pixels to decode is over the limit max_clip_pixels="),
    (4000, 4000, 300, (1, 1), "300 frames of 4000x4000 = 4800000000 pixels"),  # a header that says 1 x 1
    (10, 10, 100_000, None, "more than 1000 frames is over the limit max_clip_frames=1000"),
])
def test_a_few_kb_gif_is_refused_in_bounded_time_and_memory(tmp_path, width, height, frames, screen, words):
    """The first two once took 25 s and 49 s and up to 6.9 GB; the last makes Pillow read 100,000 frame headers to
    count them. Measured in a fresh process: its peak memory is its own."""
    import subprocess
    import sys

    path = tmp_path / "dots.gif"
    path.write_bytes(gif_of_dots(width, height, frames, screen))
    assert path.stat().st_size < 25 * frames + 100
    probe = ("import resource, sys, time\n"
             "from mmrope.data.videos import load_clip\n"
             "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "start = time.perf_counter()\n"
             "try:\n"
             "    load_clip(sys.argv[1])\n"
             "except ValueError as e:\n"
             "    print(e)\n"
             "print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    proc = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=120)
    error, measured = proc.stdout.splitlines()
    seconds, kilobytes = measured.split()
    assert error.startswith(f"{path}: ") and words in error
    assert float(seconds) < 2 and int(kilobytes) < 100_000  # < 100 MB over what the imports took


def test_clip_limits_count_the_frames_decoded(tmp_path):
    path = frames_to_gif(flat_frames(6), tmp_path / "six.gif")  # 16 x 12
    assert len(load_clip(path, max_clip_pixels=6 * 16 * 12, max_clip_frames=6).frames) == 6
    with pytest.raises(ImageError, match="6 frames of 16x12 = 1152 pixels to decode is over the limit"):
        load_clip(path, max_clip_pixels=6 * 16 * 12 - 1)
    with pytest.raises(ImageError, match="more than 5 frames is over the limit max_clip_frames=5"):
        load_clip(path, max_clip_frames=5)
    middle = load_clip(path, max_frames=1, max_clip_pixels=4 * 16 * 12)  # decoding stops at the kept frame, 3 of 6
    assert colours(middle) == [COLOURS[2]] and middle.fps is None
    folder = frames_to_folder(flat_frames(4), tmp_path / "frames")
    with pytest.raises(ImageError, match="4 frames of 16x12 = 768 pixels to decode is over the limit"):
        load_clip(folder, max_clip_pixels=700)


def test_gif_frames_agree_with_pillow(tmp_path):
    rng = np.random.default_rng(0)
    noisy = [Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)) for _ in range(5)]
    noisy[0].save(tmp_path / "local_palettes.gif", save_all=True, append_images=noisy[1:], duration=50,
                  comment=b"x" * 600)
    frames_to_gif(flat_frames(9), tmp_path / "flat.gif")
    (tmp_path / "dots.gif").write_bytes(gif_of_dots(8, 8, 40))
    (tmp_path / "grows.gif").write_bytes(gif_of_dots(30, 20, 3, screen=(4, 4)))  # Pillow enlarges the canvas
    for path in [*tmp_path.iterdir(), Path(__file__).parents[1] / "data/samples/clips/moves.gif"]:
        with Image.open(path) as img:
            frames = []
            for frame in ImageSequence.Iterator(img):
                frames.append(frame.size)
            assert gif_frames(path, 10**6) == (len(frames), *max(frames)), path
    assert gif_frames(tmp_path / "dots.gif", 10)[0] == 10


def test_frames_that_grow_the_canvas_give_frames_of_one_size(tmp_path):
    path = tmp_path / "grows.gif"  # the header says 4 x 4; the second frame's dot is at (29, 19)
    path.write_bytes(gif_bytes((4, 4), [(0, 0), (29, 19)]))
    with Image.open(path) as img:
        assert [frame.size for frame in ImageSequence.Iterator(img)] == [(4, 4), (30, 20)]
    assert gif_frames(path, 10) == (2, 30, 20)
    clip = load_clip(path)
    assert [frame.size for frame in clip.frames] == [(30, 20), (30, 20)]  # so that a clip stacks in any resize
    with pytest.raises(ImageError, match="2 frames of 30x20 = 1200 pixels to decode"):  # the grown canvas counts
        load_clip(path, max_clip_pixels=1000)


def test_a_named_pipe_is_never_opened(tmp_path):
    import os

    fifo = tmp_path / "pipe.gif"
    os.mkfifo(fifo)
    assert not is_clip_path(fifo)
    with pytest.raises(ImageError) as e:
        load_clip(fifo)
    assert_one_line_error(e, fifo, ["a named pipe (FIFO), not a regular file"])
    folder = frames_to_folder(flat_frames(2), tmp_path / "frames")
    os.mkfifo(folder / "0002.png")
    with pytest.raises(ImageError) as e:  # named, not dropped
        load_clip(folder)
    assert_one_line_error(e, folder / "0002.png", ["a named pipe (FIFO)"])
