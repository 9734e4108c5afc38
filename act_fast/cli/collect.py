"""``act-fast collect``: per-site activation statistics of a model over a prompt source, written to
a statistics file; sharded under ``torchrun``, checkpointed and resumable.

Length bucketing: the prompts are read in windows of ``--sort-window`` batches; each window is
sorted by prompt length in characters (ties in source order) and cut into global batches of
``--batch-size``, so a batch pads to a length close to its prompts' (``--sort-window 1``: source
order). The order is a function of the data and these settings only. Sharding: rank ``r`` of
``W`` runs global batches ``r, r + W, r + 2W, …`` (so rank 0's first batch is the global first batch,
whose activations fix each channel's histogram calibration exactly as in a single-process run).
Each rank reads the whole stream (text is cheap next to a forward pass) and tokenises only its
own batches. Statistics are merged with ``ChannelStats.all_reduce``; rank 0 writes.

Checkpoints: every ``K`` rounds (``K`` batches per process) the merged statistics are written to
``--out`` atomically, with how many prompts of completed windows were consumed, a SHA-256 of them,
how many batches of the window under way are done, and the run's settings (world size, batch
size, sort window, …). ``--resume`` checks the settings and the hash, skips the
consumed prompts and continues; a run killed at any moment loses at most the work since the last
checkpoint, and its resumed result equals an uninterrupted run (see the README for what "equal"
means with several processes).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from act_fast.cli import common
from act_fast.cli.common import CliError

DEFAULT_SITES = "post_layernorm"
DEFAULT_SORT_WINDOW = 16


def add_parser(sub: argparse._SubParsersAction) -> None:
    from act_fast.stats.pooling import POOLINGS

    p = sub.add_parser(
        "collect",
        help="per-site activation statistics of a model over your prompts (torchrun-sharded, resumable)",
        description="Runs the model over the prompts of --data and writes per-site activation statistics (moments, "
        "min/max, NaN/Inf counts, log-bucket histograms) to --out, a safetensors statistics file that `act-fast fit "
        "--source-stats/--target-stats` and act_fast.load_stats read. Under `torchrun --nproc-per-node N` each process "
        "takes every N-th batch and rank 0 writes the merged statistics. Every --checkpoint-every batches the file is "
        "rewritten atomically; --resume continues an interrupted run.",
    )
    common.add_model_options(p)
    p.add_argument("--data", required=True, metavar="FILE|DATASET",
                   help=".txt (one prompt a line), .jsonl (a 'text' field or --field), .csv/.parquet/.json, or a Hugging Face "
                   "datasets name or folder (--split, --field)")
    p.add_argument("--field", help="JSON field / dataset column holding the text (default: text)")
    p.add_argument("--split", help="dataset split (default: train)")
    p.add_argument("--subset", help="dataset configuration, e.g. en for allenai/c4")
    p.add_argument("--out", required=True, metavar="STATS.safetensors", help="statistics file to write")
    p.add_argument("--sites", default=DEFAULT_SITES, metavar="PRESET|NAME,...",
                   help="site preset (post_layernorm, layernorm, o_proj, attn_out, mlp_out, generic:…) or comma-separated "
                   "module names (default: %(default)s)")
    p.add_argument("--pooling", choices=POOLINGS, default="mean",
                   help="one row per prompt (mean / last / max / min over its tokens) or per token (none) (default: %(default)s)")
    p.add_argument("--batch-size", type=common.positive_int, default=8, help="prompts per forward pass and process (default: %(default)s)")
    p.add_argument("--sort-window", type=common.positive_int, default=DEFAULT_SORT_WINDOW, metavar="K",
                   help="sort the prompts by length within windows of K batches, so batches pad little; 1: source order "
                   "(default: %(default)s)")
    p.add_argument("--max-length", type=common.positive_int, metavar="TOKENS",
                   help="truncate prompts to this many tokens (default: the model's maximum)")
    p.add_argument("--limit", type=common.positive_int, metavar="N", help="use only the first N prompts of the source")
    p.add_argument("--checkpoint-every", type=common.nonnegative_int, default=100, metavar="K",
                   help="write the statistics so far every K batches per process; 0: only at the end (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the run that wrote --out (starts afresh when --out does not exist)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out instead of refusing")
    p.add_argument("--mantissa-bits", type=common.positive_int, metavar="M",
                   help="histogram resolution: 2^M buckets per binade, quantile error ≤ 2^-M (default: ChannelStats')")
    common.add_progress_option(p)
    p.set_defaults(run=run)


# ----------------------------------------------------------------------------- the run's record
@dataclass
class Record:
    """What a checkpoint says about the run that wrote it (``metadata["collect"]`` of the file)."""

    settings: dict[str, Any]
    prompts: int = 0  # consumed from the source, all ranks together
    batches: int = 0  # global batches consumed
    rows: int = 0
    tokens: int = 0
    data_sha256: str = ""
    complete: bool = False
    window_batches: int = 0  # batches of the window under way already collected

    def as_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "prompts": self.prompts, "batches": self.batches, "rows": self.rows,
                "tokens": self.tokens, "data_sha256": self.data_sha256, "complete": self.complete,
                "window_batches": self.window_batches}


def settings_of(args: argparse.Namespace, world: int) -> dict[str, Any]:
    """The settings a resumed run must share with the run it continues (``--limit`` may grow: the
    prompts consumed so far are the same)."""
    return {"world_size": world, "batch_size": args.batch_size, "max_length": args.max_length, "pooling": args.pooling,
            "sites": args.sites, "field": args.field, "split": args.split, "subset": args.subset, "dtype": args.dtype,
            "mantissa_bits": args.mantissa_bits, "sort_window": args.sort_window}


def read_checkpoint(out: Path, settings: dict[str, Any]) -> Record:
    """The record of an earlier run's file, refusing one whose settings differ from this run's."""
    from act_fast.stats.io import stats_metadata

    meta = stats_metadata(out)
    saved = meta.get("metadata", {}).get("collect")
    if not isinstance(saved, dict) or not isinstance(saved.get("settings"), dict):
        raise CliError(f"{out} is a statistics file but not one written by act-fast collect; it cannot be resumed")
    old = {"sort_window": 1, **saved["settings"]}  # files from before length bucketing read in source order
    names = {"world_size": "world size (torchrun processes)"}
    diffs = [f"{names.get(k, '--' + k.replace('_', '-'))} {old.get(k)!r} → {v!r}" for k, v in settings.items() if old.get(k) != v]
    if diffs:
        raise CliError(f"cannot resume {out}: settings differ from the run that wrote it ({'; '.join(diffs)})")
    try:
        return Record(old, int(saved["prompts"]), int(saved["batches"]), int(saved["rows"]), int(saved["tokens"]),
                      str(saved["data_sha256"]), bool(saved["complete"]), int(saved.get("window_batches", 0)))
    except (KeyError, TypeError, ValueError):
        raise CliError(f"{out}: corrupt act-fast collect record in its metadata") from None


# ----------------------------------------------------------------------------- the prompt stream
class PromptHash:
    """SHA-256 over the consumed prompts (length-prefixed UTF-8), to check a resumed source."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def add(self, prompts: list[str]) -> None:
        for text in prompts:
            data = text.encode("utf-8")
            self._h.update(len(data).to_bytes(8, "little"))
            self._h.update(data)

    def hexdigest(self) -> str:
        return self._h.copy().hexdigest()


