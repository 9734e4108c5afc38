"""The ``act-fast`` command. Subcommands (one module each):

- ``collect``: per-site activation statistics over a prompt source, to a statistics file;
  sharded under ``torchrun``, checkpointed, resumable (:mod:`act_fast.cli.collect`).
- ``merge``: one statistics file from several collected apart, whatever their calibrations.
- ``fit``: steering maps from two prompt sources (a model) or two statistics files (no model).
- ``generate``: greedy continuations, unsteered and at each strength, side by side.
- ``inspect``: a per-site table of a map (or statistics) file, and a PNG across layers.
- ``export``: maps in another engine's format (``--format gguf``: a llama.cpp control vector).
- ``bench``: steered vs unsteered prefill and decode tokens/s per steering mode.
- ``demo``: steer all-MiniLM-L6-v2 (or any causal LM) from one topic to another and measure it.
- ``build-cpu``: build the compiled CPU kernels ahead of time (:mod:`act_fast.build`).

User errors print one line, ``act-fast COMMAND: error: CAUSE``, and exit with status 2
(``ACT_FAST_DEBUG=1`` shows the traceback instead); argparse's own errors too (no usage block).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from act_fast.cli.common import CliError, one_line

SUBCOMMANDS = ("collect", "merge", "fit", "generate", "inspect", "export", "bench", "demo", "build_cpu")


class OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one line, like every other user error (not the usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = OneLineParser(prog="act-fast", description="Steer models by transporting their activations (AcT, LinEAS).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for name in SUBCOMMANDS:
        importlib.import_module(f"act_fast.cli.{name}").add_parser(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's input, not a bug: shown as one line without a traceback."""
    import torch

    from act_fast.demo.models import ModelUnavailable

    return (CliError, ModelUnavailable, ValueError, OSError, ImportError, torch.OutOfMemoryError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``act-fast`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"act-fast {args.command}: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as err:
        if os.environ.get("ACT_FAST_DEBUG"):
            raise
        rank = _rank_prefix()
        print(f"act-fast {args.command}: error{rank}: {one_line(err)}", file=sys.stderr)
        return 2


def _rank_prefix() -> str:
    world = os.environ.get("WORLD_SIZE")
    return f" (rank {os.environ.get('RANK', '?')} of {world})" if world not in (None, "1") else ""
