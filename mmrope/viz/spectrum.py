"""The rotary spectrum of decoder schemes: how far each pair turns along t, h and w, per step and across a grid.

A decoder can only tell two media tokens apart along an axis if some rotary pair turns noticeably between them. With
Qwen2-VL's chunked M-RoPE at head_dim 32 the w axis gets only the slowest pairs, which turn under 0.01 rad across a
4 x 4 grid: the columns look alike. :func:`spectrum` measures this for any registered scheme, on the ids the scheme
itself gives a media block of the grid (:meth:`mmrope.model.decoder_schemes.base.DecoderScheme.grid_turns`), and
:func:`plot_spectrum` draws it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mmrope.model.config import CaptionerConfig
from mmrope.model.decoder_schemes import ALMOST_STILL, SCHEMES
from mmrope.viz.figures import pyplot, save

AXIS_COLOURS = {"t": "C0", "h": "C1", "w": "C2"}


def spectrum(config: CaptionerConfig, schemes: list[str], grid: tuple[int, int, int]) -> dict[str, dict | str]:
    """For each scheme (``config`` with its ``position_scheme`` replaced): {axis: (radians between neighbours (k,),
    radians from end to end (k,))} for the axes ``grid`` = (t, h, w) decoder tokens spans, or, for a scheme the
    config cannot hold (mhrope on a model with fewer than 3 key/value heads), the one-line reason."""
    out = {}
    for name in schemes:
        if name not in SCHEMES:
            raise ValueError(f"scheme {name!r} is unknown: expected some of {', '.join(SCHEMES)}")
        text = dataclasses.replace(config.text, mrope_section=None)  # each scheme's own default section
        try:
            scheme_config = dataclasses.replace(config, text=text, position_scheme=name)
        except ValueError as err:
            out[name] = str(err)
            continue
        out[name] = SCHEMES[name](scheme_config).grid_turns(grid)
    return out


def spectrum_table(turns: dict[str, dict], grid: tuple[int, int, int]) -> str:
    """Markdown: per scheme and axis, the fastest pair's turn per step and across the grid, and whether the axis is
    still (under :data:`~mmrope.model.decoder_schemes.base.ALMOST_STILL` rad from end to end), as the build-time
    warning says it: a control whose media ids are still on purpose (``warn_if_still`` False) is marked as such."""
    t, h, w = grid
    lines = [f"| scheme | axis | radians per step (fastest pair) | radians across the {t}x{h}x{w} grid | |",
             "| --- | --- | ---: | ---: | --- |"]
    for name, axes in turns.items():
        if isinstance(axes, str):
            lines.append(f"| {name} | | | | not shown: {axes} |")
            continue
        for axis, (step, span) in axes.items():
            still = ""
            if float(span.max()) < ALMOST_STILL:
                still = ("still: the decoder can hardly tell this axis apart" if SCHEMES[name].warn_if_still
                         else "by design: a control whose media ids do not move")
            lines.append(f"| {name} | {axis} | {float(step.max()):.3g} | {float(span.max()):.3g} | {still} |")
    return "\n".join(lines)


def plot_spectrum(turns: dict[str, dict | str], grid: tuple[int, int, int], path: str | Path,
                  title: str = "") -> Path:
    """One small panel per scheme: how far each rotary pair turns from one end of the grid to the other, coloured by
    the axis it reads, log scale; the dashed line is the build-time warning's threshold (the table printed beside it
    also gives the turn per step). Schemes the config cannot hold are left out."""
    shown = {name: axes for name, axes in turns.items() if not isinstance(axes, str)}
    columns = min(4, len(shown))
    rows = -(-len(shown) // columns)
    plt = pyplot()
    fig, panels = plt.subplots(rows, columns, figsize=(3.1 * columns, 2.2 * rows + 0.5), squeeze=False, sharey=True)
    for ax in panels.flat[len(shown):]:
        ax.axis("off")
    for ax, (name, by_axis) in zip(panels.flat, shown.items()):
        for axis, (_, span) in by_axis.items():
            v = span.float()
            pairs = (v > 0).nonzero().flatten()  # the pairs that read this axis at all
            ax.plot(pairs.numpy(), v[pairs].numpy(), "o", color=AXIS_COLOURS[axis], markersize=3, label=axis)
        ax.set_yscale("log")
        ax.axhline(ALMOST_STILL, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    panels.flat[0].legend(fontsize=7, loc="lower left", title="axis", title_fontsize=7)
    for ax in panels[-1]:
        ax.set_xlabel("rotary pair k (fastest first)", fontsize=8)
    for row in panels:
        row[0].set_ylabel("radians across the grid", fontsize=8)
    fig.suptitle(title or f"how far each decoder rotary pair turns across a {'x'.join(map(str, grid))} (t x h x w) "
                          f"media block (dashed: {ALMOST_STILL} rad)", fontsize=10)
    return save(fig, path, dpi=80)
