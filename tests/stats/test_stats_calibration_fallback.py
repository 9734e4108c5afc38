"""A first batch without usable rows must not fix a useless calibration (issue 21 item 7, issue 23
item 3): each channel calibrates from the first rows with finite values for it, and a fallback warns."""

import math

import pytest
import torch

import act_fast as af
from act_fast.ops import set_backend
from act_fast.ops.stats_reference import calibrate_ref

from tests.stats.test_stats_accuracy import order_statistic

LEVELS = torch.tensor([0.01, 0.1, 0.5, 0.9, 0.99], dtype=torch.float64)


def channel_at_100() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return (100.0 + 0.1 * torch.randn(2000, 2, generator=g, dtype=torch.float64)).float()


@pytest.mark.parametrize("first", ["masked", "nan"])
@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_unusable_first_batch_calibrates_from_the_next(first, backend):
    """Issue 21 item 7: a fully masked or all-NaN first batch fixed c = 0, k = 0, and a channel at
    100 ± 0.1 then got quantiles 0.2 off. Now the calibration and the histogram are those of a
    stream without that batch, bit for bit, on every backend."""
    x = channel_at_100()
    x = x[:64] if backend == "triton" else x
    bad = torch.full((5, 2), math.nan) if first == "nan" else torch.randn(5, 2)
    mask = torch.zeros(5, dtype=torch.bool) if first == "masked" else None
    previous = set_backend(backend)
    try:
        stats = af.ChannelStats(2)
        with pytest.warns(UserWarning, match="no finite value in the first batch"):
            stats.update(bad, mask)
            stats.update(x[: len(x) // 2])
            stats.update(x[len(x) // 2 :])
        clean = af.ChannelStats(2).update(x[: len(x) // 2]).update(x[len(x) // 2 :])
    finally:
        set_backend(previous)
    assert stats.calibrated and torch.equal(stats.calibration[0], calibrate_ref(x[: len(x) // 2], stats.params)[0])
    assert torch.equal(stats.calibration[1], clean.calibration[1])
    assert torch.equal(stats.histogram, clean.histogram)
    assert stats.calibration_fallbacks["deferred"].all()
    truth = order_statistic(x, LEVELS)
    err = (stats.quantile(LEVELS) - truth).abs()
    assert torch.all(err <= stats.quantile_error_bound(truth)) and torch.all(err < 5e-3)


def test_each_channel_waits_for_its_own_finite_values():
    """Channel 1 is NaN in the first batch and fully masked-out never matters to channel 0."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(20, 3, generator=g), torch.randn(20, 3, generator=g) * 1e-3 + 50.0
    a[:, 1] = math.nan
    stats = af.ChannelStats(3)
    stats.update(a)
    with pytest.warns(UserWarning, match="no finite value"):  # read when the host next looks (no sync)
        assert stats.calibrated_channels.tolist() == [True, False, True] and not stats.calibrated
        stats.quantile(0.5)
    assert stats.calibrated_channels.tolist() == [True, False, True] and not stats.calibrated
    stats.update(b)
    centre, offset = stats.calibration
    ref_a, ref_b = calibrate_ref(a, stats.params), calibrate_ref(b, stats.params)
    assert centre[0] == ref_a[0][0] and centre[2] == ref_a[0][2] and centre[1] == ref_b[0][1]
    assert offset[1] == ref_b[1][1] and stats.calibrated
    assert stats.calibration_fallbacks["deferred"].tolist() == [False, True, False]


def test_flat_first_batch_warns_and_clean_batches_do_not(recwarn):
    af.ChannelStats(3).update(torch.randn(50, 3)).quantile(0.5)
    assert not [w for w in recwarn if "calibration fell back" in str(w.message)]
    stats = af.ChannelStats(3)
    with pytest.warns(UserWarning, match="single value"):
        stats.update(torch.randn(1, 3)).quantile(0.5)
    assert stats.calibration_fallbacks["flat"].all()


def test_explicit_calibrate_leaves_channels_without_values_waiting():
    x = torch.randn(10, 2)
    x[:, 0] = math.nan
    stats = af.ChannelStats(2).calibrate(x)
    assert stats.calibrated_channels.tolist() == [False, True]
    with pytest.warns(UserWarning, match="no finite value"):  # read by the next update, no sync in calibrate
        stats.update(torch.randn(10, 2) + 7.0)
    assert stats.calibrated and stats.calibration[0][0] != 0


def test_pending_calibration_round_trips_through_a_state_dict():
    x = torch.randn(4, 2)
    x[:, 1] = math.nan
    stats = af.ChannelStats(2).update(x)
    loaded = af.ChannelStats.from_state_dict(stats.state_dict())
    assert loaded.calibrated_channels.tolist() == [True, False]
    y = torch.randn(6, 2) + 3.0
    stats.update(y)
    loaded.update(y)
    assert torch.equal(stats.histogram, loaded.histogram) and torch.equal(stats.calibration[0], loaded.calibration[0])


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_calibration_steps_read_no_device_values(backend):
    """The calibration step of an update (a first batch without usable rows, then a batch that
    calibrates) only launches device work: its flags reach the host by a non-blocking copy, read by
    a later update or query (on CPU the patched reads would see that read; on CUDA it is an event
    poll on a pinned copy)."""
    from tests.stats.test_collect import no_host_sync

    x = channel_at_100()[:16]
    stats = af.ChannelStats(2)
    previous = set_backend(backend)
    try:
        with no_host_sync():
            stats.update(x, torch.zeros(16, dtype=torch.bool))
        stats._calibration_pending()  # the host reads the posted flags here, outside the patch
        with no_host_sync():
            stats.update(x)
    finally:
        set_backend(previous)
    assert stats.calibrated and torch.equal(stats.calibration[0], calibrate_ref(x, stats.params)[0])
