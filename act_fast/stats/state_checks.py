"""Invariants every real :class:`~act_fast.ChannelStats` state satisfies, checked on load so that a
tampered or corrupt state is refused instead of answering queries wrongly (docs/design.md §2).

Whatever sequence of updates (any dtype, row masks, NaN / Inf), calibrations, merges (equal or
re-bucketed calibrations) and ``all_reduce`` produced a state, per channel:

- every counter is at most ``rows_seen``, and so is ``count + nan + pos_inf + neg_inf`` (each kept
  row adds one value to exactly one of them, masked rows to none);
- a channel without finite values has ``m2 = 0``, ``min = +inf``, ``max = -inf`` and an empty
  histogram row; a channel with some has ``min ≤ mean ≤ max`` and
  ``0 ≤ m2 ≤ count·(max − min)²/4`` (Popoviciu), both up to float rounding;
- its lowest non-empty bucket is the bucket of ``min`` and its highest that of ``max`` under its
  calibration (both are data values; re-bucketing keeps them there);
- a channel holding data is calibrated; nothing is calibrated before calibration started, and
  nothing is seen then;
- the input-dtype flags are empty exactly when no row was seen;
- exact mode: the samples' NaN / +Inf / -Inf counts equal the counters;
- the merge envelope is finite and non-negative.
"""

from __future__ import annotations

import torch
from torch import Tensor

from act_fast.ops.stats_reference import HistogramParams, bucket_index_ref

# Float rounding allowed in the moment checks: means and M2 are float64 Chan merges of tile
# moments that the Triton kernel sums in float32.
_MEAN_SLACK = 2.0**-30
_M2_SLACK = 2.0**-10


def _channels(mask: Tensor) -> str:
    """The first channels where ``mask`` holds, for messages."""
    idx = mask.nonzero().flatten()[:8].tolist()
    more = ", …" if int(mask.sum()) > len(idx) else ""
    return f"channels {idx}{more}"


def check_state_invariants(v: dict[str, object], params: HistogramParams) -> None:
    """Raises ValueError naming the field and channels if the converted state ``v`` (the fields of
    :meth:`ChannelStats._validated_state`) breaks an invariant of the module docstring."""
    count, nan, pinf, ninf = (v[k] for k in ("count", "nan", "pos_inf", "neg_inf"))
    mean, m2, vmin, vmax = (v[k] for k in ("mean", "m2", "vmin", "vmax"))
    hist: Tensor = v["hist"]  # type: ignore[assignment]
    rows = int(v["rows_seen"])  # type: ignore[arg-type]
    for key in ("count", "nan", "pos_inf", "neg_inf"):
        over = v[key] > rows  # type: ignore[operator]
        if bool(over.any()):
            raise ValueError(f"state_dict[{key!r}] exceeds rows_seen ({rows}) on {_channels(over)}")
    over = (count + nan + pinf + ninf) > rows  # type: ignore[operator]
    if bool(over.any()):
        raise ValueError(f"state_dict counts count + nan + pos_inf + neg_inf exceed rows_seen ({rows}) on {_channels(over)}")
    if not bool(torch.isfinite(mean).all()):  # type: ignore[arg-type]
        raise ValueError(f"state_dict['mean'] holds NaN or Inf on {_channels(~torch.isfinite(mean))}")  # type: ignore[arg-type]
    seen = count > 0  # type: ignore[operator]
    empty_bad = ~seen & ((m2 != 0) | (vmin != float("inf")) | (vmax != float("-inf")))  # type: ignore[operator]
    if bool(empty_bad.any()):
        raise ValueError(f"state_dict: channels without finite values must have m2 = 0, vmin = +inf, vmax = -inf; not so on {_channels(empty_bad)}")
    big = torch.maximum(vmin.abs(), vmax.abs()).where(seen, 0.0)  # type: ignore[union-attr]
    slack = _MEAN_SLACK * big
    outside = seen & ((mean < vmin - slack) | (mean > vmax + slack))  # type: ignore[operator]
    if bool(outside.any()):
        raise ValueError(f"state_dict['mean'] lies outside [vmin, vmax] on {_channels(outside)}")
    spread = (vmax - vmin).where(seen, 0.0)  # type: ignore[operator,union-attr]
    n = count.to(torch.float64)  # type: ignore[union-attr]
    limit = n * spread.square() / 4 * (1 + _M2_SLACK) + n * (_MEAN_SLACK * big).square()
    too_big = seen & (m2 > limit)  # type: ignore[operator]
    if bool(too_big.any()):
        raise ValueError(f"state_dict['m2'] exceeds count·(vmax − vmin)²/4 (no data has that much spread) on {_channels(too_big)}")
    done: Tensor = v["calibrated_channels"]  # type: ignore[assignment]
    if bool((seen & ~done).any()):
        raise ValueError(f"state_dict: channels with data must be calibrated; 'calibrated_channels' is False on {_channels(seen & ~done)}")
    if not v["calibrated"] and (rows > 0 or bool(done.any())):
        raise ValueError(f"state_dict is not calibrated but holds data ({rows} rows seen) or calibrated channels")
    flags = int(v["dtypes_seen"])  # type: ignore[arg-type]
    if not 0 <= flags < 16 or (flags == 0) != (rows == 0):
        raise ValueError(f"state_dict['dtypes_seen'] = {flags} does not fit rows_seen = {rows} (flags in [1, 15] exactly when rows were seen)")
    if bool(seen.any()):
        _check_extreme_buckets(hist, seen, vmin, vmax, v["centre"], v["exp_offset"], params)  # type: ignore[arg-type]
    samples = v.get("samples")
    if isinstance(samples, Tensor):
        for key, hits in (("nan", torch.isnan(samples)), ("pos_inf", samples == float("inf")), ("neg_inf", samples == float("-inf"))):
            if not torch.equal(hits.sum(0), v[key]):  # type: ignore[arg-type]
                raise ValueError(f"exact-mode state_dict: 'samples' disagree with {key!r} counts")
    for key in ("merge_rel", "merge_abs"):
        t: Tensor = v[key]  # type: ignore[assignment]
        if not bool((torch.isfinite(t) & (t >= 0)).all()):
            raise ValueError(f"state_dict[{key!r}] must be finite and non-negative")


def _check_extreme_buckets(
    hist: Tensor, seen: Tensor, vmin: Tensor, vmax: Tensor, centre: Tensor, exp_offset: Tensor, params: HistogramParams
) -> None:
    nonempty = hist > 0
    num_buckets = hist.shape[1]
    low = torch.argmax(nonempty.to(torch.int8), dim=1)
    high = num_buckets - 1 - torch.argmax(nonempty.flip(1).to(torch.int8), dim=1)
    first = bucket_index_ref(vmin.where(seen, 0.0), params, centre, exp_offset)
    last = bucket_index_ref(vmax.where(seen, 0.0), params, centre, exp_offset)
    bad = seen & ((low != first) | (high != last))
    if bool(bad.any()):
        raise ValueError(
            f"state_dict['hist'] does not fit ['vmin'] / ['vmax'] on {_channels(bad)}: the lowest and highest "
            "non-empty buckets must be the buckets of the exact min and max"
        )
