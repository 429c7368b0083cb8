"""q·k similarity against relative (Δrow, Δcol) offset: what a rotary encoding lets attention tell apart.

Every rotary encoder plug-in (:mod:`mmrope.model.pos_encodings`) is drawn the same way: its tables for a grid,
the centre patch's query against every patch's key, with q = k = ones so that only position speaks.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmrope.model.config import VisionConfig
from mmrope.model.pos_encodings import ENCODERS, PosEncoding
from mmrope.model.position_ids import patch_positions
from mmrope.model.rope import apply_rotary
from mmrope.viz.figures import pyplot, save


def encoder_positions(encoding: str, head_dim: int = 64, theta: float = 100.0, num_heads: int = 1) -> PosEncoding:
    """A freshly initialised encoder plug-in with one block of ``num_heads`` heads of ``head_dim`` channels."""
    config = VisionConfig(dim=head_dim * num_heads, num_heads=num_heads, depth=1, pos_encoding=encoding,
                          rope_theta=theta)
    return ENCODERS[encoding](config)


def relative_similarity(positions: PosEncoding | str, grid: int = 16, layer: int = 0,
                        head: int = 0) -> torch.Tensor:
    """Mean q·k between the centre patch of a grid x grid image and every patch -> (grid, grid) map indexed by
    (Δrow, Δcol) + centre, for block ``layer`` and ``head`` of an encoder plug-in (or a fresh one named by
    ``positions``)."""
    if isinstance(positions, str):
        positions = encoder_positions(positions)
    ids = patch_positions(1, grid, grid)  # (n, 3) in raster order
    tables = positions.rotary(ids, (1, grid, grid))[layer]
    if tables is None:
        raise ValueError(f"{positions.name} does not rotate queries and keys: there is no similarity map to draw")
    cos, sin = (t.detach().float() for t in tables)
    if cos.ndim == 4:  # (1, heads, n, k): per-head frequencies
        cos, sin = cos[0, head], sin[0, head]
    head_dim = 2 * cos.shape[-1]
    centre = (grid // 2) * grid + grid // 2
    ones = torch.ones(1, 1, 1, head_dim)
    q = apply_rotary(ones, cos[centre:centre + 1], sin[centre:centre + 1])  # (1, 1, 1, d)
    k = apply_rotary(ones.expand(1, 1, grid * grid, head_dim), cos, sin)  # (1, 1, n, d)
    return ((q * k).sum(-1) / head_dim).view(grid, grid)


def plot_similarity_maps(maps: dict[str, torch.Tensor], path: str | Path, title: str | None = None) -> Path:
    """Side-by-side heat maps of :func:`relative_similarity`, centre marked."""
    plt = pyplot()

    fig, axes = plt.subplots(1, len(maps), figsize=(4 * len(maps), 4), squeeze=False)
    for ax, (name, sim) in zip(axes[0], maps.items()):
        g = sim.shape[0]
        extent = (-(g // 2) - 0.5, g - g // 2 - 0.5, g - g // 2 - 0.5, -(g // 2) - 0.5)
        im = ax.imshow(sim.numpy(), cmap="viridis", extent=extent)
        ax.set_title(name)
        ax.set_xlabel("Δcol")
        ax.set_ylabel("Δrow")
        fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        fig.suptitle(title)
    return save(fig, path, dpi=100)


def similarity_maps(model=None, layer: int = 0, head: int = 0, grid: int = 16) -> dict[str, torch.Tensor]:
    """:func:`relative_similarity` for 2D axial, flattened 1D and RoPE-Mixed, with the head_dim and theta of
    ``model``'s encoder (a Captioner; None: 64 and 100). Mixed takes the learned frequencies of ``layer`` and ``head``
    when the model was trained with rope2d_mixed, else a fresh initialisation, and its label says which."""
    head_dim, theta = 64, 100.0
    mixed, label = None, "RoPE-Mixed (init)"
    if model is not None:
        v = model.config.vision
        head_dim, theta = v.head_dim, v.rope_theta
        if v.pos_encoding == "rope2d_mixed":
            mixed = model.vision.positions
            if not 0 <= layer < v.depth or not 0 <= head < v.num_heads:
                raise ValueError(f"layer {layer}, head {head}: the encoder has layers 0..{v.depth - 1} and "
                                 f"heads 0..{v.num_heads - 1}")
            label = f"RoPE-Mixed (learned, layer {layer})"
    if mixed is None:
        mixed, layer = encoder_positions("rope2d_mixed", head_dim, num_heads=head + 1), 0
    return {"2D axial RoPE": relative_similarity(encoder_positions("rope2d", head_dim, theta), grid),
            "flattened 1D RoPE": relative_similarity(encoder_positions("rope1d_flat", head_dim, theta), grid),
            f"{label}, head {head}": relative_similarity(mixed, grid, layer, head)}
