"""Figures from grad_norms.csv: the file is parsed into per-layer series and drawn to PNG."""

from __future__ import annotations

import csv

from gradwatch.plots import plot_gradient_flow, plot_norms_over_training, read_grad_norms


def write_csv(path):
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "layer", "depth", "grad_norm"])
        for step in (0, 5, 10):
            writer.writerow([step, "net.b", 2, 1.0 + step])
            writer.writerow([step, "net.a", 1, 1e-6 * (step + 1)])
            writer.writerow([step, "net.unused", 3, ""])


def test_series_are_ordered_by_depth_and_skip_missing(tmp_path):
    write_csv(tmp_path / "g.csv")
    layers = read_grad_norms(tmp_path / "g.csv")
    assert [layer.name for layer in layers] == ["net.a", "net.b"]
    assert layers[1].steps == [0, 5, 10] and layers[1].norms == [1.0, 6.0, 11.0]


def test_figures_are_written_as_png(tmp_path):
    write_csv(tmp_path / "g.csv")
    layers = read_grad_norms(tmp_path / "g.csv")
    ax = plot_gradient_flow(layers, save=tmp_path / "flow.png")
    assert [line.get_label() for line in ax.get_lines()] == ["step 0", "step 5", "step 10"]
    assert ax.get_yscale() == "log"
    plot_norms_over_training(layers, save=tmp_path / "train.png")
    for name in ("flow.png", "train.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_titles_sit_where_matplotlib_would_put_them(tmp_path):
    import matplotlib.pyplot as plt

    write_csv(tmp_path / "g.csv")
    layers = read_grad_norms(tmp_path / "g.csv")
    for draw in (plot_gradient_flow, plot_norms_over_training):
        ax = draw(layers)  # axes made by the function: the title placed at their top
        fig = ax.figure
        fig.canvas.draw()
        ours = ax.title.get_window_extent().bounds
        ax._autotitlepos = True  # matplotlib's own search (set_title(y=None) keeps ours)
        fig.canvas.draw()
        assert ours == ax.title.get_window_extent().bounds
        # A caller's axes with tick labels on top: matplotlib still lifts the title over them.
        fig, ax = plt.subplots()
        top = ax.secondary_xaxis("top")
        draw(layers, ax=ax)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        assert ax.title.get_window_extent().y0 >= top.get_tightbbox(renderer).y1 - 1
        plt.close(fig)
