"""Tampered statistics states are refused, all or nothing (issue 21 item 6); every real state,
however it was produced, loads."""

import math

import pytest
import torch

import act_fast as af
from act_fast.ops import set_backend


def real_states() -> dict[str, af.ChannelStats]:
    """States from every way of producing one: dtypes, masks, NaN / Inf, empty channels, merges of
    equal and of different calibrations, exact mode, the Triton backend."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 4, generator=g)
    x[3, 0], x[4, 1], x[5, 2] = math.nan, math.inf, -math.inf
    x[:, 3] = math.nan  # a channel without finite values
    mask = torch.rand(50, generator=g) > 0.3
    out = {
        "float32_masked": af.ChannelStats(4).update(x, mask),
        "bfloat16": af.ChannelStats(4).update(x.bfloat16()),
        "float64": af.ChannelStats(4).update(x.double() * 1e4 + 3.0),
        "constant": af.ChannelStats(4).update(torch.full((7, 4), 0.1)),
        "exact": af.ChannelStats(4, exact=True).update(x, mask),
        "empty": af.ChannelStats(4),
        "all_masked": af.ChannelStats(4).update(x, torch.zeros(50, dtype=torch.bool)),
    }
    a = af.ChannelStats(4).update(x[:20])
    b = af.ChannelStats(4).update(x[20:] * 30.0 + 5.0)
    out["merged_rebucketed"] = af.ChannelStats(4).merge(a).merge(b)
    out["merged_equal"] = af.ChannelStats(4).update(x[:20]).merge(af.ChannelStats(4).set_calibration(a).update(x[20:]))
    previous = set_backend("triton")
    try:
        out["triton"] = af.ChannelStats(4).update(x[:16] * 1e-3 + 1e4, mask[:16])
    finally:
        set_backend(previous)
    return out


@pytest.mark.filterwarnings("ignore:ChannelStats.*calibration fell back")
def test_every_real_state_loads():
    for name, stats in real_states().items():
        sd = stats.state_dict()
        loaded = af.ChannelStats.from_state_dict(sd)
        again = loaded.state_dict()
        for key, value in sd.items():
            torch.testing.assert_close(again[key], value, rtol=0, atol=0, equal_nan=True, msg=f"{name}: {key}")


def _tampered(sd: dict, **changes) -> dict:
    out = {k: v.clone() for k, v in sd.items()}
    for key, fn in changes.items():
        out[key] = fn(out[key])
    return out


def test_tampered_states_are_refused_and_change_nothing():
    """The issue's three cases (a NaN count of 10^9 with 50 rows seen, a mean of 1000 outside
    [min, max], vmin = vmax = 0 with spread rows) and every other invariant."""
    g = torch.Generator().manual_seed(1)
    good = af.ChannelStats(3, exact=True).update(torch.randn(50, 3, generator=g)).state_dict()
    target = af.ChannelStats(3, exact=True).update(torch.randn(9, 3, generator=g) + 4.0)
    before = target.state_dict()
    one = torch.tensor([1])
    cases = [
        (_tampered(good, nan=lambda t: t.index_fill(0, one, 10**9)), r"'nan'\] exceeds rows_seen \(50\) on channels \[1\]"),
        (_tampered(good, mean=lambda t: t.index_fill(0, one, 1000.0)), r"'mean'\] lies outside \[vmin, vmax\] on channels \[1\]"),
        (_tampered(good, vmin=lambda t: t.zero_(), vmax=lambda t: t.zero_()), "lowest and highest non-empty buckets|lies outside"),
        (_tampered(good, vmax=lambda t: t + 5.0), r"hist'\] does not fit"),
        (_tampered(good, m2=lambda t: t * 1e3), r"'m2'\] exceeds count"),
        (_tampered(good, pos_inf=lambda t: t + 1), r"exceed rows_seen|disagree with 'pos_inf'"),
        (_tampered(good, calibrated_channels=lambda t: t.index_fill(0, one, False)), "must be calibrated"),
        (_tampered(good, dtypes_seen=lambda t: t * 0), "dtypes_seen"),
        (_tampered(good, merge_rel=lambda t: t - 1.0), "merge_rel"),
        (_tampered(good, samples=lambda t: t.index_fill(0, torch.tensor([0]), math.nan)), "disagree"),
    ]
    for sd, message in cases:
        with pytest.raises(ValueError, match=message):
            target.load_state_dict(sd)
        after = target.state_dict()
        assert all(torch.equal(after[k], before[k]) for k in before), message


def test_empty_channel_with_moments_is_refused():
    sd = af.ChannelStats(2).update(torch.tensor([[1.0, math.nan], [2.0, math.nan]])).state_dict()
    bad = _tampered(sd, m2=lambda t: t.index_fill(0, torch.tensor([1]), 3.0))
    with pytest.raises(ValueError, match=r"without finite values must have m2 = 0.*channels \[1\]"):
        af.ChannelStats.from_state_dict(bad)