def skip_consumed(prompts: Iterator[str], record: Record, source: str, digest: PromptHash) -> None:
    """Reads the prompts an earlier run consumed and checks they are the same ones."""
    done = list(itertools.islice(prompts, record.prompts))
    if len(done) < record.prompts:
        raise CliError(f"cannot resume: {source} has {len(done)} prompts, the checkpoint consumed {record.prompts} (different data?)")
    digest.add(done)
    if digest.hexdigest() != record.data_sha256:
        raise CliError(f"cannot resume: the first {record.prompts} prompts of {source} differ from those the checkpoint consumed (different data or order)")


def length_sorted_batches(prompts: Iterator[str], batch_size: int, window: int, skip: int = 0) -> Iterator[tuple[list[str], list[str] | None]]:
    """Global batches of ``prompts``: each window of ``window × batch_size`` prompts sorted by length in
    characters (stable: ties keep source order; ``window = 1`` keeps source order) and cut into batches.
    Yields ``(batch, window_prompts)``, ``window_prompts`` (source order) with the window's last
    batch only, else None. ``skip``: batches of the first window already collected (a resume)."""
    while chunk := list(itertools.islice(prompts, window * batch_size)):
        ordered = chunk if window == 1 else sorted(chunk, key=len)
        batches = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
        for k, batch in enumerate(batches):
            if k >= skip:
                yield batch, (chunk if k == len(batches) - 1 else None)
        skip = 0


@dataclass
class Shard:
    """This rank's batches of the global batch stream, read round by round (W global batches)."""

    batches: Iterator[tuple[list[str], list[str] | None]]
    rank: int
    world: int
    digest: PromptHash
    prompts: int = 0
    global_batches: int = 0
    window_batches: int = 0
    exhausted: bool = False
    pending: list[list[str]] | None = field(default=None, repr=False)

    def next_round(self) -> list[list[str]] | None:
        if self.pending is not None:
            round_, self.pending = self.pending, None
            return round_
        items = list(itertools.islice(self.batches, self.world))
        if not items:
            self.exhausted = True
            return None
        for _, window in items:
            self.window_batches += 1
            if window is not None:  # a window done: its prompts count as consumed, in source order
                self.digest.add(window)
                self.prompts += len(window)
                self.window_batches = 0
        self.global_batches += len(items)
        return [batch for batch, _ in items]

    def peek_round(self) -> list[list[str]] | None:
        self.pending = self.next_round()
        return self.pending

    def mine(self, rounds: int | None) -> Iterator[list[str]]:
        """This rank's batches of the next ``rounds`` rounds (all remaining when None)."""
        for _ in itertools.count() if rounds is None else range(rounds):
            round_ = self.next_round()
            if round_ is None:
                return
            if self.rank < len(round_):
                yield round_[self.rank]


