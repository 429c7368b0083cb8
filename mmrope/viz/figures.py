"""Figures that need nothing but tensors: captioned images, (t, h, w) id grids, attention overlays; and the one way
every figure of the package is drawn (matplotlib's file-only backend) and saved."""

from __future__ import annotations

from pathlib import Path

import torch


def format_id(value: float) -> str:
    """An id as it reads: 7, or 0.67 for a fractional one (two decimals)."""
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:.2f}"


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | Path, dpi: int = 90) -> Path:
    """Lay out, write the PNG (making its folder) and free the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_captioned_images(images: list[torch.Tensor], captions: list[str], path: str | Path,
                          references: list[str] | None = None, columns: int = 4) -> Path:
    """A grid of (normalised) images with their generated captions, and the reference beneath when given."""
    plt = pyplot()

    from mmrope.data.images import denormalize

    rows = (len(images) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, image) in enumerate(zip(axes.flat, images)):
        ax.imshow(denormalize(image.detach().float().cpu()).permute(1, 2, 0).numpy())
        title = captions[i] if references is None else f"{captions[i]}\n({references[i]})"
        ax.set_title(title, fontsize=8, wrap=True)
    return save(fig, path, dpi=80)


def plot_position_ids(labels: list[str], position_ids: torch.Tensor, path: str | Path,
                      title: str | None = None) -> Path:
    """The (t, h, w) ids (3, n) of a joint sequence as three coloured rows, one column per token, ids written in."""
    plt = pyplot()

    ids = position_ids.detach().cpu()
    n = ids.shape[1]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * n + 1.5), 2.6))
    ax.imshow(ids.float().numpy(), cmap="viridis", aspect="auto")
    for row in range(3):
        for col in range(n):
            value = float(ids[row, col])
            colour = "black" if value > ids.float().mean() else "white"
            ax.text(col, row, format_id(value), ha="center", va="center", fontsize=7, color=colour)
    ax.set_yticks(range(3), ["t", "h", "w"])
    ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return save(fig, path, dpi=90)


def plot_attention_overlay(image: torch.Tensor, maps: torch.Tensor, words: list[str], path: str | Path,
                           title: str | None = None) -> Path:
    """The (normalised) image, then one panel per word: its attention map (H', W') upsampled to the image and laid
    over it. Each panel is scaled to its own maximum; its title gives the share of attention on the image."""
    plt = pyplot()

    from mmrope.data.images import denormalize

    picture = denormalize(image.detach().float().cpu()).permute(1, 2, 0).numpy()
    panels = len(words) + 1
    columns = min(panels, 6)
    rows = (panels + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(2.1 * columns, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(picture)
    axes.flat[0].set_title("image", fontsize=9)
    for ax, word, attention in zip(axes.flat[1:], words, maps.detach().float().cpu()):
        ax.imshow(overlay_attention(picture, attention))
        ax.set_title(f"{word} ({float(attention.sum()):.0%} on image)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return save(fig, path, dpi=90)


OVERLAY_ALPHA = 0.6  # of the attention colours over the picture: both stay readable


def overlay_attention(picture, attention: torch.Tensor, peak: float | None = None):
    """A picture (H, W, 3) in [0, 1] (numpy) with an attention map (H', W') upsampled onto it (nearest: one
    block per merged patch) in matplotlib's inferno colours, scaled to ``peak`` (default: the map's maximum) ->
    (H, W, 3) in [0, 1]. What every attention panel of :func:`plot_attention_overlay` and ``mmrope serve`` shows."""
    import matplotlib
    import torch.nn.functional as F

    h, w = picture.shape[:2]
    attention = attention.detach().float().cpu()
    up = F.interpolate(attention[None, None], size=(h, w), mode="nearest")[0, 0]
    peak = float(attention.max()) if peak is None else peak
    colours = matplotlib.colormaps["inferno"]((up / max(peak, 1e-12)).clamp(0, 1).numpy())[..., :3]
    return (1 - OVERLAY_ALPHA) * picture + OVERLAY_ALPHA * colours
