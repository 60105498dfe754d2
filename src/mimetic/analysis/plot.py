"""Pictures of attention maps: a grid of layers (rows) x heads (columns), one PNG."""
from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .._validate import make_folder

DEFAULT_MAX_HEADS = 4
DEFAULT_DYNAMIC_RANGE = 1e-4  # log scale: colours span [vmax * this, vmax]


def _row_label(key) -> str:
    return f"layer {key}" if isinstance(key, int) else str(key)


def _ticks(L: int, tokens: Sequence | None, max_ticks: int):
    step = max(1, -(-L // max_ticks))
    pos = list(range(0, L, step))
    labels = [str(tokens[i]) for i in pos] if tokens is not None else [str(i) for i in pos]
    return pos, labels


def plot_attention_maps(maps: Mapping, path: str | os.PathLike, log_scale: bool = True,
                        tokens: Sequence | None = None, title: str | None = None,
                        max_heads: int = DEFAULT_MAX_HEADS, batch_index: int = 0,
                        signed: bool = False, marks: Sequence[int] = (),
                        dynamic_range: float = DEFAULT_DYNAMIC_RANGE, max_ticks: int = 16,
                        panel_size: float = 2.6, dpi: int = 110) -> str:
    """Write a PNG grid of attention maps: one row per entry of ``maps``, one column per head.

    Args:
        maps: {key: (batch, heads, L, L) tensor}, e.g. from
            :func:`~mimetic.analysis.attention_maps`; Mamba and attention layers may be
            mixed, and maps of several models too (keys are row labels: ints print as
            "layer i", anything else as ``str(key)``). All maps share L.
        path: the PNG to write (parent folders are created).
        log_scale: colour by log10 of |value| (spanning ``dynamic_range`` below each row's
            maximum) -- the right view for decays, which span orders of magnitude; else linear.
        tokens: L labels for the axes (token strings or ids); default positions.
        title: figure title.
        max_heads: at most this many heads (the first ones) are drawn per row.
        batch_index: which sequence of the batch to draw.
        signed: linear scale only: draw the signed values with a diverging colour map
            (Mamba maps are signed; attention maps are not); default |value|.
        marks: positions to draw as thin lines on both axes (e.g. a separator token).
        max_ticks: at most this many tick labels per axis.

    Each row shares one colour scale (a colorbar at its right); cells above the diagonal
    (future keys, always zero) are left blank. Returns the path written.
    """
    if not maps:
        raise ValueError("no maps to plot")
    if max_heads < 1:
        raise ValueError(f"max_heads must be >= 1, got {max_heads}")
    if signed and log_scale:
        raise ValueError("signed=True needs log_scale=False (a log scale shows magnitudes)")
    arrays = {}
    for key, m in maps.items():
        if not isinstance(m, torch.Tensor) or m.dim() != 4 or m.shape[-1] != m.shape[-2]:
            raise ValueError(f"map {key!r} must be a (batch, heads, L, L) tensor, got "
                             f"{getattr(m, 'shape', type(m).__name__)}")
        if not 0 <= batch_index < m.shape[0]:
            raise IndexError(f"batch_index {batch_index} out of range for map {key!r} "
                             f"with batch {m.shape[0]}")
        arrays[key] = m[batch_index, :max_heads].detach().float().cpu().numpy()
        if not np.isfinite(arrays[key]).all():  # NaN cells draw blank: a picture that hides the fault
            raise ValueError(f"map {key!r} holds non-finite values (NaN/inf); nothing drawn")
    lengths = {a.shape[-1] for a in arrays.values()}
    if len(lengths) != 1:
        raise ValueError(f"all maps must have the same length, got {sorted(lengths)}")
    L = lengths.pop()
    if tokens is not None and len(tokens) != L:
        raise ValueError(f"tokens has {len(tokens)} labels for maps of length {L}")

    # A bare Figure renders with the Agg canvas: no display needed, no window, and no
    # change to pyplot's global backend (a notebook user's inline plots keep working).
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.figure import Figure

    ncols = max(a.shape[0] for a in arrays.values())
    nrows = len(arrays)
    # Fixed margins in inches rather than constrained layout, which measures every tick
    # label of every panel and takes seconds for a few maps.
    if title:  # wrap to the figure's width (~12 characters per inch at this font size)
        width_in = 1.5 + ncols * (panel_size + 0.15) + 0.12
        title = "\n".join(textwrap.wrap(title, max(20, int(width_in * 11))))
    left, right, bottom, top = 0.75, 0.75, 0.7, 0.35 + 0.1 + 0.2 * (title.count("\n") + 1) if title else 0.35
    bar, gap_w, gap_h = 0.12, 0.15, 0.4  # colorbar width, gaps between panels (inches)
    grid_w = ncols * (panel_size + gap_w) + bar
    grid_h = nrows * panel_size + (nrows - 1) * gap_h
    width, height = left + grid_w + right, bottom + grid_h + top
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(nrows, ncols + 1, width_ratios=[panel_size] * ncols + [bar],
                            left=left / width, right=(left + grid_w) / width,
                            bottom=bottom / height, top=(bottom + grid_h) / height,
                            wspace=gap_w / (grid_w - ncols * gap_w) * (ncols + 1),
                            hspace=gap_h / panel_size)
    axes = [[fig.add_subplot(grid[r, c]) for c in range(ncols)] for r in range(nrows)]
    future = np.triu(np.ones((L, L), dtype=bool), k=1)
    pos, labels = _ticks(L, tokens, max_ticks)
    for r, (key, a) in enumerate(arrays.items()):
        vals = a if signed else np.abs(a)
        vmax = float(np.abs(vals[:, ~future]).max()) if L else 0.0
        vmax = vmax if vmax > 0 else 1.0
        if log_scale:
            norm, cmap = LogNorm(vmin=vmax * dynamic_range, vmax=vmax), "viridis"
            vals = np.clip(vals, vmax * dynamic_range, None)
        elif signed:
            norm, cmap = Normalize(vmin=-vmax, vmax=vmax), "RdBu_r"
        else:
            norm, cmap = Normalize(vmin=0.0, vmax=vmax), "viridis"
        cmap = matplotlib.colormaps[cmap].with_extremes(bad="#eeeeee")
        image = None
        for c in range(ncols):
            ax = axes[r][c]
            if c >= a.shape[0]:
                ax.axis("off")
                continue
            shown = np.ma.masked_array(vals[c], mask=future)
            image = ax.imshow(shown, cmap=cmap, norm=norm, interpolation="nearest")
            for p in marks:
                ax.axhline(p, color="red", lw=0.6, alpha=0.7)
                ax.axvline(p, color="red", lw=0.6, alpha=0.7)
            ax.set_xticks(pos, labels if r == nrows - 1 else [], fontsize=6,
                          rotation=90 if tokens is not None else 0)
            ax.set_yticks(pos, labels if c == 0 else [], fontsize=6)
            ax.set_title(f"{_row_label(key)} · head {c}" if a.shape[0] > 1 else _row_label(key),
                         fontsize=8)
            if r == nrows - 1:
                ax.set_xlabel("key position s", fontsize=7)
            if c == 0:
                ax.set_ylabel("query position t", fontsize=7)
        bar_ax = fig.add_subplot(grid[r, ncols])
        fig.colorbar(image, cax=bar_ax, label="|M[t, s]|" if not signed else "M[t, s]")
        bar_ax.tick_params(labelsize=6)
        bar_ax.yaxis.label.set_size(8)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.08 / height, va="top")
    path = os.fspath(path)
    if not os.path.splitext(path)[1]:  # matplotlib would write path + ".png": say so
        path += ".png"
    make_folder("plot_attention_maps", "the folder of path", os.path.dirname(os.path.abspath(path)))
    fig.savefig(path, dpi=dpi)
    return path
