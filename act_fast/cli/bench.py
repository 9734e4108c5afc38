"""``act-fast bench``: steered vs unsteered prefill and decode tokens/s on your model and device, per
steering mode, timed in interleaved rounds, with medians, spreads and the ratio where it exceeds
the noise (timing as in ``benchmarks/``: :mod:`act_fast.bench`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from act_fast.cli import common
from act_fast.cli.common import CliError

MODES = ("auto", "fold", "fused", "op")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="steered vs unsteered prefill and decode tokens/s per steering mode",
        description="Times prefill (a [B, P] prompt, no cache) and greedy decode (N steps on the prompt's KV cache) of "
        "the model, unsteered and steered with the maps in each mode, in interleaved rounds (each mode warmed up on every "
        "entry), and prints the median tokens/s with its spread (interquartile range / median) and the ratio to unsteered. "
        "A ratio whose difference from 1 is smaller than the spread is printed as 'within noise', not as a finding.",
    )
    common.add_model_options(p)
    p.add_argument("--maps", required=True, metavar="MAPS.safetensors", help="map file to steer with")
    p.add_argument("--modes", type=common.comma_list, default=MODES, metavar="MODE,...",
                   help=f"steering modes to time, of {', '.join(MODES)} (default: all)")
    p.add_argument("--strength", type=float, default=1.0, help="λ (default: %(default)s)")
    p.add_argument("--batch-size", type=common.positive_int, default=1, help="rows B (default: %(default)s)")
    p.add_argument("--prompt-length", type=common.positive_int, default=128, help="prompt tokens P (default: %(default)s)")
    p.add_argument("--new-tokens", type=common.positive_int, default=32, help="decode steps N per timed run (default: %(default)s)")
    p.add_argument("--rounds", type=common.positive_int, default=5,
                   help="interleaved rounds; each figure is the median over them, the spread their interquartile range (default: %(default)s)")
    p.add_argument("--repeats", type=common.positive_int, default=1, help="timed runs per configuration per round (their median) (default: %(default)s)")
    p.add_argument("--warmup", type=common.nonnegative_int, default=1,
                   help="untimed runs of each configuration every time it is set up, before its timed runs (default: %(default)s)")
    p.add_argument("--json", metavar="OUT.json", help="also write the figures as JSON")
    p.add_argument("--allow-model-mismatch", action="store_true", help="apply maps fitted on a model with another config")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import math

    import torch

    from act_fast.bench.throughput import steering_throughput
    from act_fast.cli.models import check_maps_fit, load_config, load_model
    from act_fast.maps import load_maps

    device = common.check_device(args.device)
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        raise CliError(f"--modes: unknown {unknown}; choose from {', '.join(MODES)}")
    if not math.isfinite(args.strength):
        raise CliError(f"--strength must be finite, got {args.strength}")
    json_out = common.check_output(args.json, suffix=".json") if args.json else None
    maps = load_maps(args.maps)
    config = load_config(args.model)
    check_maps_fit(maps, config, args.maps, allow_other=args.allow_model_mismatch)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and args.prompt_length + args.new_tokens > positions:
        raise CliError(f"--prompt-length {args.prompt_length} + --new-tokens {args.new_tokens} exceed the model's {positions} positions")
    tokenizer, model = load_model(args.model, device, args.dtype, causal=True, config=config)

    generator = torch.Generator().manual_seed(0)
    vocab = int(getattr(model.config, "vocab_size", None) or len(tokenizer))
    prompt = torch.randint(0, vocab, (args.batch_size, args.prompt_length), generator=generator).to(device)
    rows = steering_throughput(model, maps.to(device), list(args.modes), prompt, args.new_tokens, device,
                               rounds=args.rounds, warmup=args.warmup, repeats=args.repeats, strength=args.strength)
    dtype = next(model.parameters()).dtype
    print(f"{args.model} on {device} ({str(dtype).removeprefix('torch.')}), {len(maps)} steered sites, λ = {args.strength}: "
          f"prefill B={args.batch_size} × P={args.prompt_length}, decode {args.new_tokens} steps; median of {args.rounds} interleaved rounds "
          f"({args.warmup} warm-up, {args.repeats} timed run(s) per configuration per round)\n")
    print(format_rows(rows))
    print(noise_line(rows))
    if json_out is not None:
        payload = {"model": args.model, "maps": args.maps, "device": device, "dtype": str(dtype), "batch_size": args.batch_size,
                   "prompt_length": args.prompt_length, "new_tokens": args.new_tokens, "strength": args.strength,
                   "rounds": args.rounds, "warmup": args.warmup, "repeats": args.repeats,
                   "rows": [r.as_dict() for r in rows]}
        json_out.parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {json_out}")
    return 0


def noise_line(rows: list) -> str:
    """How to read the table: what the spread is and when a ratio is shown."""
    unresolved = [r.config for r in rows if r.error is None and r.config != "unsteered"
                  and not (r.prefill_vs_unsteered.resolved and r.decode_vs_unsteered.resolved)]
    line = ("\n± is the spread over the rounds (interquartile range / median); a ratio to unsteered is printed only "
            "where it differs from 1 by more than the larger spread of the two rows")
    if unresolved:
        line += f"\nwithin the noise of this machine (no finding): {', '.join(unresolved)} (in at least one column)"
    return line


def format_rows(rows: list) -> str:
    """Config, prefill and decode tokens/s with their spread and their ratio to unsteered (or
    'within noise'); sites per mode."""
    cells = [("config", "prefill tok/s", "±", "vs unsteered", "decode tok/s", "±", "vs unsteered", "sites per mode")]
    for r in rows:
        if r.error is not None:
            cells.append((r.config, "—", "", "—", "—", "", "—", f"not possible: {r.error}"))
            continue
        modes = ", ".join(f"{m} {n}" for m, n in r.modes.items())
        pre = "—" if r.prefill_vs_unsteered is None else r.prefill_vs_unsteered.describe()
        dec = "—" if r.decode_vs_unsteered is None else r.decode_vs_unsteered.describe()
        cells.append((r.config, f"{r.prefill_tokens_per_s:,.0f}", _pct(r.prefill.spread), pre,
                      f"{r.decode_tokens_per_s:,.0f}", _pct(r.decode.spread), dec, modes))
    return common.aligned(cells, [False, True, True, True, True, True, True, False])


def _pct(spread: float) -> str:
    return "n/a" if spread == float("inf") else f"{spread:.1%}"
