"""``act-fast export``: a map file in a format other engines apply (``gguf``: a llama.cpp control vector)."""

from __future__ import annotations

import argparse

from act_fast.cli import common

FORMATS = ("gguf",)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write maps in another engine's format (gguf: a llama.cpp control vector)",
        description="--format gguf writes a llama.cpp control vector (llama-cli --control-vector x.gguf): one vector added "
        "to the output of each decoder layer. Only additive maps (w = 1, no support) at decoder-layer outputs other than "
        "layer 0 can be exported (mean_diff maps, imported control vectors); anything else is refused with its sites and "
        "the reason.",
    )
    p.add_argument("maps", metavar="MAPS", help="a map file (.safetensors, .gguf) or a Hub repository id")
    p.add_argument("--format", required=True, choices=FORMATS, help="the output format")
    p.add_argument("--out", required=True, metavar="OUT.gguf", help="the file to write")
    p.add_argument("--model-hint", metavar="ARCH", help="llama.cpp architecture name to record (default: the maps' model type)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from act_fast.maps import load_maps

    out = common.check_output(args.out, suffix=".gguf")
    maps = load_maps(args.maps)
    written = maps.to_gguf(out, model_hint=args.model_hint)
    layers = ", ".join(site for site in maps)
    print(f"wrote {written}: llama.cpp control vector for {args.model_hint or maps.model_type}, {len(maps)} layer(s) ({layers})")
    return 0
