"""Per-site summaries of steering maps (``fit`` prints them, ``inspect`` prints and plots them) and of
statistics files (``inspect``)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from act_fast.cli.common import aligned
from act_fast.maps import AffineMap


@dataclass(frozen=True)
class MapSummary:
    """One site's map in numbers.

    Attributes:
        moved: fraction of channels that are not exactly the identity (``w ≠ 1`` or ``b ≠ 0``).
        weight_shift: mean ``|w − 1|``; bias: mean ``|b|``.
        support_width: mean ``hi − lo`` over channels, None without a support.
    """

    site: str
    channels: int
    moved: float
    weight_shift: float
    bias: float
    support_width: float | None


def summarize_maps(maps: Mapping[str, AffineMap]) -> list[MapSummary]:
    rows = []
    for site, m in maps.items():
        w, b = m.weight.double(), m.bias.double()
        moved = ((w != 1) | (b != 0)).double().mean().item()
        width = None if m.lo is None else (m.hi.double() - m.lo.double()).mean().item()
        rows.append(MapSummary(site, m.num_channels, moved, (w - 1).abs().mean().item(), b.abs().mean().item(), width))
    return rows


def format_maps_table(rows: Sequence[MapSummary]) -> str:
    cells = [("site", "channels", "moved", "mean |w−1|", "mean |b|", "support width")]
    for r in rows:
        width = "none" if r.support_width is None else f"{r.support_width:.4g}"
        cells.append((r.site, str(r.channels), f"{r.moved:.1%}", f"{r.weight_shift:.4g}", f"{r.bias:.4g}", width))
    return aligned(cells, [False, True, True, True, True, True])


_LAYER = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def short_label(site: str) -> str:
    """The site from its first layer number on: ``model.layers.3.post_attention_layernorm`` →
    ``3.post_attention_layernorm``, ``encoder.layer.0.attention.output.LayerNorm`` →
    ``0.attention.output.LayerNorm``; a name without a layer number is kept whole."""
    match = _LAYER.search(site)
    if match is None or match.end() == len(site):
        return site
    return site[match.start(1):]


def short_labels(sites: Sequence[str]) -> list[str]:
    """:func:`short_label` of each site, or the full names when two short ones would coincide."""
    labels = [short_label(site) for site in sites]
    return labels if len(set(labels)) == len(labels) else list(sites)


def plot_maps(rows: Sequence[MapSummary], path: Path, title: str) -> Path:
    """Four panels across sites in file order (forward order): fraction of channels moved, mean
    ``|w − 1|``, mean ``|b|`` and mean support width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(len(rows)))
    labels = short_labels([r.site for r in rows])
    panels = [
        ("channels moved (fraction)", [r.moved for r in rows]),
        ("mean |w − 1|", [r.weight_shift for r in rows]),
        ("mean |b|", [r.bias for r in rows]),
        ("mean support width (hi − lo)", [float("nan") if r.support_width is None else r.support_width for r in rows]),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(max(8.0, 0.35 * len(rows) + 4), 6.5), sharex=True, constrained_layout=True)
    for ax, (name, values) in zip(axes.flat, panels):
        ax.plot(x, values, "o-", markersize=3)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=90, fontsize=7)
        ax.set_xlabel("site (layer.module, forward order)")
    axes[0][0].set_ylim(-0.03, 1.03)
    if all(r.support_width is None for r in rows):
        axes[1][1].text(0.5, 0.5, "no support (maps act everywhere)", ha="center", va="center", transform=axes[1][1].transAxes)
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def format_stats_table(stats: Mapping[str, object]) -> str:
    """One row per site of a statistics file: channels, values counted, mean of the channel means
    and stds, min / max over channels, NaN and ±Inf counts."""
    import torch

    cells = [("site", "channels", "values/channel", "mean(mean)", "mean(std)", "min", "max", "NaN", "±Inf")]
    for site, s in stats.items():
        count = s.count  # type: ignore[attr-defined]
        if int(count.max()) == 0:
            cells.append((site, str(s.num_channels), "0", "—", "—", "—", "—", "0", "0"))  # type: ignore[attr-defined]
            continue
        finite = count > 0
        mean, std = s.mean[finite], s.std()[finite]  # type: ignore[attr-defined]
        infs = int(s.pos_inf_count.sum() + s.neg_inf_count.sum())  # type: ignore[attr-defined]
        cells.append((
            site, str(s.num_channels), f"{int(count.max()):,}", f"{mean.mean().item():.4g}", f"{torch.nan_to_num(std).mean().item():.4g}",  # type: ignore[attr-defined]
            f"{s.min[finite].min().item():.4g}", f"{s.max[finite].max().item():.4g}", f"{int(s.nan_count.sum()):,}", f"{infs:,}",  # type: ignore[attr-defined]
        ))
    return aligned(cells, [False] + [True] * 8)
