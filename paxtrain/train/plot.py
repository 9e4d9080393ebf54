"""A PNG of the training and evaluation curves of a run."""

from __future__ import annotations

import pathlib

from paxtrain.train.logger import latest_by_step, read_metrics

PLOT_FILE = "curves.png"


def plot_run(run_dir: str | pathlib.Path, out: str | pathlib.Path | None = None) -> pathlib.Path:
    """Plots every `train/*` and `eval/*` scalar of a run against the step, each step once
    (its last logged value); returns the PNG path.

    Example:
        >>> plot_run("runs/char_rnn")  # doctest: +SKIP
        PosixPath('runs/char_rnn/curves.png')
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    keys = sorted({k for r in records for k in r if k.startswith(("train/", "eval/"))})
    panels = sorted({k.split("/", 1)[1] for k in keys})
    fig, axes = plt.subplots(
        len(panels) or 1, 1, figsize=(7, 2.6 * max(len(panels), 1)), squeeze=False
    )
    for ax, metric in zip(axes[:, 0], panels):
        for split in ("train", "eval"):
            key = f"{split}/{metric}"
            points = latest_by_step(records, key)
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="o" if split == "eval" else None, label=split)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if ax.lines:  # a metric that was never finite has no curve
            ax.legend()
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    path = pathlib.Path(out) if out else pathlib.Path(run_dir) / PLOT_FILE
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
