"""The demo's outputs: an aligned text table, a JSON of the numbers and a PNG plot of the curves."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from act_fast.demo.metrics import Scores
from act_fast.demo.run import DemoResult

MAPS_FILE, JSON_FILE, PLOT_FILE = "maps.safetensors", "results.json", "curves.png"


def _columns(result: DemoResult) -> list[tuple[str, Callable[[Scores], float], str]]:
    src, tgt = result.config.source, result.config.target
    return [
        (f"probe: {tgt}", lambda s: s.target_fraction, ".2f"),
        (f"p({tgt})", lambda s: s.target_prob, ".2f"),
        (f"cos({src})", lambda s: s.cos_source, ".3f"),
        (f"cos({tgt})", lambda s: s.cos_target, ".3f"),
    ]


def format_table(result: DemoResult) -> str:
    """The header lines and one aligned row per strength, then the unsteered held-out target row."""
    cfg = result.config
    cols = _columns(result)
    widths = [max(len(name), 7) for name, _, _ in cols]

    def line(first: str, scores: Scores) -> str:
        cells = [f"{get(scores):{w}{fmt}}" for (_, get, fmt), w in zip(cols, widths)]
        return f"{first:>6}  " + "  ".join(cells)

    out = [
        f"{result.model_name}: Linear-AcT (incremental, support {cfg.support}) on {len(result.sites)} "
        f"{cfg.sites} sites, {cfg.source} → {cfg.target}",
        f"fit on {result.num_fit} sentences per topic; scored on {result.num_held_out[cfg.source]} held-out "
        f"{cfg.source} sentences, steered at strength λ",
        f"probe: logistic regression ({cfg.source} vs {cfg.target}) on unsteered fit embeddings; "
        "cos: cosine to each topic's centroid (mean unsteered fit embedding)",
        "",
        f"{'λ':>6}  " + "  ".join(f"{name:>{w}}" for (name, _, _), w in zip(cols, widths)),
    ]
    out += [line(f"{lam:.2f}", scores) for lam, scores in zip(cfg.strengths, result.rows)]
    out += [f"reference: {result.num_held_out[cfg.target]} held-out {cfg.target} sentences, unsteered", line("-", result.reference)]
    return "\n".join(out)


def curves_figure(result: DemoResult) -> "matplotlib.figure.Figure":
    """Two panels against λ: the probe's verdict and the cosines to the two centroids, with the
    unsteered held-out target sentences as dashed reference lines; legends below the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    cfg, ref = result.config, result.reference
    lams = list(cfg.strengths)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5.6))
    fig.subplots_adjust(left=0.07, right=0.98, top=0.86, bottom=0.3, wspace=0.25)
    panels = (
        (left, "fraction / probability", [(f"classified {cfg.target}", "target_fraction", "C0"), (f"mean p({cfg.target})", "target_prob", "C1")]),
        (right, "cosine similarity", [(f"cos to {cfg.source} centroid", "cos_source", "C2"), (f"cos to {cfg.target} centroid", "cos_target", "C3")]),
    )
    reference = Line2D([], [], color="0.4", linestyle="--", linewidth=1, label=f"dashed: held-out {cfg.target} sentences, unsteered")
    for ax, ylabel, series in panels:
        for label, key, color in series:
            ax.plot(lams, [getattr(s, key) for s in result.rows], "o-", color=color, label=label)
            ax.axhline(getattr(ref, key), color=color, linestyle="--", linewidth=1)
        ax.set_xlabel("strength λ")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        # below the axes, so the legend never covers a curve
        handles, _ = ax.get_legend_handles_labels()
        ax.legend(handles=[*handles, reference], fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    left.set_title(f"linear probe on held-out {cfg.source} sentences")
    left.set_ylim(-0.03, 1.03)
    right.set_title("cosine to topic centroids")
    fig.suptitle(f"{result.model_name}: Linear-AcT on {len(result.sites)} {cfg.sites} sites, {cfg.source} → {cfg.target}")
    return fig


def plot_curves(result: DemoResult, path: Path) -> Path:
    """Writes :func:`curves_figure` as a PNG at ``path``."""
    import matplotlib.pyplot as plt

    fig = curves_figure(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def save(result: DemoResult, out: str | os.PathLike, plot: bool = True) -> dict[str, Path]:
    """Writes the maps (atomically, see :meth:`SteeringMaps.save`), the numbers (JSON) and, with
    ``plot``, the PNG into folder ``out``; returns their paths."""
    out = Path(out)
    files = {"maps": result.maps.save(out / MAPS_FILE)}
    if plot:
        files["plot"] = plot_curves(result, out / PLOT_FILE)
    files["json"] = out / JSON_FILE
    files["json"].write_text(json.dumps(result.as_json(), indent=2) + "\n", encoding="utf-8")
    return files
