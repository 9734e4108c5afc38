"""``act-fast merge``: one statistics file from several collected apart (cluster array jobs, days,
machines), whatever their histogram calibrations (:meth:`act_fast.ChannelStats.merge`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from act_fast.cli import common
from act_fast.cli.common import CliError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        help="merge statistics files collected apart into one",
        description="Merges statistics files (act-fast collect) of the same model, sites and pooling into --out. Counts, "
        "moments, min/max and NaN/Inf counts merge exactly; histograms of equal calibrations add exactly, others are "
        "re-bucketed onto the coarser calibration, which adds a stated amount to the quantile error bound (README, "
        "'Statistics'). The order of the files does not matter beyond that bound.",
    )
    p.add_argument("files", nargs="+", metavar="STATS.safetensors", help="statistics files to merge (two or more)")
    p.add_argument("--out", required=True, metavar="ALL.safetensors", help="statistics file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out instead of refusing")
    p.set_defaults(run=run)


def _common_value(metas: dict[Path, dict[str, Any]], what: str, get: Any) -> Any:
    """The value ``get(meta)`` shared by every file that records one (empty values are unknown);
    refuses two different ones, naming the files."""
    seen: dict[Any, Path] = {}
    for path, meta in metas.items():
        value = get(meta)
        if value in (None, ""):
            continue
        seen.setdefault(value, path)
    if len(seen) > 1:
        (a, pa), (b, pb) = list(seen.items())[:2]
        raise CliError(f"{pa} and {pb} hold statistics of different {what} ({a!r} and {b!r}); merge statistics of one {what}")
    return next(iter(seen), None)


def run(args: argparse.Namespace) -> int:
    import act_fast as af
    from act_fast.stats.io import load_stats, stats_metadata

    paths = [Path(f) for f in args.files]
    if len(paths) < 2:
        raise CliError("merge needs two or more statistics files")
    if len(set(p.resolve() for p in paths)) != len(paths):
        raise CliError("the same statistics file is given twice; its rows would be counted twice")
    out = common.check_output(args.out)
    if out.exists() and not args.overwrite:
        what = "is one of the inputs" if out.resolve() in {p.resolve() for p in paths} else "exists"
        raise CliError(f"{out} {what}; pass --overwrite to replace it")
    metas = {p: stats_metadata(p) for p in paths}
    first = paths[0]
    for p in paths[1:]:
        if metas[p]["sites"] != metas[first]["sites"]:
            missing = sorted(set(metas[first]["sites"]) ^ set(metas[p]["sites"]))
            detail = f"sites only in one of them: {missing[:4]}" if missing else "the same sites in another order"
            raise CliError(f"{p} and {first} hold different sites ({detail}); merge statistics of the same sites")
    fingerprint = _common_value(metas, "models (config fingerprints)", lambda m: m.get("model_fingerprint"))
    model_type = _common_value(metas, "model types", lambda m: m.get("model_type"))
    pooling = _common_value(metas, "pooling", lambda m: m.get("metadata", {}).get("pooling"))
    merged: dict[str, Any] = {}
    rows = 0
    sources = []
    for p in paths:
        stats = load_stats(p)
        for site, s in stats.items():
            if site in merged:
                try:
                    merged[site].merge(s)
                except ValueError as err:
                    raise CliError(f"{p}: site {site!r}: {err}") from None
            else:
                merged[site] = s
        site_rows = next(iter(stats.values())).rows_seen
        rows += site_rows
        run_record = metas[p].get("metadata", {}).get("collect")
        complete = run_record.get("complete") if isinstance(run_record, dict) else None
        sources.append({"file": str(p), "rows": site_rows, "created": metas[p].get("created"), "complete": complete})
    rebucketed = sum(int((s.merge_envelope[0] > 0).sum()) for s in merged.values())
    meta = {"model_type": model_type or "", "model_fingerprint": fingerprint or "", "merged_from": sources}
    if pooling is not None:
        meta["pooling"] = pooling
    af.save_stats(merged, out, metadata=meta)
    channels = sum(s.num_channels for s in merged.values())
    note = (f"; {rebucketed:,} of {channels:,} channels re-bucketed onto a common calibration (quantile bound widened, "
            "see README)") if rebucketed else "; all calibrations equal: exact"
    print(f"wrote {out} ({common.human_bytes(out.stat().st_size)}): {len(merged)} sites, {rows:,} rows from {len(paths)} files{note}")
    incomplete = [s["file"] for s in sources if s["complete"] is False]
    if incomplete:
        print(f"note: {', '.join(incomplete)} {'is a checkpoint' if len(incomplete) == 1 else 'are checkpoints'} of an unfinished collect")
    return 0
