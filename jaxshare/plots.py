"""PNG plots for analyses (matplotlib, headless). Each function writes one file and returns its path."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxshare.optional import require


def _plt():
    # deferred on purpose: matplotlib is optional ([plots]) and slow to import
    matplotlib = require("matplotlib", "plots", "plotting")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    _plt().close(fig)
    tmp.replace(path)
    return path


def heatmap(matrix, path, title: str, label: str = "cosine similarity", tick_every: int | None = None,
            tick_name: str = "layer", vmin=None, vmax=None, cols: int = 4) -> Path:
    """Square heatmaps: one matrix, or {panel title: matrix} laid out in a grid of `cols` columns.
    With tick_every, ticks mark each block of that many rows (e.g. units per layer)."""
    plt = _plt()
    panels = matrix if isinstance(matrix, dict) else {None: matrix}
    ncols = min(cols, len(panels))
    nrows = -(-len(panels) // ncols)
    size = (7, 6) if len(panels) == 1 else (4.2 * ncols, 3.8 * nrows)
    fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False)
    for ax, (name, m) in zip(axes.ravel(), panels.items()):
        m = np.asarray(m)
        im = ax.imshow(m, cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
        fig.colorbar(im, ax=ax, label=label, fraction=0.046)
        if tick_every:
            n = m.shape[0] // tick_every
            ticks = np.arange(0, n, max(1, n // 15))
            ax.set_xticks(ticks * tick_every, ticks)
            ax.set_yticks(ticks * tick_every, ticks)
        ax.set_xlabel(tick_name)
        ax.set_ylabel(tick_name)
        if name is not None:
            ax.set_title(name)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    if len(panels) == 1:
        axes[0, 0].set_title(title)
    else:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def histogram(values: np.ndarray, path, title: str, xlabel: str, bins="auto", integer: bool = False) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    values = np.asarray(values)
    if integer and values.size:
        bins = np.arange(values.min(), values.max() + 2) - 0.5
    ax.hist(values, bins=bins, color="#3b75af", edgecolor="white")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("units")
    ax.set_title(title)
    return _save(fig, path)


def share_map(roots_LK: np.ndarray, path, title: str) -> Path:
    """Per-layer map of tied units (paper Fig. 6): each cell shows the layer whose weights the
    unit reads; owners are blank."""
    plt = _plt()
    L, K = roots_LK.shape
    src_layer = (roots_LK // K).astype(float)
    tied = roots_LK != np.arange(L * K).reshape(L, K)
    shown = np.where(tied, src_layer, np.nan)
    fig, ax = plt.subplots(figsize=(max(3, 0.5 * K + 2), max(4, 0.22 * L + 1)))
    im = ax.imshow(shown, cmap="plasma", aspect="auto", vmin=0, vmax=L - 1, interpolation="nearest")
    fig.colorbar(im, ax=ax, label="layer of the shared weights")
    for l, k in zip(*np.nonzero(tied)):
        ax.text(k, l, str(int(src_layer[l, k])), ha="center", va="center", fontsize=6, color="white")
    ax.set_xlabel("KV group (unit)")
    ax.set_ylabel("layer")
    ax.set_xticks(range(K))
    ax.set_title(title)
    return _save(fig, path)


def lines(xs, series: dict[str, list], path, title: str, xlabel: str, ylabel: str, logy: bool = False,
          hline: float | None = None) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, ys in series.items():
        ax.plot(xs[: len(ys)], ys, marker="o", label=name)
    if hline is not None:
        ax.axhline(hline, color="gray", linestyle="--", label="dense")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def curves(series: dict[str, tuple], path, title: str, xlabel: str, ylabel: str, logy: bool = True,
           hline: tuple | None = None) -> Path:
    """Curves with their own x values: series[name] = (xs, ys); hline = (y, label)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", markersize=3, label=name)
    if hline is not None:
        ax.axhline(hline[0], color="gray", linestyle="--", label=hline[1])
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def curve_panels(panels: dict[str, dict[str, tuple]], path, title: str, xlabel: str, ylabel: str,
                 style: dict[str, dict] | None = None, logy: bool = True, hline: tuple | None = None,
                 ncols: int = 3) -> Path:
    """One small axes per panel, each on its own y scale (curves of very different heights stay
    readable): panels[title][name] = (xs, ys); style[name] = matplotlib line kwargs, so one name
    looks the same in every panel; hline = (y, label) drawn in each."""
    plt = _plt()
    from matplotlib import ticker

    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax, (name, series) in zip(axes.flat, panels.items()):
        for label, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o", markersize=3, label=label, **(style or {}).get(label, {}))
        if hline is not None:
            ax.axhline(hline[0], color="gray", linestyle=":", label=hline[1])
        if logy:
            ax.set_yscale("log")
            # plain numbers, not 4 x 10^1; minor ticks labelled only where the panel spans under a decade
            lo, hi = ax.get_ylim()
            plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain if hi / lo < 10 else ticker.NullFormatter())
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def bars(names: list[str], series: dict[str, list], path, title: str, ylabel: str, hline: float | None = None,
         hline_label: str = "reference") -> Path:
    """Grouped bars: one group per name, one bar per series."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names) + 2), 4.5))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(names))
    for i, (label, ys) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, ys, width, label=label)
    if hline is not None:
        ax.axhline(hline, color="black", linestyle="--", label=hline_label)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=20)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def grid(matrix: np.ndarray, path, title: str, label: str, xlabel: str, ylabel: str, vmin=None, vmax=None) -> Path:
    """A (rows x columns) heatmap with every cell's axis labelled, e.g. layer x head."""
    plt = _plt()
    R, C = matrix.shape
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * C + 2.5), max(4, 0.22 * R + 1.5)))
    im = ax.imshow(matrix, cmap="viridis", aspect="auto", vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax, label=label)
    ax.set_xticks(range(C))
    ax.set_yticks(range(0, R, max(1, R // 15)))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)


def panels(maps: dict[str, np.ndarray], path, title: str) -> Path:
    """Square maps side by side (e.g. attention maps of shallow and deep layers), shared colour scale."""
    plt = _plt()
    n = len(maps)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
    vmax = max(float(np.max(m)) for m in maps.values()) or 1.0
    for ax, (name, m) in zip(axes[0], maps.items()):
        im = ax.imshow(m, cmap="magma", vmin=0.0, vmax=vmax, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="attention probability")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
