"""The course's pictures: one attention heatmap, one image overlay, one learning-curve plot.

Every notebook draws attention with ``plot_attention`` (token labels on both axes, several
heads or layers as a grid) and image attention with ``plot_attention_overlay``. Colour maps
are perceptually uniform and monotonic in lightness (``viridis``, ``magma``), so the figures
read in greyscale too; every figure has a title and axis labels.

Each function returns the ``matplotlib`` figure. In a notebook end the call with ``;`` (or
assign it) so Jupyter shows the figure once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from course_utils.checks import check_bool, check_positive_int, check_real, describe


def _to_numpy(name: str, x: Any) -> np.ndarray:
    """``x`` (a tensor, an array or a list of numbers) as a float array; ``name`` for errors."""
    if isinstance(x, torch.Tensor):
        if x.device.type == "meta":
            raise ValueError(f"{name} must hold values to plot, got a tensor on the meta device "
                             f"(no values) of shape {tuple(x.shape)}")
        if x.is_complex():
            raise TypeError(f"{name} must hold real numbers, got a tensor of dtype {x.dtype}")
        return x.detach().float().cpu().numpy()
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be numbers (a tensor, an array or a list of floats), got "
                        f"{describe(x)}")
    try:
        return np.asarray(x, dtype=float)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be numbers (a tensor, an array or a list of floats), got "
                        f"{describe(x)}") from exc


def _check_layout(ncols: Any, **reals: Any) -> None:
    """``ncols`` None (automatic) or a positive int; each of ``reals`` None or a finite real."""
    if ncols is not None:
        check_positive_int("ncols", ncols)
    for name, x in reals.items():
        if x is not None:
            check_real(name, x)


def plot_attention(
    weights: Any,
    x_labels: Sequence[str] | None = None,
    y_labels: Sequence[str] | None = None,
    titles: Sequence[str] | None = None,
    title: str = "Attention weights",
    xlabel: str = "keys",
    ylabel: str = "queries",
    ncols: int | None = None,
    cmap: str = "viridis",
    vmin: float | None = 0.0,
    vmax: float | None = None,
    annotate: bool = False,
    cell_size: float = 0.35,
    cbar_label: str = "weight",
):
    """Heatmap(s) of attention weights: rows are queries, columns are keys.

    ``weights`` is (Lq, Lk), (n, Lq, Lk) for n panels (e.g. heads), or (layers, heads, Lq, Lk)
    for a grid with one row per layer.

    >>> fig = plot_attention(torch.softmax(torch.randn(2, 3, 4), -1),
    ...                      x_labels=list("abcd"), y_labels=list("xyz"),
    ...                      titles=["head 0", "head 1"])
    >>> len(fig.axes)  # two panels and a colour bar
    3
    """
    _check_layout(ncols, vmin=vmin, vmax=vmax)
    check_bool("annotate", annotate)
    check_real("cell_size", cell_size, 0.0, low_open=True)
    w = _to_numpy("weights", weights)
    if w.ndim == 2:
        w = w[None, None]
    elif w.ndim == 3:
        w = w[None]
    elif w.ndim != 4:
        raise ValueError(f"weights must be (Lq, Lk), (n, Lq, Lk) or (layers, heads, Lq, Lk); got "
                         f"shape {w.shape}")
    rows, cols, lq, lk = w.shape
    if w.size == 0:
        raise ValueError(f"weights must not be empty, got shape {w.shape}")
    if x_labels is not None and len(x_labels) != lk:
        raise ValueError(f"x_labels has {len(x_labels)} labels but weights have {lk} keys "
                         f"(shape {w.shape})")
    if y_labels is not None and len(y_labels) != lq:
        raise ValueError(f"y_labels has {len(y_labels)} labels but weights have {lq} queries "
                         f"(shape {w.shape})")
    panels = w.reshape(rows * cols, lq, lk)
    if rows == 1 and ncols is not None:
        cols = min(ncols, len(panels))
        rows = math.ceil(len(panels) / cols)
    if titles is not None and len(titles) != len(panels):
        raise ValueError(f"got {len(titles)} titles for {len(panels)} panels")
    panel_w = max(2.0, cell_size * lk + 1.0)
    panel_h = max(2.0, cell_size * lq + 0.8)
    fig, axes = plt.subplots(rows, cols, figsize=(panel_w * cols + 1.0, panel_h * rows + 0.6),
                             squeeze=False)
    vmax = float(panels.max()) if vmax is None else vmax
    image = None
    for i, ax in enumerate(axes.flat):
        if i >= len(panels):
            ax.axis("off")
            continue
        image = ax.imshow(panels[i], cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
        if x_labels is not None:
            ax.set_xticks(range(lk), x_labels, rotation=90, fontsize=8)
        if y_labels is not None:
            ax.set_yticks(range(lq), y_labels, fontsize=8)
        if i // cols == rows - 1 or i + cols >= len(panels):
            ax.set_xlabel(xlabel)
        if i % cols == 0:
            ax.set_ylabel(ylabel)
        if annotate:
            for r in range(lq):
                for c in range(lk):
                    value = panels[i, r, c]
                    ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if value < 0.6 * vmax else "black")
    fig.suptitle(title)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label=cbar_label)
    return fig


def plot_attention_overlay(
    image: Any,
    attention: Any,
    titles: Sequence[str] | None = None,
    title: str = "Where the model attends",
    alpha: float = 0.6,
    cmap: str = "magma",
    ncols: int | None = None,
):
    """Attention over an image: the grid of weights upsampled onto the picture.

    ``image`` is (H, W), (H, W, 3) or (3, H, W); ``attention`` is (gh, gw) or (n, gh, gw)
    (one panel per word, head or step).

    >>> fig = plot_attention_overlay(torch.rand(3, 32, 32), torch.rand(2, 4, 4), titles=["a", "b"])
    >>> len(fig.axes)  # the image, two overlays and a colour bar
    4
    """
    _check_layout(ncols)
    img = _to_numpy("image", image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W), (H, W, 3) or (3, H, W); got shape {img.shape}")
    att = _to_numpy("attention", attention)
    if att.ndim == 2:
        att = att[None]
    if att.ndim != 3:
        raise ValueError(f"attention must be (gh, gw) or (n, gh, gw); got shape {att.shape}")
    if titles is not None and len(titles) != len(att):
        raise ValueError(f"got {len(titles)} titles for {len(att)} attention maps")
    if img.size == 0 or att.size == 0:
        raise ValueError(f"image and attention must not be empty, got shapes {img.shape} and "
                         f"{att.shape}")
    h, w = img.shape[:2]
    lo, hi = img.min(), img.max()
    img = (img - lo) / (hi - lo + 1e-12)
    n = len(att) + 1
    cols = min(ncols or n, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols + 0.8, 2.3 * rows + 0.4),
                             squeeze=False)
    grey = "gray" if img.ndim == 2 else None
    axes.flat[0].imshow(img, cmap=grey)
    axes.flat[0].set_title("input", fontsize=9)
    vmax = float(att.max())
    overlay = None
    for i, ax in enumerate(axes.flat[1:]):
        if i >= len(att):
            ax.axis("off")
            continue
        ax.imshow(img, cmap=grey)
        # Nearest-neighbour upsampling: each grid cell covers exactly the pixels it encodes.
        overlay = ax.imshow(att[i], cmap=cmap, alpha=alpha, vmin=0.0, vmax=vmax,
                            extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes.flat[0].set_xlabel("x (pixels)")
    axes.flat[0].set_ylabel("y (pixels)")
    fig.suptitle(title)
    if overlay is not None:
        fig.colorbar(overlay, ax=axes.ravel().tolist(), shrink=0.8, label="attention")
    return fig


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average that keeps the length (the first points average what exists).

    >>> _smooth(np.array([0.0, 2.0, 4.0, 6.0]), 2).tolist()
    [0.0, 1.0, 3.0, 5.0]
    """
    if window <= 1:
        return values
    sums = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (sums[1:] - sums[np.arange(len(values)) + 1 - counts]) / counts


