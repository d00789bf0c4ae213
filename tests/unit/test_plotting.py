from __future__ import annotations

import pytest
import torch

from course_utils.plotting import (
    plot_attention,
    plot_attention_overlay,
    plot_learning_curves,
    plot_time_series,
)


def test_heatmap_labels_and_grid():
    w = torch.softmax(torch.randn(2, 3, 4, 5), -1)  # (layers, heads, Lq, Lk)
    fig = plot_attention(w, x_labels=list("abcde"), y_labels=list("wxyz"), title="grid")
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 6  # 2 layers x 3 heads
    assert [t.get_text() for t in panels[0].get_xticklabels()] == list("abcde")
    assert [t.get_text() for t in panels[0].get_yticklabels()] == list("wxyz")
    assert fig._suptitle.get_text() == "grid"
    assert panels[-1].get_xlabel() == "keys" and panels[0].get_ylabel() == "queries"


def test_heatmap_errors_name_shapes():
    with pytest.raises(ValueError, match=r"got shape \(5,\)"):
        plot_attention(torch.rand(5))
    with pytest.raises(ValueError, match="x_labels has 2 labels but weights have 4 keys"):
        plot_attention(torch.rand(3, 4), x_labels=["a", "b"])
    with pytest.raises(ValueError, match="got 1 titles for 2 panels"):
        plot_attention(torch.rand(2, 3, 4), titles=["only one"])


def test_overlay_accepts_chw_and_hw():
    fig = plot_attention_overlay(torch.rand(3, 16, 16), torch.rand(4, 4))
    assert len(fig.axes) == 3
    fig = plot_attention_overlay(torch.rand(16, 16), torch.rand(3, 2, 2), titles=["a", "b", "c"], ncols=2)
    assert [ax.get_title() for ax in fig.axes[:4]] == ["input", "a", "b", "c"]
    with pytest.raises(ValueError, match="attention must be"):
        plot_attention_overlay(torch.rand(16, 16), torch.rand(2, 2, 2, 2))


def test_learning_curves_smoothing_and_pairs():
    fig = plot_learning_curves({"train": list(range(10)), "valid": ([0, 5, 9], [3, 2, 1])}, smooth=3, logy=True)
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert list(lines[0].get_ydata()[:4]) == [0.0, 0.5, 1.0, 2.0]  # trailing mean, window 3
    assert list(lines[1].get_xdata()) == [0, 5, 9]
    assert ax.get_yscale() == "log" and ax.get_title() == "Learning curves"
    with pytest.raises(ValueError, match="at least one curve"):
        plot_learning_curves({})


# One case per kind of mistake, each message naming its argument: a str or a meta tensor where
# numbers are plotted, a layout setting that zero, a float or a negative would have bent
# (ncols=0 read as "automatic"), NaN/inf colour limits, flags that are not bools (annotate=
# "no" drew numbers), a str where a mapping of curves is expected, an x axis that is not a key.
@pytest.mark.parametrize("call, error, message", [
    (lambda: plot_attention("x"), TypeError, "weights must be numbers .* got str 'x'"),
    (lambda: plot_attention(torch.rand(3, 4, device="meta")), ValueError,
     "weights must hold values to plot, got a tensor on the meta device"),
    (lambda: plot_attention(torch.rand(2, 3, 4), ncols=0), ValueError,
     "ncols must be a positive int, got 0"),
    (lambda: plot_attention(torch.rand(3, 4), vmax=float("nan")), ValueError,
     "vmax must be a real number"),
    (lambda: plot_attention(torch.rand(3, 4), vmin="0"), TypeError, "vmin must be a real number"),
    (lambda: plot_attention(torch.rand(3, 4), annotate="no"), TypeError,
     "annotate must be True or False"),
    (lambda: plot_attention(torch.rand(3, 4), cell_size=-0.3), ValueError,
     r"cell_size must be a real number in \(0.0, inf\)"),
    (lambda: plot_attention_overlay(torch.rand(16, 16), "x"), TypeError,
     "attention must be numbers"),
    (lambda: plot_attention_overlay(torch.rand(16, 16), torch.rand(2, 2), ncols=2.5), ValueError,
     "ncols must be a positive int, got 2.5"),
    (lambda: plot_learning_curves("loss"), TypeError, "curves must be a mapping"),
    (lambda: plot_learning_curves({"a": [1.0, 2.0]}, smooth=0), ValueError,
     "smooth must be a positive int, got 0"),
    (lambda: plot_learning_curves({"a": [1.0, 2.0]}, logy=None), TypeError,
     "logy must be True or False"),
    (lambda: plot_learning_curves({"a": [1.0, 2.0]}, band="x"), TypeError,
     "band must be a mapping"),
    (lambda: plot_time_series(None), TypeError, "samples must be a mapping"),
    (lambda: plot_time_series({"t": [0, 1], "y": [1, 2]}), ValueError,
     "x must be a key of samples .* got 'time_s'"),
    (lambda: plot_time_series({"time_s": [0, 1]}), ValueError,
     "samples must hold a series besides x='time_s'"),
])
def test_bad_input_names_its_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()
