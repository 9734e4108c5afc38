"""``act-fast fit``: steering maps from two prompt sources on a model (``af.fit`` / ``af.fit_lineas``)
or from two statistics files written by ``act-fast collect`` (``af.fit_map`` per site, no model)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from act_fast.cli import common
from act_fast.cli.common import CliError

LINEAS = "lineas"
DEFAULT_SITES = "post_layernorm"


def add_parser(sub: argparse._SubParsersAction) -> None:
    from act_fast.estimators import METHODS
    from act_fast.stats.pooling import POOLINGS

    p = sub.add_parser(
        "fit",
        help="fit steering maps from two prompt sets (on a model) or two statistics files (no model)",
        description="Either --model M --source A --target B: runs the model over both prompt sets and fits one map per site "
        "(Linear-AcT and the other closed forms incrementally by default, or LinEAS end to end with --method lineas); or "
        "--source-stats S --target-stats T: fits each site's map from statistics files of act-fast collect, without a model. "
        "Writes a map file (--out) and prints a per-site summary. The source has the concept; the maps move it toward the target.",
    )
    text = p.add_argument_group("from text (needs --model)")
    common.add_model_options(text, model_required=False)
    text.add_argument("--source", metavar="FILE|DATASET", help="prompts with the concept (.txt, .jsonl, or a datasets name/folder)")
    text.add_argument("--target", metavar="FILE|DATASET", help="prompts without it")
    text.add_argument("--field", help="JSON field / dataset column holding the text (default: text)")
    text.add_argument("--split", help="dataset split (default: train)")
    text.add_argument("--subset", help="dataset configuration, e.g. en for allenai/c4")
    text.add_argument("--limit", type=common.positive_int, metavar="N", help="use only the first N prompts of each side")
    text.add_argument("--sites", default=None, metavar="PRESET|NAME,...",
                      help=f"site preset or comma-separated module names (default: {DEFAULT_SITES}; with statistics files: every site in them)")
    text.add_argument("--pooling", choices=POOLINGS, help="per-prompt pooling (default: mean; with statistics files: theirs)")
    text.add_argument("--batch-size", type=common.positive_int, default=8, help="prompts per forward pass (default: %(default)s)")
    text.add_argument("--max-length", type=common.positive_int, metavar="TOKENS", help="truncate prompts to this many tokens (default: the model's maximum)")
    text.add_argument("--independent", action="store_true",
                      help="fit every site on the unsteered model in one pass (default: incremental, site l on activations "
                      "already transported by the maps before it)")
    text.add_argument("--cache-budget", type=byte_count, metavar="BYTES",
                      help="incremental fits run layer by layer and keep the activations entering each block for every prompt: "
                      "at most this much in memory (both sides; suffixes K, M, G), the rest in temporary files (default: all in memory)")
    stats = p.add_argument_group("from statistics files (no model)")
    stats.add_argument("--source-stats", metavar="STATS.safetensors", help="statistics of the source prompts (act-fast collect)")
    stats.add_argument("--target-stats", metavar="STATS.safetensors", help="statistics of the target prompts")
    how = p.add_argument_group("the maps")
    how.add_argument("--method", choices=[*METHODS, LINEAS], default="linear_act", help="estimator (default: %(default)s)")
    how.add_argument("--support", metavar="PRESET|LO,HI",
                     help="where maps act: q_all, q_0_100, …, q_40_60, or two source quantile levels "
                     "(default: the method's, q_0_100 for linear_act and none for the others; LinEAS has none)")
    how.add_argument("--out", required=True, metavar="MAPS.safetensors", help="map file to write")
    lineas = p.add_argument_group("LinEAS (--method lineas)")
    lineas.add_argument("--steps", type=common.positive_int, default=1000, help="optimiser steps (default: %(default)s)")
    lineas.add_argument("--lr", type=common.positive_float, default=1e-3, help="learning rate (default: %(default)s)")
    lineas.add_argument("--l1", type=float, default=0.0, help="L1 sparsity weight (default: %(default)s)")
    lineas.add_argument("--group-lasso", type=float, default=0.0, help="group-lasso weight per site (default: %(default)s)")
    lineas.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    common.add_progress_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from_text = any(v is not None for v in (args.model, args.source, args.target))
    from_stats = any(v is not None for v in (args.source_stats, args.target_stats))
    if from_text == from_stats:
        raise CliError("give either --model with --source and --target (fit from text) or --source-stats and --target-stats (fit from statistics)")
    lineas = args.method == LINEAS
    if lineas and args.support is not None:
        raise CliError("LinEAS maps have no support; drop --support")
    if lineas and args.independent:
        raise CliError("LinEAS fits all sites jointly; --independent applies to the closed-form methods")
    from act_fast.estimators.closed_form import resolve_support

    support = None if lineas else resolve_support(args.method, common.check_support(args.support))
    out = common.check_output(args.out)
    if from_stats:
        if args.source_stats is None or args.target_stats is None:
            raise CliError("fitting from statistics needs both --source-stats and --target-stats")
        if lineas:
            raise CliError("LinEAS trains through the model; it cannot fit from statistics files (give --model, --source, --target)")
        maps, seconds = _from_stats(args, support)
    else:
        missing = [flag for flag, v in (("--model", args.model), ("--source", args.source), ("--target", args.target)) if v is None]
        if missing:
            raise CliError(f"fitting from text needs {', '.join(missing)} as well")
        maps, seconds = _from_text(args, support)
    from act_fast.cli.summary import format_maps_table, summarize_maps

    path = maps.save(out)
    print(f"{maps.method} maps, support {maps.support or 'none'}, pooling {maps.pooling}, {len(maps)} sites "
          f"({maps.model_type or 'unknown model'}):")
    print(format_maps_table(summarize_maps(maps)))
    print(f"wrote {path} ({common.human_bytes(path.stat().st_size)}) in {seconds:.1f} s")
    return 0


def _from_stats(args: argparse.Namespace, support: Any) -> tuple[Any, float]:
    import act_fast as af
    from act_fast.estimators.support import support_name
    from act_fast.maps import SteeringMaps
    from act_fast.stats.io import stats_metadata

    for flag in ("model", "source", "target", "limit", "max_length", "field", "split", "subset"):
        if getattr(args, flag) is not None:
            raise CliError(f"--{flag.replace('_', '-')} applies to fitting from text, not from statistics files")
    start = time.perf_counter()
    metas = {path: stats_metadata(path) for path in (args.source_stats, args.target_stats)}
    src_meta, tgt_meta = metas[args.source_stats], metas[args.target_stats]
    if src_meta["model_fingerprint"] and tgt_meta["model_fingerprint"] and src_meta["model_fingerprint"] != tgt_meta["model_fingerprint"]:
        raise CliError(f"{args.source_stats} and {args.target_stats} come from different models "
                       f"({src_meta['model_type']} {src_meta['model_fingerprint'][:12]}… vs {tgt_meta['model_type']} {tgt_meta['model_fingerprint'][:12]}…)")
    pooling = [m.get("metadata", {}).get("pooling") for m in (src_meta, tgt_meta)]
    if pooling[0] != pooling[1]:
        raise CliError(f"{args.source_stats} was pooled {pooling[0]!r}, {args.target_stats} {pooling[1]!r}: fit statistics pooled alike")
    if args.pooling is not None and args.pooling != pooling[0]:
        raise CliError(f"--pooling {args.pooling}: the statistics files were pooled {pooling[0]!r} when collected")
    sites = list(src_meta["sites"])
    if args.sites is not None:
        chosen = common.check_sites(args.sites)
        if isinstance(chosen, str):
            raise CliError(f"--sites {args.sites!r}: a preset needs a model; with statistics files name the sites (comma-separated)")
        unknown = [s for s in chosen if s not in sites]
        if unknown:
            raise CliError(f"--sites {unknown[:3]} are not in {args.source_stats} (sites: {sites[:4]}…)")
        sites = list(chosen)
    missing = [s for s in sites if s not in tgt_meta["sites"]]
    if missing:
        raise CliError(f"{args.target_stats} has no statistics for sites {missing[:3]} of {args.source_stats}")
    source, target = af.load_stats(args.source_stats), af.load_stats(args.target_stats)
    maps = {}
    for site in sites:
        try:
            maps[site] = af.fit_map(source[site], target[site], method=args.method, support=support)
        except ValueError as err:
            raise CliError(f"site {site!r}: {common.one_line(err)}") from None
    fitted = SteeringMaps(maps, method=args.method, support=support_name(support), pooling=pooling[0] or "",
                          model_type=src_meta["model_type"], model_fingerprint=src_meta["model_fingerprint"])
    return fitted, time.perf_counter() - start


def byte_count(text: str) -> int:
    """``--cache-budget``: a non-negative byte count, optionally with a K / M / G suffix (powers of 1000)."""
    value = text.strip().upper().removesuffix("B")
    scale = {"K": 10**3, "M": 10**6, "G": 10**9}.get(value[-1:], 1)
    number = value[:-1] if scale > 1 else value
    try:
        count = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a byte count such as 500M or 2G, got {text!r}") from None
    if not count >= 0 or count == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a non-negative byte count, got {text!r}")
    return int(count * scale)


def _announce_layerwise(model: Any, sites: list[str], batches: dict[str, list], budget: int | None) -> None:
    """Says, before the fit starts, whether it runs layer by layer and what it keeps per token."""
    from act_fast.estimators.layerwise import estimate_bytes_per_token

    per_token, why = estimate_bytes_per_token(model, sites, batches["source"][0])
    if per_token is None:
        print(f"incremental fit by whole-model forwards (one per site and side), not layer by layer: {why}")
        return
    tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel() for side in batches.values() for b in side)
    where = "in memory" if budget is None else f"in memory up to {common.human_bytes(budget)}, the rest in temporary files"
    print(f"incremental fit layer by layer: {per_token:,.0f} bytes kept per prompt token, about "
          f"{common.human_bytes(int(per_token * tokens))} for {tokens:,} tokens ({where})")


def _from_text(args: argparse.Namespace, support: Any) -> tuple[Any, float]:
    import itertools

    import act_fast as af
    from act_fast.cli.models import load_config, load_model
    from act_fast.prompts import batched, model_accepts, model_max_length, read_prompts, tokenize

    for flag in ("source_stats", "target_stats"):
        if getattr(args, flag) is not None:
            raise CliError(f"--{flag.replace('_', '-')} cannot be combined with --model/--source/--target")
    device = common.check_device(args.device)
    sites_arg = common.check_sites(args.sites or DEFAULT_SITES)
    sources = {side: read_prompts(spec, field=args.field, split=args.split, subset=args.subset) for side, spec in (("source", args.source), ("target", args.target))}
    for s in sources.values():
        s.check()
    texts = {side: list(itertools.islice(iter(s), args.limit)) for side, s in sources.items()}
    config = load_config(args.model)
    common.check_preset_fits(sites_arg, config)

    start = time.perf_counter()
    tokenizer, model = load_model(args.model, device, args.dtype, config=config)
    token_types = model_accepts(model, "token_type_ids") and "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    max_length = args.max_length or model_max_length(tokenizer, model)
    batches = {side: [tokenize(tokenizer, b, max_length, token_type_ids=token_types) for b in batched(t, args.batch_size)]
               for side, t in texts.items()}
    sites = af.sites(model, sites_arg) if isinstance(sites_arg, str) else list(sites_arg)
    progress = common.progress_enabled(args.progress)
    print(f"fitting {args.method} on {len(sites)} sites of {args.model} from {len(texts['source'])} source and "
          f"{len(texts['target'])} target prompts")
    if args.method == LINEAS:
        maps = af.fit_lineas(model, source_batches=batches["source"], target_batches=batches["target"], sites=sites,
                             steps=args.steps, lr=args.lr, l1=args.l1, group=args.group_lasso,
                             pooling=args.pooling or "mean", seed=args.seed, progress=progress)
    else:
        if not args.independent:
            _announce_layerwise(model, sites, batches, args.cache_budget)
        maps = af.fit(model, source_batches=batches["source"], target_batches=batches["target"], sites=sites, method=args.method,
                      support=support, incremental=not args.independent, pooling=args.pooling or "mean", progress=progress,
                      cache_budget=args.cache_budget)
    return maps, time.perf_counter() - start

