"""What the subcommands share: the one-line error, argument types and checks that run before any
model is loaded, progress on/off, and number formatting."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch


class CliError(Exception):
    """A user error: printed as one line (``act-fast CMD: error: ...``), exit status 2."""


def one_line(err: BaseException | str) -> str:
    """An error message on one line (multi-line messages joined with ``; ``)."""
    text = str(err).strip() or type(err).__name__
    return "; ".join(part.strip() for part in text.splitlines() if part.strip()).replace(":;", ":")


# ----------------------------------------------------------------------------- argparse types
def _integer(text: str, minimum: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _integer(text, 1, "a positive integer")


def nonnegative_int(text: str) -> int:
    return _integer(text, 0, "an integer ≥ 0")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def _items(text: str, expected: str) -> list[str]:
    """Comma-separated items, none of them empty (``0.5,,1`` is a typo, not two values)."""
    items = [v.strip() for v in text.split(",")]
    if not text.strip() or any(not v for v in items):
        raise argparse.ArgumentTypeError(f"expected {expected} with no empty item, got {text!r}")
    return items


def strengths(text: str) -> tuple[float, ...]:
    """``"0,0.5,1"`` → ``(0.0, 0.5, 1.0)``; finite numbers only, no empty item."""
    items = _items(text, "comma-separated numbers")
    try:
        values = tuple(float(v) for v in items)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"strengths must be finite numbers, got {text!r}")
    return values


def strength_range(text: str) -> tuple[float, float]:
    """``"LO,HI"`` → ``(lo, hi)``: two finite numbers, ``lo ≤ hi``."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers LO,HI, got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise argparse.ArgumentTypeError(f"expected two finite numbers LO,HI, got {text!r}")
    if lo > hi:
        raise argparse.ArgumentTypeError(f"expected LO <= HI, got {text!r}")
    return lo, hi


def fraction(text: str) -> float:
    """A number in the open interval (0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {text}")
    return value


def comma_list(text: str) -> tuple[str, ...]:
    return tuple(_items(text, "a comma-separated list"))


# ----------------------------------------------------------------------------- shared options
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def add_model_options(p: argparse.ArgumentParser, *, model_required: bool = True) -> None:
    p.add_argument("--model", required=model_required, metavar="NAME|FOLDER",
                   help="a Hugging Face model name (hub or local cache) or a local model folder")
    p.add_argument("--device", default="auto", help="torch device: auto (cuda when available, else cpu), cpu, cuda, cuda:N (default: %(default)s)")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                   help="weights' dtype: auto keeps the checkpoint's (default: %(default)s)")


def add_progress_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars on stderr (default: only when stderr is a terminal)")


def progress_enabled(flag: bool | None) -> bool:
    """``--progress`` / ``--no-progress``, else on only when stderr is a terminal (no escape codes
    in log files)."""
    return sys.stderr.isatty() if flag is None else bool(flag)


def check_device(name: str) -> str:
    """A validated device string; ``auto`` becomes ``cuda`` when CUDA is available, else ``cpu``."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    from act_fast.ops.checks import device_problem

    problem = device_problem(name)
    if problem is not None and problem.startswith("not a torch device"):
        raise CliError(f"--device {name!r} is {problem}")
    if problem is not None:
        raise CliError(f"--device {name}: {problem}; use --device cpu")
    return name


def build_cpu_kernels_first(device: str) -> None:
    """On a CPU device, builds the compiled CPU kernels now if this machine has no build yet (their
    message says so; about a minute, once), instead of silently inside the first forward pass. A
    failed build is left to the ops, which warn once and run the pure-torch path."""
    if torch.device(device).type != "cpu":
        return
    from act_fast.ops import cpu_kernels

    if not cpu_kernels.enabled() or cpu_kernels.library_path().is_file():
        return
    from act_fast.build import build_cpu

    try:
        report = build_cpu()
    except cpu_kernels.CpuKernelsUnavailable:
        return
    print(f"act_fast: CPU kernels built in {report.seconds:.0f} s (act-fast build-cpu does this ahead of time)", file=sys.stderr, flush=True)


def check_support(value: str | None) -> str | tuple[float, float] | None:
    """A support preset (``q_all``, ``q_0_100``, … ``q_40_60``) or ``LO,HI`` quantile levels."""
    if value is None:
        return None
    from act_fast.estimators.support import support_levels

    support: str | tuple[float, float] = value
    if "," in value:
        try:
            lo, hi = (float(v) for v in value.split(","))
        except ValueError:
            raise CliError(f"--support {value!r}: expected a preset name or two quantile levels LO,HI") from None
        support = (lo, hi)
    try:
        support_levels(support)
    except ValueError as err:
        raise CliError(f"--support: {err}") from None
    return support


def known_site_presets() -> list[str]:
    """Every site preset name some model family (or the generic heuristics) knows."""
    from act_fast.integrations.registry import SITE_FAMILIES
    from act_fast.integrations.selection import GENERIC_PRESETS

    names = {p for family in SITE_FAMILIES.values() for p in family.presets} | set(GENERIC_PRESETS)
    return sorted(names)


def check_sites(value: str) -> str | list[str]:
    """``--sites``: a preset name (checked against every family's presets), or comma-separated
    module names (anything with a ``.`` or ``,``)."""
    value = value.strip()
    if "," in value or "." in value:
        names = [v.strip() for v in value.split(",") if v.strip()]
        if not names:
            raise CliError(f"--sites {value!r}: no module names")
        return names
    presets = known_site_presets()
    if value not in presets:
        raise CliError(f"--sites {value!r}: unknown site preset; presets: {', '.join(presets)} (or comma-separated module names)")
    return value


def check_preset_fits(sites: str | list[str], config: object) -> None:
    """A preset the model's family does not have (read from its config, before the weights load)."""
    if not isinstance(sites, str):
        return
    from act_fast.integrations.registry import SITE_FAMILIES
    from act_fast.integrations.selection import GENERIC_PRESETS

    model_type = getattr(config, "model_type", None)
    family = SITE_FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if sites in GENERIC_PRESETS or (family is not None and sites in family.presets):
        return
    if family is None:
        raise CliError(f"--sites {sites!r}: no site presets for model type {model_type!r}; use a generic preset "
                       f"({', '.join(GENERIC_PRESETS)}) or comma-separated module names")
    raise CliError(f"--sites {sites!r}: not a preset of {model_type!r} models; presets: {', '.join([*family.presets, *GENERIC_PRESETS])}")


def check_output(path: str, *, suffix: str = ".safetensors") -> Path:
    """An output file path: not a folder, its parent a folder (created later)."""
    out = Path(path)
    if out.is_dir():
        raise CliError(f"{out} is a directory; give a file name such as {out / ('out' + suffix)}")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise CliError(f"cannot write {out}: {parent} is not a writable folder")
    return out


def require_matplotlib(what: str, alternative: str = "") -> None:
    """Fails with a one-line install hint when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CliError(f"{what} needs matplotlib: pip install matplotlib (or 'act_fast[demo]'){', ' + alternative if alternative else ''}") from None


# ----------------------------------------------------------------------------- formatting
def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def aligned(rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """Rows of cells as aligned columns (``right[i]``: right-align column i)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.rjust(w) if right[i] else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows
    )
