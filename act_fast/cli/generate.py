"""``act-fast generate``: greedy continuations of your prompts, unsteered and at each strength, side
by side (each line starts with the prompt)."""

from __future__ import annotations

import argparse

from act_fast.cli import common
from act_fast.cli.common import CliError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="greedy continuations, unsteered and steered at each strength, side by side",
        description="Loads a causal LM and a map file, and prints greedy continuations of each prompt: unsteered, then "
        "steered at each --strength. Every line starts with the prompt.",
    )
    common.add_model_options(p)
    p.add_argument("--maps", required=True, metavar="MAPS.safetensors", help="map file (act-fast fit, or SteeringMaps.save)")
    p.add_argument("--strength", type=common.strengths, default=(1.0,), metavar="L1,L2,...",
                   help="comma-separated strengths λ (default: 1)")
    p.add_argument("--strength-range", type=common.strength_range, metavar="LO,HI",
                   help="refuse any --strength outside [LO, HI], as steer(..., strength_range=) does (a negative LO: --strength-range=-1,2); default: none")
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a prompt (repeat for several)")
    p.add_argument("--prompts", metavar="FILE", help="more prompts: a .txt file (one a line) or a .jsonl file")
    p.add_argument("--max-new-tokens", type=common.positive_int, default=40, help="tokens per continuation (default: %(default)s)")
    p.add_argument("--allow-model-mismatch", action="store_true", help="apply maps fitted on a model with another config")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from act_fast.cli.models import check_maps_fit, load_config, load_model
    from act_fast.demo.generate import format_generations, generations
    from act_fast.maps import load_maps
    from act_fast.prompts import read_prompts

    device = common.check_device(args.device)
    if args.strength_range is not None:
        lo, hi = args.strength_range
        outside = [v for v in args.strength if not lo <= v <= hi]
        if outside:
            raise CliError(f"--strength {outside[0]:g} is outside --strength-range [{lo:g}, {hi:g}]")
    prompts = list(args.prompt)
    if args.prompts:
        source = read_prompts(args.prompts)
        source.check()
        prompts += list(source)
    if not prompts:
        raise CliError("give at least one --prompt TEXT (or --prompts FILE)")
    if any(not p.strip() for p in prompts):
        raise CliError("prompts must not be empty")
    maps = load_maps(args.maps)
    config = load_config(args.model)
    check_maps_fit(maps, config, args.maps, allow_other=args.allow_model_mismatch)
    tokenizer, model = load_model(args.model, device, args.dtype, causal=True, config=config)
    texts = generations(tokenizer, model, maps.to(device), list(args.strength), prompts, args.max_new_tokens,
                        strength_range=args.strength_range)
    print(f"{args.model}: greedy continuations, {maps.method or 'hand-made'} maps on {len(maps)} sites from {args.maps}\n")
    print(format_generations(prompts, texts))
    return 0
