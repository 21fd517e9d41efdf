"""Plots people would rather look at than read (matplotlib, optional)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Iterable, Optional, Sequence

if TYPE_CHECKING:
    import torch


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def save_png(fig, path: str) -> str:
    """Render a matplotlib figure to PNG and write it atomically; closes the figure."""
    import io

    import matplotlib.pyplot as plt

    from ..results import write_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, buf.getvalue())
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def group_accuracy_bars(reports: Dict[str, "object"], path: str, title: str = "",
                        group_names: Optional[Sequence[str]] = None) -> str:
    """Grouped bars: per-group accuracy of each method (dict name -> GroupReport), PNG."""
    import numpy as np

    plt = _pyplot()

    names = list(reports)
    n_groups = max(len(r.per_group) for r in reports.values())
    labels = list(group_names) if group_names else [f"group {i}" for i in range(n_groups)]
    width = 0.8 / max(1, len(names))
    # the legend sits right of the axes, never over the bars
    fig, ax = plt.subplots(figsize=(4.6 + 1.3 * n_groups, 3.6))
    xs = np.arange(n_groups)
    for k, name in enumerate(names):
        accs = [g["accuracy"] if g["accuracy"] is not None else 0.0 for g in reports[name].per_group]
        wga = reports[name].worst_group_accuracy
        ax.bar(xs + k * width, accs, width, label=f"{name} (worst {100 * wga:.1f}%)" if wga is not None else name)
    ax.set_xticks(xs + width * (len(names) - 1) / 2, labels[:n_groups])
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
    fig.tight_layout()
    return save_png(fig, path)


def delta_plot(nt_report: Dict, path: str, title: str = "") -> str:
    """NeuronTune's δ per neuron and class (first round), chosen neurons marked."""
    import numpy as np

    plt = _pyplot()

    rnd = nt_report["rounds"][0]
    delta = np.array([[np.nan if v is None else v for v in row] for row in rnd["delta"]], dtype=float)
    chosen = rnd["spurious"]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    xs = np.arange(delta.shape[1])
    for c, row in enumerate(delta):
        if np.isnan(row).all():
            continue
        ax.plot(xs, row, ".", ms=4, label=f"class {c}")
        picks = chosen[c] if chosen and isinstance(chosen[0], list) else chosen
        ax.plot(picks, row[picks], "o", mfc="none", ms=8, color="k")
    lam = rnd.get("lam", nt_report["params"]["lam"])
    if np.isfinite(lam):
        ax.axhline(lam, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("neuron")
    ax.set_ylabel("δ = median(wrong) − median(right)")
    ax.set_title(title + " (circled: zeroed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def save_saliency_grid(path: str, images: torch.Tensor, maps: Iterable[torch.Tensor], titles=None,
                       row_labels=None) -> str:
    """A PNG grid: one row per image, its picture then each map of ``maps`` (each (B, H, W)
    or (B, C, H, W) images); ``images`` (B, C, H, W) are min-max scaled for display."""
    import torch

    from ..saliency import minmax

    plt = _pyplot()
    cols = [images] + list(maps)
    b = images.shape[0]
    fig, axes = plt.subplots(b, len(cols), figsize=(1.6 * len(cols), 1.6 * b), squeeze=False)
    for j, col in enumerate(cols):
        for i in range(b):
            im = col[i].detach()
            gray = im.dtype == torch.bool or im.dim() == 3  # masks and pictures; maps in colour
            im = im.float()
            if im.dim() == 3:  # a picture: channels last, scaled for display
                im = minmax(im[None])[0].permute(1, 2, 0)
                im = im[..., 0] if im.shape[-1] == 1 else im
            ax = axes[i, j]
            ax.imshow(im.numpy(), cmap="gray" if gray else "magma", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0 and titles is not None:
                ax.set_title(titles[j], fontsize=8)
            if j == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[i], fontsize=7)
    fig.tight_layout()
    return save_png(fig, path)
