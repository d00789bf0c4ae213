"""What a notebook shows: every figure is saved with its title as alt text.

A figure in a notebook is a PNG; its title is drawn into the pixels, where a screen reader
and a search engine cannot see it. :func:`describe_figures` (called by ``setup_notebook``)
makes every Matplotlib figure a notebook displays carry its title as alt text in the output's
metadata (``{"image/png": {"alt": "..."}}``): the course's website shows it, and it stays in
the saved ``.ipynb``. Outside IPython it does nothing.
"""

from __future__ import annotations

from typing import Any

__all__ = ["describe_figures", "figure_title"]


def figure_title(fig: Any) -> str:
    """The figure's title: its ``suptitle``, else the titles of its axes joined by "; ".

    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> fig, (a, b) = plt.subplots(1, 2)
    >>> _ = a.set_title("queries"), b.set_title("keys")
    >>> figure_title(fig)
    'queries; keys'
    >>> _ = fig.suptitle("Two heatmaps"); figure_title(fig)
    'Two heatmaps'
    >>> plt.close(fig)
    """
    from matplotlib.figure import Figure, SubFigure

    if not isinstance(fig, (Figure, SubFigure)):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__} {fig!r:.60}")
    suptitle = getattr(fig, "_suptitle", None)
    if suptitle is not None and suptitle.get_text().strip():
        return " ".join(suptitle.get_text().split())
    titles = [" ".join(ax.get_title().split()) for ax in fig.axes if ax.get_title().strip()]
    return "; ".join(titles)


def describe_figures() -> bool:
    """Make the notebook's PNG figures carry their title as alt text; True if it could.

    Wraps the PNG formatter that Matplotlib's inline backend registered in IPython (the
    figure's pixels are unchanged) so that it also returns ``{"alt": title}`` as metadata.
    """
    try:
        from IPython import get_ipython
        from matplotlib.figure import Figure
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or not hasattr(shell, "display_formatter"):
        return False
    import matplotlib.pyplot as plt  # activates the inline backend, which registers its formatter

    formatter = shell.display_formatter.formatters["image/png"]
    try:
        inline = formatter.lookup_by_type(Figure)
    except KeyError:  # the inline backend registers its formatter with the first figure
        plt.close(plt.figure())
        try:
            inline = formatter.lookup_by_type(Figure)
        except KeyError:
            return False  # another backend (e.g. a widget backend): figures are not PNG outputs
    if getattr(inline, "_course_alt_text", False):
        return True  # already wrapped (setup_notebook ran twice)

    def png_with_alt(fig: Figure) -> Any:
        data = inline(fig)
        title = figure_title(fig)
        return (data, {"alt": title}) if data is not None and title else data

    png_with_alt._course_alt_text = True  # type: ignore[attr-defined]
    formatter.for_type(Figure, png_with_alt)
    del plt
    return True
