"""The shapes and clips benchmarks drawn as one batch of tensors, on any device: Pillow's renderer, vectorised.

``shapes.render_scene`` draws one scene at a time with Pillow; a GPU that trains dozens of small runs at once needs
thousands of images a second, which the host cannot draw. Here the scenes are still *sampled* on the host by the
same samplers (``sample_scene``, ``sample_clip``: cheap, and the source of every caption), packed into a few small
tensors (:func:`pack_scenes`), and *drawn* on the device in one sequence of tensor ops (:func:`render_packed`):

1. each object is rasterised on the 4x supersampled canvas (``SUPERSAMPLE``) with Pillow's own rules, worked out
   per row: coordinates truncated to whole pixels; a polygon (the vertices of ``shapes._polygon``) filled from
   round-half-up of each row's leftmost edge crossing to round-half-down of its rightmost (``polygon_generic``); a
   disc filled between the boundary points of Pillow's ellipse walk (``ellipse_new``); a later object covers an
   earlier one, as Pillow paints them in order;
2. each 4 x 4 block is summed and rounded as ``Image.reduce(4)`` rounds, (sum + 8) >> 4 per channel;
3. a noisy background adds the same noise as ``render_scene`` (the bytes come from the scene's own
   ``random.Random``, drawn on the host), weighted by the reduced object mask, then ``rint`` and clip, in float32
   as numpy does it;
4. ``normalize=True`` applies ``images.to_tensor``'s normalisation.

The same (split, seed, index) gives the same scene dict, so the same caption, and the same pixels: on the tests'
scenes (levels 1-3, every shape, plain and noisy, 32-256 px, objects scaled or not, and clip frames) every pixel
equals Pillow's, bit for bit (``tests/test_render.py``). One rule of Pillow is not copied (a fix-up for polygon
corners that meet at a whole pixel, "connect discontiguous corners"); it changed no pixel of those scenes, and where
it would, the difference is one edge pixel of one row.

On a CPU Pillow is faster (it fills only the shapes' spans, this touches every supersampled pixel of the canvas);
on a GPU the whole batch is a few dozen kernels (docs/performance.md, "Many runs at once").

Einstein legend: n scenes (or frames), k objects of a scene, s supersampled side, h w output side, c channels.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from mmrope.data.clips import clip_state, frame_times
from mmrope.data.images import MEAN, STD
from mmrope.data.shapes import SUPERSAMPLE, _polygon

MAX_VERTICES = 4  # square and diamond; a triangle repeats its last vertex, which adds an edge of length zero
CHUNK_ELEMENTS = (1 << 24, 1 << 28)  # supersampled pixels drawn at once (CPU, GPU): bounds the memory of a pass


@dataclass
class PackedScenes:
    """A batch of scenes (or clip frames) as the tensors drawing needs, built on the host.

    Coordinates are whole supersampled pixels, truncated as Pillow truncates the floats ``render_scene`` hands it:
    a disc is its bounding box, a polygon its vertices (a triangle repeats its last one)."""

    size: int  # output side in pixels
    kind: torch.Tensor  # (n, k) int8: -1 an empty slot (a scene with fewer objects), 0 a disc, 1 a polygon
    box: torch.Tensor  # (n, k, 4) int32 x0, y0, x1, y1 of a disc's bounding box
    vertices: torch.Tensor  # (n, k, MAX_VERTICES, 2) int32 (x, y) of a polygon
    rgb: torch.Tensor  # (n, k, 3) uint8
    background: torch.Tensor  # (n,) uint8 grey level
    noise: torch.Tensor | None  # (n, h, w) float32 in [-amplitude, amplitude], None when no scene is noisy

    FIELDS = ("kind", "box", "vertices", "rgb", "background", "noise")

    def __len__(self) -> int:
        return len(self.background)

    def _map(self, fn) -> PackedScenes:
        return PackedScenes(self.size, **{k: None if getattr(self, k) is None else fn(getattr(self, k))
                                          for k in self.FIELDS})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedScenes:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> PackedScenes:
        """Page-locked copies (a DataLoader with ``pin_memory=True`` calls this), so the move to a GPU is
        asynchronous."""
        return self._map(torch.Tensor.pin_memory)


def pack_scenes(scenes: list[dict], size: int | None = None, scale_objects: bool = True) -> PackedScenes:
    """Scenes as ``render_scene`` reads them (``canvas``, ``background``, ``noise``, ``noise_seed``, ``objects`` with
    ``shape``, ``x``, ``y``, ``r``, ``rgb``) -> the tensors :func:`render_packed` draws, at ``size`` (default: the
    first scene's canvas) and with ``scale_objects`` as ``render_scene`` takes it."""
    if not scenes:
        raise ValueError("pack_scenes needs at least one scene")
    size = size or scenes[0]["canvas"]
    n, k = len(scenes), max(1, max(len(s["objects"]) for s in scenes))
    side = size * SUPERSAMPLE
    kind = np.full((n, k), -1, dtype=np.int8)
    box, vertices = np.zeros((n, k, 4), dtype=np.int32), np.zeros((n, k, MAX_VERTICES, 2), dtype=np.int32)
    rgb = np.zeros((n, k, 3), dtype=np.uint8)
    background = np.array([s["background"] for s in scenes], dtype=np.uint8)
    noisy = any(s["noise"] for s in scenes)
    noise = np.zeros((n, size, size), dtype=np.float32) if noisy else None
    for i, scene in enumerate(scenes):
        unit = (size if scale_objects else scene["canvas"]) * SUPERSAMPLE  # pixels per unit of radius
        for j, o in enumerate(scene["objects"]):
            cx, cy, r = o["x"] * side, o["y"] * side, o["r"] * unit
            points = _polygon(o["shape"], cx, cy, r)
            rgb[i, j] = o["rgb"]
            if points is None:  # Pillow's ellipse([cx - r, cy - r, cx + r, cy + r]) truncates the box to ints
                kind[i, j], box[i, j] = 0, [int(v) for v in (cx - r, cy - r, cx + r, cy + r)]
            else:
                kind[i, j] = 1
                vertices[i, j] = [(int(x), int(y)) for x, y in points + points[-1:] * (MAX_VERTICES - len(points))]
        if scene["noise"]:  # exactly render_scene's noise: the same bytes, the same float32 arithmetic
            noise_rng = random.Random(f"noise:{scene['noise_seed']}:{size}")
            u = np.frombuffer(noise_rng.randbytes(size * size), dtype=np.uint8).reshape(size, size)
            noise[i] = (u.astype(np.float32) / 255.0 * 2.0 - 1.0) * scene["noise"]
    return PackedScenes(size, *(torch.from_numpy(a) for a in (kind, box, vertices, rgb, background)),
                        torch.from_numpy(noise) if noisy else None)


def clip_frame_scenes(clips: list[dict], frames: int | None = None) -> list[dict]:
    """Every frame of every clip as a scene, clip-major, as ``clips.render_clip`` draws them (no noise)."""
    return [{"canvas": c["canvas"], "background": c["background"], "noise": 0, "noise_seed": 0,
             "objects": clip_state(c, tau)} for c in clips for tau in frame_times(frames or c["frames"])]


def render_packed(packed: PackedScenes, normalize: bool = True) -> torch.Tensor:
    """Draw ``packed`` on its device -> (n, 3, h, w) float32: grey levels 0-255 (``normalize=False``) or normalised
    as ``images.to_tensor`` does."""
    device, n, k = packed.background.device, len(packed), packed.kind.shape[1]
    size, s = packed.size, packed.size * SUPERSAMPLE
    chunk = max(1, CHUNK_ELEMENTS[device.type == "cuda"] // (s * s))
    colours = torch.cat((packed.background[:, None, None].expand(-1, 1, 3), packed.rgb), dim=1).float()  # (n, k+1, c)
    sums, covered = [], []
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        owner = _owner(packed.kind[part], packed.box[part], packed.vertices[part], s)  # (b, s, s) uint8
        counts = torch.stack([_block_count(owner == j, size) for j in range(k + 1)], dim=1).float()  # (b, k+1, h, w)
        sums.append(torch.einsum("bjhw,bjc->bchw", counts, colours[part]))  # each 4 x 4 block's sum of colours
        covered.append(counts[:, 0])
    block_sum, background_count = torch.cat(sums), torch.cat(covered)  # exact integers in float32
    pixels = torch.div(block_sum + 8, 16, rounding_mode="floor")  # Image.reduce(4): (sum + 8) >> 4
    if packed.noise is not None:
        mask = torch.div((SUPERSAMPLE**2 - background_count) * 255 + 8, 16, rounding_mode="floor")  # reduced "L" mask
        background = 1.0 - mask / 255.0
        pixels = torch.clamp(torch.round(pixels + (packed.noise * background)[:, None]), 0, 255)
    if not normalize:
        return pixels
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    return (pixels / 255.0 - mean) / std


def _block_count(mask: torch.Tensor, size: int) -> torch.Tensor:
    """(b, s, s) bool -> (b, size, size) uint8: how many pixels of each 4 x 4 block are set. Summed columns first and
    rows second, each over a contiguous axis: summing both at once over a strided view is several times slower."""
    b, s = mask.shape[0], mask.shape[1]
    columns = mask.view(torch.uint8).view(b * s, size, SUPERSAMPLE).sum(-1, dtype=torch.uint8)  # (b s, size)
    return columns.view(b, size, SUPERSAMPLE, size).sum(2, dtype=torch.uint8)


def _owner(kind: torch.Tensor, box: torch.Tensor, vertices: torch.Tensor, s: int) -> torch.Tensor:
    """(b, s, s) uint8: which object each supersampled pixel shows, 0 the background, j + 1 object j; a later object
    covers an earlier one, as Pillow paints them in order. Pillow fills every shape row by row, so each object is
    one span of columns per row (:func:`_disc_spans`, :func:`_polygon_spans`)."""
    pixel = torch.arange(s, device=kind.device)
    disc_first, disc_last = _disc_spans(box, pixel)
    poly_first, poly_last = _polygon_spans(vertices, pixel)
    is_disc = (kind == 0)[..., None]
    first = torch.where(is_disc, disc_first, poly_first)  # (b, k, s rows)
    last = torch.where(is_disc, disc_last, poly_last)
    last = torch.where((kind >= 0)[..., None], last, first - 1)  # an empty slot: an empty span
    x, first, last = pixel.view(1, 1, -1).short(), first.short(), last.short()  # int16: a quarter of the traffic
    owner = torch.zeros(kind.shape[0], s, s, dtype=torch.uint8, device=kind.device)
    for j in range(kind.shape[1]):
        inside = (x >= first[:, j, :, None]) & (x <= last[:, j, :, None])  # (b, s rows, s cols)
        owner.masked_fill_(inside, j + 1)
    return owner


def _disc_spans(box: torch.Tensor, pixel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow's filled ellipse in the box (b, k, 4) -> the first and last column of each row, (b, k, s) each.

    Pillow (``Draw.c``, ``ellipse_new``) works on a doubled lattice centred on the box, X = 2x - (x0 + x1), with
    semi-axes a = x1 - x0 and b = y1 - y0, walks the boundary choosing the lattice point that minimises
    |a^2 Y^2 + b^2 X^2 - a^2 b^2|, and fills each row between its outermost boundary points. Where the boundary is
    steep, a row's outermost point is the best X of that row; where it is flat, the farthest column whose best Y
    reaches the row. A row reaches the larger of the two."""
    box = box.long()
    a, b = (box[..., 2] - box[..., 0])[..., None], (box[..., 3] - box[..., 1])[..., None]  # (b, k, 1)
    Y = (2 * pixel.view(1, 1, -1) - (box[..., 1] + box[..., 3])[..., None]).abs()  # (b, k, s) per row
    by_row = _nearest_lattice(Y, b, a)  # (b, k, s): |X| of each row's boundary point, -1 past the ellipse
    lattice = (a % 2) + 2 * torch.arange(pixel.shape[0], device=box.device).view(1, 1, -1)  # |X| = a%2, a%2 + 2, ...
    col_y = _nearest_lattice(lattice, a, b)  # (b, k, s): each column's boundary |Y|, non-increasing, -1 past it
    reach = torch.searchsorted(-col_y.contiguous(), -Y.contiguous(), right=True)  # columns whose |Y| >= the row's
    by_col = torch.where(reach > 0, (a % 2) + 2 * (reach - 1), torch.full_like(reach, -1))
    half = torch.maximum(by_row, by_col)  # doubled half-width, parity of a; -1: empty row
    centre = box[..., 0, None] + box[..., 2, None]  # (b, k, 1), doubled centre: same parity as a
    first = torch.where(half >= 0, torch.div(centre - half, 2, rounding_mode="floor"), torch.ones_like(half))
    last = torch.where(half >= 0, torch.div(centre + half, 2, rounding_mode="floor"), torch.zeros_like(half))
    return first, last


def _nearest_lattice(v: torch.Tensor, half_v: torch.Tensor, half_c: torch.Tensor) -> torch.Tensor:
    """For each |coordinate| v on an axis of (doubled) semi-axis ``half_v``, the lattice value c >= 0 of the other
    axis (same parity as ``half_c``) that minimises |half_c^2 v^2 + half_v^2 c^2 - half_v^2 half_c^2|, ties to the
    larger; -1 where v is past the ellipse. Integers throughout, as Pillow's are."""
    target = half_c * half_c * (half_v * half_v - v * v)  # half_v^2 c^2 should be near this
    root = torch.sqrt(target.clamp(min=0).double() / (half_v * half_v).clamp(min=1).double()).floor().long()
    parity = half_c % 2
    base = root - (root - parity) % 2  # the largest lattice value <= the root (up to a float rounding)
    best, best_err = None, None
    for c in (base + 2, base, base - 2):  # from the largest: a tie keeps the larger
        c = torch.maximum(c, parity)
        err = (half_v * half_v * c * c - target).abs()
        if best is None:
            best, best_err = c, err
        else:
            better = err < best_err
            best, best_err = torch.where(better, c, best), torch.where(better, err, best_err)
    return torch.where(v <= half_v, best, torch.full_like(best, -1))


def _polygon_spans(vertices: torch.Tensor, pixel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow's filled polygon (``Draw.c``, ``polygon_generic``) on integer vertices (b, k, V, 2) -> the first and
    last column of each row, (b, k, s) each (first > last: nothing).

    Each row y crosses every non-horizontal edge whose rows include y at x = (y - y0) * dx + x0 in float32, as
    Pillow computes it; the row is filled from round-half-up of the leftmost crossing to round-half-down of the
    rightmost, and a horizontal edge fills its own row between its ends. Pillow's extra rule for corners that meet
    at a whole pixel ("connect discontiguous corners") is not copied: it changed no pixel of the tests' squares,
    triangles and diamonds."""
    y = pixel.view(1, 1, -1)  # (1, 1, s)
    lo = torch.full((*vertices.shape[:2], len(pixel)), float("inf"), device=vertices.device)  # (b, k, s)
    hi = torch.full_like(lo, float("-inf"))
    for e in range(vertices.shape[2]):
        (x0, y0), (x1, y1) = vertices[:, :, e].unbind(-1), vertices[:, :, (e + 1) % vertices.shape[2]].unbind(-1)
        x0, y0, x1, y1 = (t[..., None] for t in (x0, y0, x1, y1))  # (b, k, 1)
        rows = (y >= torch.minimum(y0, y1)) & (y <= torch.maximum(y0, y1))
        flat = y0 == y1
        dx = (x1 - x0).float() / torch.where(flat, 1, y1 - y0).float()
        x = (y - y0).float() * dx + x0.float()  # float32, as Pillow's edge crossing
        left = torch.where(flat, torch.minimum(x0, x1).float(), x)
        right = torch.where(flat, torch.maximum(x0, x1).float(), x)
        lo = torch.where(rows, torch.minimum(lo, left), lo)
        hi = torch.where(rows, torch.maximum(hi, right), hi)
    first = torch.floor(lo + 0.5).clamp(-1, len(pixel)).long()  # Pillow's ROUND_UP; an empty row: inf -> s
    last = torch.ceil(hi - 0.5).clamp(-1, len(pixel)).long()  # Pillow's ROUND_DOWN; an empty row: -inf -> -1
    return first, last


def render_scenes(scenes: list[dict], size: int | None = None, device: torch.device | str = "cpu",
                  scale_objects: bool = True, normalize: bool = True) -> torch.Tensor:
    """``render_scene`` for a whole batch -> (n, 3, size, size) float32 on ``device`` (see :func:`render_packed`)."""
    return render_packed(pack_scenes(scenes, size, scale_objects).to(device), normalize)


def render_clips(clips: list[dict], size: int | None = None, frames: int | None = None,
                 device: torch.device | str = "cpu", normalize: bool = True) -> torch.Tensor:
    """``render_clip`` for a whole batch -> (n, frames, 3, size, size) float32 on ``device``."""
    count = frames or clips[0]["frames"]
    if any((frames or c["frames"]) != count for c in clips):
        raise ValueError("render_clips draws clips of one frame count; pass frames= to resample them all")
    images = render_scenes(clip_frame_scenes(clips, frames), size, device, normalize=normalize)
    return images.view(len(clips), count, *images.shape[1:])