# ----------------------------------------------------------------------------- the command
def run(args: argparse.Namespace) -> int:
    from act_fast.cli import distributed
    from act_fast.cli.models import load_config
    from act_fast.prompts import read_prompts

    # Everything checkable without the model, first.
    device = common.check_device(args.device)
    sites_arg = common.check_sites(args.sites)
    source = read_prompts(args.data, field=args.field, split=args.split, subset=args.subset)
    source.check()
    out = common.check_output(args.out)
    if args.resume and args.overwrite:
        raise CliError("--resume and --overwrite exclude each other")
    world = distributed.world_size()
    settings = settings_of(args, world)
    record = Record(settings)
    resuming = args.resume and out.exists()
    if out.exists() and not args.resume and not args.overwrite:
        raise CliError(f"{out} exists; pass --resume to continue the run that wrote it, or --overwrite to start again")
    if resuming:
        record = read_checkpoint(out, settings)
    config = load_config(args.model)  # the config only: cheap, and it tells the model's family and fingerprint
    common.check_preset_fits(sites_arg, config)
    if resuming:
        _check_same_model(out, args.model, config)
    digest = PromptHash()
    prompts = iter(source)
    if resuming:
        skip_consumed(prompts, record, source.describe(), digest)
    if args.limit is not None:
        prompts = itertools.islice(prompts, max(0, args.limit - record.prompts))
    shard = Shard(length_sorted_batches(prompts, args.batch_size, args.sort_window, record.window_batches), distributed.rank(), world,
                  digest, record.prompts, record.batches, record.window_batches)
    if not resuming:
        first = shard.peek_round()  # every process needs a first batch (it calibrates the histograms)
        if first is None:
            raise CliError(f"{source.describe()}: no prompts to collect")
        if len(first) < world:
            raise CliError(f"{source.describe()} makes {len(first)} batch(es) of {args.batch_size} prompts, fewer than the "
                           f"{world} processes; use a smaller --batch-size or fewer processes")

    dist = distributed.init(device)
    try:
        status = _collect(args, dist, source, out, sites_arg, config, record, resuming, shard)
        dist.barrier()  # rank 0 has written the file; no rank tears the group down under another
        return status
    finally:
        dist.close()