def plot_learning_curves(
    curves: Mapping[str, Sequence[float]] | Mapping[str, tuple[Sequence[float], Sequence[float]]],
    title: str = "Learning curves",
    xlabel: str = "step",
    ylabel: str = "loss",
    logy: bool = False,
    smooth: int = 1,
    band: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
):
    """One line per named curve: values, or ``(x, y)`` pairs; optional shaded ``band`` (low, high).

    ``smooth`` is a trailing moving-average window (for noisy per-step losses).

    >>> fig = plot_learning_curves({"train": [3.0, 2.0, 1.5], "valid": ([0, 2], [2.8, 1.9])})
    >>> fig.axes[0].get_ylabel()
    'loss'
    """
    _check_mapping("curves", curves)
    check_bool("logy", logy)
    check_positive_int("smooth", smooth)
    if band is not None:
        _check_mapping("band", band, allow_empty=True)
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    styles = ["-", "--", "-.", ":"]  # line styles keep curves apart in greyscale too
    for i, (name, data) in enumerate(curves.items()):
        if isinstance(data, tuple) and len(data) == 2:
            x = _to_numpy(f"curves[{name!r}][0]", data[0])
            y = _to_numpy(f"curves[{name!r}][1]", data[1])
        else:
            y = _to_numpy(f"curves[{name!r}]", data)
            if y.ndim != 1:
                raise ValueError(f"curve {name!r} must be a 1-D sequence of numbers, got shape "
                                 f"{y.shape}")
            x = np.arange(len(y), dtype=float)
        ax.plot(x, _smooth(y, smooth), styles[i % len(styles)], label=name)
        if band is not None and name in band:
            low, high = band[name]
            low, high = _to_numpy(f"band[{name!r}][0]", low), _to_numpy(f"band[{name!r}][1]", high)
            ax.fill_between(x, low, high, alpha=0.2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def _check_mapping(name: str, m: Any, what: str = "curve", allow_empty: bool = False) -> None:
    """A mapping ``{name: values}`` (at least one ``what`` unless ``allow_empty``)."""
    if not isinstance(m, Mapping):
        raise TypeError(f"{name} must be a mapping {{name: values}}, got {describe(m)}")
    if not m and not allow_empty:
        raise ValueError(f"{name} must hold at least one {what}, got an empty mapping")


def plot_time_series(samples: Mapping[str, Sequence[float]], x: str = "time_s",
                     title: str = "Resource use", note: str | None = None):
    """Stacked line plots of every series in ``samples`` against ``samples[x]`` (used by
    ``Monitor``).

    >>> fig = plot_time_series({"time_s": [0, 1], "rss_mb": [10, 12]})
    >>> fig.axes[0].get_ylabel()
    'rss_mb'
    """
    _check_mapping("samples", samples, what="series")
    if x not in samples:
        raise ValueError(f"x must be a key of samples (the series on the x axis), got {x!r}; "
                         f"samples has {list(samples)}")
    keys = [k for k in samples if k != x and len(samples[k])]
    if not keys:
        raise ValueError(f"samples must hold a series besides x={x!r}; got keys {list(samples)}")
    fig, axes = plt.subplots(len(keys), 1, figsize=(6.0, 1.6 * len(keys) + 0.6), sharex=True,
                             squeeze=False)
    for ax, key in zip(axes[:, 0], keys, strict=True):
        ax.plot(samples[x], samples[key])
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("time (s)" if x == "time_s" else x)
    fig.suptitle(title if note is None else f"{title}\n({note})", fontsize=10)
    fig.tight_layout()
    return fig
