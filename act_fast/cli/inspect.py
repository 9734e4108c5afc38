"""``act-fast inspect``: what a map file (or statistics file) holds, per site, and a PNG across layers."""

from __future__ import annotations

import argparse
from pathlib import Path

from act_fast.cli import common
from act_fast.cli.common import CliError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="per-site table of a map file (or statistics file), and a PNG across layers",
        description="For a map file: how it was fitted (method, support, pooling, model) and per site the channels, the "
        "fraction of channels moved (w ≠ 1 or b ≠ 0), mean |w − 1|, mean |b| and the mean support width; --plot draws the "
        "same across layers. For a statistics file (act-fast collect): per-site counts, means, spreads and how far the "
        "collection got.",
    )
    p.add_argument("file", metavar="MAPS|STATS", help="a .safetensors map or statistics file")
    p.add_argument("--plot", metavar="OUT.png", help="write a PNG of the map summary across sites (map files)")
    p.set_defaults(run=run)


def _kind(path: Path) -> str:
    """``maps`` or ``stats`` from the file's metadata (errors name the file)."""
    from act_fast.fileio import read_safetensors
    from act_fast.maps import FORMAT_NAME as MAPS
    from act_fast.stats.io import FORMAT_NAME as STATS

    meta, _ = read_safetensors(path, "map or statistics file", CliError, tensors=False)
    if MAPS in meta:
        return "maps"
    if STATS in meta:
        return "stats"
    raise CliError(f"{path}: a safetensors file, but neither an act_fast map file nor a statistics file")


def _check_plot_format(plot: Path) -> None:
    """The plot's suffix must be a format matplotlib writes (checked before anything is printed)."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if plot.suffix.lower().lstrip(".") not in formats:
        raise CliError(f"--plot {plot}: matplotlib cannot write {plot.suffix or 'files without a suffix'!r}; "
                       f"use {', '.join('.' + f for f in sorted(formats))}")


def run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    kind = _kind(path)
    if args.plot is not None:
        if kind != "maps":
            raise CliError("--plot draws map files; this is a statistics file")
        common.require_matplotlib("inspect --plot")
        plot = common.check_output(args.plot, suffix=".png")
        _check_plot_format(plot)
    if kind == "stats":
        return _stats(path)
    from act_fast.cli.summary import format_maps_table, plot_maps, summarize_maps
    from act_fast.maps import load_maps

    maps = load_maps(path)
    rows = summarize_maps(maps)
    fingerprint = f"{maps.model_fingerprint[:12]}…" if maps.model_fingerprint else "none"
    print(f"{path}: {len(maps)} sites, {sum(r.channels for r in rows):,} channels")
    print(f"method {maps.method or '?'}, support {maps.support or 'none'}, pooling {maps.pooling or '?'}; model "
          f"{maps.model_type or '?'} (config {fingerprint}); created {maps.created or '?'} by act_fast {maps.version or '?'}\n")
    print(format_maps_table(rows))
    if args.plot is not None:
        title = f"{path.name}: {maps.method or 'maps'} on {len(maps)} sites ({maps.model_type or 'unknown model'})"
        print(f"\nwrote {plot_maps(rows, plot, title)}")
    return 0


def _stats(path: Path) -> int:
    from act_fast.cli.summary import format_stats_table
    from act_fast.stats.io import load_stats, stats_metadata

    meta = stats_metadata(path)
    stats = load_stats(path)
    extra = meta.get("metadata", {})
    fingerprint = f"{meta['model_fingerprint'][:12]}…" if meta["model_fingerprint"] else "none"
    print(f"{path}: statistics of {len(stats)} sites; model {meta['model_type'] or '?'} (config {fingerprint}); "
          f"pooling {extra.get('pooling', '?')}; created {meta['created']} by act_fast {meta['version']}")
    run = extra.get("collect")
    if isinstance(run, dict):
        state = "complete" if run.get("complete") else "checkpoint (resume with act-fast collect --resume)"
        settings = run.get("settings", {})
        print(f"act-fast collect of {extra.get('model', '?')} over {extra.get('data', '?')}: {run.get('prompts', 0):,} prompts, "
              f"{run.get('rows', 0):,} rows, {run.get('tokens', 0):,} tokens; {settings.get('world_size', 1)} process(es), "
              f"batch size {settings.get('batch_size', '?')}; {state}")
    print()
    print(format_stats_table(stats))
    return 0
