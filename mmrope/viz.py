"""Pictures of the position maths: q·k similarity against relative offset, and (t, h, w) ids as grids."""

from __future__ import annotations

from pathlib import Path

import torch

from mmrope.positions import grid_positions
from mmrope.rope import AxialRotaryEmbedding, MixedRotaryEmbedding, RotaryEmbedding, apply_rotary


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, dpi: int) -> Path:
    """Lay out, write the PNG (making its folder) and free the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


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
    plt = _pyplot()

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
    return _save(fig, path, dpi=100)


def plot_captioned_images(images: list[torch.Tensor], captions: list[str], path: str | Path,
                          references: list[str] | None = None, columns: int = 4) -> Path:
    """A grid of (normalised) images with their generated captions, and the reference beneath when given."""
    plt = _pyplot()

    from mmrope.data.images import denormalize

    rows = (len(images) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, image) in enumerate(zip(axes.flat, images)):
        ax.imshow(denormalize(image.detach().float().cpu()).permute(1, 2, 0).numpy())
        title = captions[i] if references is None else f"{captions[i]}\n({references[i]})"
        ax.set_title(title, fontsize=8, wrap=True)
    return _save(fig, path, dpi=80)


def plot_position_ids(labels: list[str], position_ids: torch.Tensor, path: str | Path,
                      title: str | None = None) -> Path:
    """The (t, h, w) ids (3, n) of a joint sequence as three coloured rows, one column per token, ids written in."""
    plt = _pyplot()

    ids = position_ids.detach().cpu()
    n = ids.shape[1]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * n + 1.5), 2.6))
    ax.imshow(ids.float().numpy(), cmap="viridis", aspect="auto")
    for row in range(3):
        for col in range(n):
            value = int(ids[row, col])
            colour = "black" if value > ids.float().mean() else "white"
            ax.text(col, row, str(value), ha="center", va="center", fontsize=7, color=colour)
    ax.set_yticks(range(3), ["t", "h", "w"])
    ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path, dpi=90)


def plot_attention_overlay(image: torch.Tensor, maps: torch.Tensor, words: list[str], path: str | Path,
                           title: str | None = None) -> Path:
    """The (normalised) image, then one panel per word: its attention map (H', W') upsampled to the image and laid
    over it. Each panel is scaled to its own maximum; its title gives the share of attention on the image."""
    plt = _pyplot()
    import torch.nn.functional as F

    from mmrope.data.images import denormalize

    picture = denormalize(image.detach().float().cpu()).permute(1, 2, 0).numpy()
    h, w = picture.shape[:2]
    panels = len(words) + 1
    columns = min(panels, 6)
    rows = (panels + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(2.1 * columns, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(picture)
    axes.flat[0].set_title("image", fontsize=9)
    for ax, word, attention in zip(axes.flat[1:], words, maps.detach().float().cpu()):
        share = float(attention.sum())
        up = F.interpolate(attention[None, None], size=(h, w), mode="nearest")[0, 0]
        ax.imshow(picture)
        ax.imshow((up / up.max().clamp(min=1e-12)).numpy(), cmap="inferno", alpha=0.6, vmin=0, vmax=1)
        ax.set_title(f"{word} ({share:.0%} on image)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path, dpi=90)


def similarity_maps(model=None, layer: int = 0, head: int = 0, grid: int = 16) -> dict[str, torch.Tensor]:
    """:func:`relative_similarity` for 2D axial, flattened 1D and RoPE-Mixed, with the head_dim and theta of
    ``model``'s encoder (a Captioner; None: 64 and 100). Mixed takes the learned frequencies of ``layer`` and ``head``
    when the model was trained with rope2d_mixed, else a fresh initialisation, and its label says which."""
    head_dim, theta, mixed, label = 64, 100.0, None, "RoPE-Mixed (init)"
    if model is not None:
        v = model.config.vision
        head_dim, theta = v.head_dim, v.rope_theta
        if v.pos_encoding == "rope2d_mixed":
            learned = model.vision.rope
            if not 0 <= layer < learned.depth or not 0 <= head < learned.num_heads:
                raise ValueError(f"layer {layer}, head {head}: the encoder has layers 0..{learned.depth - 1} and "
                                 f"heads 0..{learned.num_heads - 1}")
            mixed = MixedRotaryEmbedding(head_dim, learned.num_heads)
            mixed.freqs.data = learned.freqs.detach()[layer:layer + 1].float().cpu().clone()
            label = f"RoPE-Mixed (learned, layer {layer})"
    if mixed is None:
        mixed = MixedRotaryEmbedding(head_dim, num_heads=head + 1)
    return {"2D axial RoPE": relative_similarity("rope2d", grid, head_dim, theta),
            "flattened 1D RoPE": relative_similarity("rope1d_flat", grid, head_dim, theta),
            f"{label}, head {head}": relative_similarity("rope2d_mixed", grid, mixed=mixed, head=head)}
