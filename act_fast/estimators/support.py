"""Support presets: which source quantile levels bound the region where a map acts."""

from __future__ import annotations

import re

SUPPORT_PRESETS = ("q_all", "q_0_100", "q_0.5_99.5", "q_1_99", "q_2_98", "q_5_95", "q_10_90", "q_20_80", "q_30_70", "q_40_60")
_PRESET = re.compile(r"^q_(\d+(?:\.\d+)?)_(\d+(?:\.\d+)?)$")

Support = str | tuple[float, float] | None


def support_levels(support: Support) -> tuple[float, float] | None:
    """Quantile levels ``(lo, hi)`` in ``[0, 1]`` of a support, or None for no support.

    ``support``: a preset name (``"q_all"`` = none, ``"q_5_95"`` = 5th to 95th percentile, …),
    an explicit ``(lo_level, hi_level)`` pair in ``[0, 1]``, or None.
    """
    if support is None or support == "q_all":
        return None
    if isinstance(support, str):
        match = _PRESET.match(support)
        if support not in SUPPORT_PRESETS or match is None:
            raise ValueError(f"unknown support {support!r}; use one of {SUPPORT_PRESETS} or a (lo_level, hi_level) pair")
        return float(match.group(1)) / 100.0, float(match.group(2)) / 100.0
    try:
        lo, hi = (float(v) for v in support)
    except (TypeError, ValueError):
        raise ValueError(f"support must be a preset name or a (lo_level, hi_level) pair, got {support!r}") from None
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"support levels must satisfy 0 <= lo < hi <= 1, got ({lo}, {hi})")
    return lo, hi


def support_name(support: Support) -> str:
    """A printable name for metadata: the preset, or ``q_<lo%>_<hi%>`` for a pair."""
    levels = support_levels(support)
    if levels is None:
        return "q_all"
    if isinstance(support, str):
        return support
    return f"q_{levels[0] * 100:g}_{levels[1] * 100:g}"
