"""Pictures of the position maths: q·k similarity against relative offset, and (t, h, w) ids as grids."""

from __future__ import annotations

from pathlib import Path

import torch

from mmrope.positions import grid_positions
from mmrope.rope import AxialRotaryEmbedding, MixedRotaryEmbedding, RotaryEmbedding, apply_rotary


def relative_similarity(encoding: str, grid: int = 16, head_dim: int = 64, theta: float = 100.0,
                        mixed: MixedRotaryEmbedding | None = None, head: int = 0) -> torch.Tensor:
    """Mean q·k (q = k = ones, so only position speaks) between the centre patch of a grid x grid image and every
    patch -> (grid, grid) map indexed by (Δrow, Δcol) + centre. ``encoding``: rope2d, rope1d_flat or rope2d_mixed."""
    pos = grid_positions(grid, grid)  # (n, 2) raster order
    centre = torch.tensor([[grid // 2, grid // 2]])
    if encoding == "rope2d":
        rope = AxialRotaryEmbedding(head_dim, theta)
        (cq, sq), (ck, sk) = rope(centre), rope(pos)
    elif encoding == "rope1d_flat":
        rope = RotaryEmbedding(head_dim, theta)
        (cq, sq), (ck, sk) = rope(centre[:, 0] * grid + centre[:, 1]), rope(pos[:, 0] * grid + pos[:, 1])
    elif encoding == "rope2d_mixed":
        rope = mixed if mixed is not None else MixedRotaryEmbedding(head_dim, num_heads=1)
        head_dim = rope.head_dim
        (cq, sq), (ck, sk) = ((t[0, 0, head] for t in rope(p)) for p in (centre, pos))
    else:
        raise ValueError(f"unknown encoding {encoding!r}: expected rope2d, rope1d_flat or rope2d_mixed")
    ones = torch.ones(1, 1, 1, head_dim)
    q = apply_rotary(ones, cq, sq)  # (1, 1, 1, d)
    k = apply_rotary(ones.expand(1, 1, len(pos), head_dim), ck, sk)  # (1, 1, n, d)
    return ((q * k).sum(-1) / head_dim).view(grid, grid).detach()


def plot_similarity_maps(maps: dict[str, torch.Tensor], path: str | Path, title: str | None = None) -> Path:
    """Side-by-side heat maps of :func:`relative_similarity`, centre marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_captioned_images(images: list[torch.Tensor], captions: list[str], path: str | Path,
                          references: list[str] | None = None, columns: int = 4) -> Path:
    """A grid of (normalised) images with their generated captions, and the reference beneath when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmrope.data.images import denormalize

    rows = (len(images) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, image) in enumerate(zip(axes.flat, images)):
        ax.imshow(denormalize(image.detach().float().cpu()).permute(1, 2, 0).numpy())
        title = captions[i] if references is None else f"{captions[i]}\n({references[i]})"
        ax.set_title(title, fontsize=8, wrap=True)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
