"""Figures: attention heatmaps and validation-BLEU curves (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from lightning_nmt.atomic import atomic_path  # noqa: E402


def plot_attention(
    weights: torch.Tensor, src_pieces: Sequence[str], out_pieces: Sequence[str], path: str | Path,
    title: str = "",
) -> Path:
    """Save a heatmap of attention weights (T_out, S): output pieces on the y axis, source on the x axis."""
    weights = weights[: len(out_pieces), : len(src_pieces)].float().cpu().numpy()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.4 * len(src_pieces) + 2), max(3.0, 0.35 * len(out_pieces) + 1.5)))
    image = ax.imshow(weights, cmap="viridis", aspect="auto", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(src_pieces)), labels=list(src_pieces), rotation=90, fontsize=8)
    ax.set_yticks(range(len(out_pieces)), labels=list(out_pieces), fontsize=8)
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    return _save(fig, path)


def plot_curves(curves: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path,
                ylabel: str = "validation BLEU") -> Path:
    """One line per run: `curves[name] = (steps, values)`."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (steps, values) in curves.items():
        ax.plot(steps, values, marker="o", markersize=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_bands(bands: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float]]], path: str | Path,
               ylabel: str = "validation BLEU") -> Path:
    """One line per configuration, its mean over seeds, in a band of one standard deviation:
    `bands[name] = (steps, mean, std)` (std 0 where one seed reached the step)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, (steps, mean, std) in bands.items():
        (line,) = ax.plot(steps, mean, marker="o", markersize=3, label=name)
        low, high = [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)]
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{ylabel} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    if bands:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_intervals(points: dict[str, tuple[Sequence[float], tuple[float, float] | None]], path: str | Path,
                   ylabel: str = "test BLEU") -> Path:
    """One column per configuration: each seed's value as a dot, their mean as a bar with its 95% interval
    (`points[name] = (values, (low, high) or None)`)."""
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(points) + 2), 4.5))
    for x, (values, interval) in enumerate(points.values()):
        mean = sum(values) / len(values)
        ax.bar(x, mean, width=0.6, alpha=0.35)
        if interval is not None:
            ax.errorbar(x, mean, yerr=[[mean - interval[0]], [interval[1] - mean]], color="black", capsize=6)
        ax.scatter([x] * len(values), values, color="black", s=12, zorder=3)
    ax.set_xticks(range(len(points)), labels=list(points), rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(f"{ylabel} (seeds, mean, 95% CI)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