def _collect(args, dist, source, out: Path, sites_arg, config, record: Record, resuming: bool, shard: Shard) -> int:
    import torch

    import act_fast as af
    from act_fast.cli.models import load_model
    from act_fast.prompts import model_accepts, model_max_length, tokenize
    from act_fast.modeling import resolve_sites
    from act_fast.stats.io import load_stats, stats_metadata

    start = time.perf_counter()
    tokenizer, model = load_model(args.model, dist.device, args.dtype, config=config)
    site_names = af.sites(model, sites_arg) if isinstance(sites_arg, str) else list(sites_arg)
    resolve_sites(model, site_names)
    max_length = args.max_length or model_max_length(tokenizer, model)
    token_types = model_accepts(model, "token_type_ids") and "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    stats_kwargs = {} if args.mantissa_bits is None else {"mantissa_bits": args.mantissa_bits}

    stats = None
    if resuming:
        held = stats_metadata(out)["sites"]
        if held != site_names:
            raise CliError(f"cannot resume {out}: it holds sites {held[:3]}…, --sites {args.sites} selects {site_names[:3]}…")
        loaded = load_stats(out, device=dist.device)
        # Rank 0 continues the merged statistics; the other ranks add to empty ones that share
        # their calibration, so the merge at each checkpoint counts every prompt once.
        stats = loaded if dist.main else {site: empty_like(s) for site, s in loaded.items()}

    bar = _progress_bar(args, dist, source, record)
    rows = tokens = slots = 0  # this rank, this run; slots: padded batch positions
    loaded_at = time.perf_counter()

    def my_batches(rounds: int | None) -> Iterator[dict[str, torch.Tensor]]:
        nonlocal rows, tokens, slots
        for texts in shard.mine(rounds):
            batch = tokenize(tokenizer, texts, max_length, token_type_ids=token_types)
            n_tokens = int(batch["attention_mask"].sum())
            yield batch
            tokens += n_tokens
            slots += batch["attention_mask"].numel()
            rows += n_tokens if args.pooling == "none" else len(texts)
            if bar is not None:
                bar.update(shard.prompts - bar.n)
                rate = tokens / max(time.perf_counter() - loaded_at, 1e-9)
                bar.set_postfix_str(f"{rate:,.0f} {'tok/s' if dist.world == 1 else 'rank-0 tok/s'}", refresh=False)

    def checkpoint(complete: bool) -> tuple[int, int]:
        """Merges the ranks' statistics (on copies) and rank 0 writes them; returns this run's
        (rows, tokens) over all ranks. A collective: every rank calls it at the same point."""
        run_rows, run_tokens = dist.sum([rows, tokens])
        merged = stats
        if dist.world > 1:
            merged = {site: af.ChannelStats.from_state_dict(s.state_dict(), device=s.device) for site, s in stats.items()}
            for s in merged.values():
                s.all_reduce(dist.group)
        if dist.main:
            saved = Record(record.settings, shard.prompts, shard.global_batches, record.rows + run_rows,
                           record.tokens + run_tokens, shard.digest.hexdigest(), complete, shard.window_batches)
            meta = {"pooling": args.pooling, "model": args.model, "data": source.describe(), "max_length": max_length,
                    "collect": saved.as_dict()}
            af.save_stats(merged, out, metadata=meta, model=model)
        return run_rows, run_tokens

    every = args.checkpoint_every or None
    while True:
        batches = my_batches(every)
        first_batch = next(batches, None)
        if first_batch is not None:
            stats = af.collect(
                model, batches=itertools.chain([first_batch], batches), sites=site_names, pooling=args.pooling, stats=stats,
                group=dist.group, progress=False, stop_early=True, **stats_kwargs,
            )
        if shard.exhausted or every is None:
            break
        checkpoint(complete=False)
    if bar is not None:
        bar.close()
    if shard.global_batches == record.batches:  # a resumed run with nothing left
        if dist.main:
            print(f"{out}: nothing left to collect ({record.prompts:,} prompts of {source.describe()} already in it)")
        return 0
    run_rows, run_tokens = checkpoint(complete=True)
    (run_slots,) = dist.sum([slots])
    if dist.main:
        seconds = max(time.perf_counter() - loaded_at, 1e-9)
        new_prompts = shard.prompts - record.prompts
        resumed = f" after the {record.prompts:,} of the checkpoint" if resuming else ""
        procs = f"{dist.world} process{'es' if dist.world > 1 else ''}"
        print(
            f"collected {new_prompts:,} prompts{resumed} ({run_rows:,} rows, {run_tokens:,} tokens) at {len(site_names)} sites "
            f"in {seconds:.1f} s ({new_prompts / seconds:,.1f} prompts/s, {run_tokens / seconds:,.0f} tokens/s) on {procs}; "
            f"padding {100 * (1 - run_tokens / max(run_slots, 1)):.1f} % of the batches' token slots "
            f"({'sorted by length in windows of ' + str(args.sort_window) + ' batches' if args.sort_window > 1 else 'source order'}); "
            f"model load {loaded_at - start:.1f} s"
        )
        print(f"wrote {out} ({common.human_bytes(out.stat().st_size)}): {len(site_names)} sites, {record.rows + run_rows:,} rows, "
              f"{record.tokens + run_tokens:,} tokens from {shard.prompts:,} prompts")
    return 0


def _check_same_model(out: Path, model: str, config: Any) -> None:
    """Refuses to resume a file collected on a model with another config (read before the weights)."""
    from act_fast.cli.models import fingerprint_of_config
    from act_fast.stats.io import stats_metadata

    meta = stats_metadata(out)
    model_type, fingerprint = fingerprint_of_config(config)
    if meta["model_fingerprint"] and fingerprint and meta["model_fingerprint"] != fingerprint:
        raise CliError(f"cannot resume {out}: it was collected on another model ({meta['model_type']}, config fingerprint "
                       f"{meta['model_fingerprint'][:12]}…; {model} is {model_type} {fingerprint[:12]}…)")


def empty_like(stats: Any) -> Any:
    """A ChannelStats with ``stats``' parameters and calibration and no data."""
    from act_fast.stats import ChannelStats

    p = stats.params
    fresh = ChannelStats(stats.num_channels, stats.device, mantissa_bits=p.mantissa_bits, exp_min=p.exp_min, exp_max=p.exp_max,
                         exact=stats.exact)
    return fresh.set_calibration(stats)


def _progress_bar(args: argparse.Namespace, dist: Any, source: Any, record: Record) -> Any:
    if not dist.main or not common.progress_enabled(args.progress):
        return None
    from tqdm.auto import tqdm

    total = source.count()
    if total is not None and args.limit is not None:
        total = min(total, args.limit)
    return tqdm(total=total, initial=record.prompts, desc="collect", unit=" prompts", dynamic_ncols=True)
