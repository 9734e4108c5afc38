"""Bad input to ChannelStats gets a clear error naming what was expected and what came."""

import pytest
import torch

import act_fast as af


@pytest.fixture
def stats():
    return af.ChannelStats(4).update(torch.randn(10, 4))


def test_wrong_channel_count(stats):
    with pytest.raises(ValueError, match="expects 4 channels, got 5"):
        stats.update(torch.randn(3, 5))


@pytest.mark.parametrize("shape", [(4,), (2, 3, 4), ()])
def test_not_2d(stats, shape):
    with pytest.raises(ValueError, match=r"2-D tensor \[rows, 4\], got shape"):
        stats.update(torch.randn(shape))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool])
def test_integer_dtype(stats, dtype):
    with pytest.raises(TypeError, match="floating-point tensor.*got torch"):
        stats.update(torch.ones(3, 4, dtype=dtype))


def test_not_a_tensor(stats):
    with pytest.raises(TypeError, match="got list"):
        stats.update([[1.0, 2.0, 3.0, 4.0]])


def test_bad_row_mask(stats):
    with pytest.raises(TypeError, match="row_mask must be a bool tensor"):
        stats.update(torch.randn(3, 4), torch.ones(3))
    with pytest.raises(ValueError, match=r"row_mask must have shape \[3\].*got \[2\]"):
        stats.update(torch.randn(3, 4), torch.ones(2, dtype=torch.bool))


@pytest.mark.parametrize("q", [-0.1, 1.5, float("nan"), [0.5, 2.0], torch.tensor([0.2, -1.0])])
def test_quantile_level_outside_unit_interval(stats, q):
    with pytest.raises(ValueError, match=r"quantile levels must lie in \[0, 1\]"):
        stats.quantile(q)


def test_quantile_levels_2d(stats):
    with pytest.raises(ValueError, match="1-D tensor"):
        stats.quantile(torch.rand(2, 2))


@pytest.mark.parametrize("query", ["mean", "min", "max", "var", "quantile", "quantile_function", "auroc"])
def test_empty_stats_queried(query):
    empty = af.ChannelStats(3)
    with pytest.raises(ValueError, match="ChannelStats is empty"):
        if query == "var":
            empty.var()
        elif query == "quantile":
            empty.quantile(0.5)
        elif query == "quantile_function":
            empty.quantile_function(8)
        elif query == "auroc":
            empty.auroc(af.ChannelStats(3).update(torch.randn(4, 3)))
        else:
            getattr(empty, query)


def test_all_masked_is_empty():
    stats = af.ChannelStats(2).update(torch.randn(4, 2), torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="ChannelStats is empty"):
        stats.mean


def test_merge_mismatched_parameters(stats):
    with pytest.raises(ValueError, match=r"histogram parameters differ, expected \(5, -16, 16\).*got \(7, -16, 16\)"):
        stats.merge(af.ChannelStats(4, mantissa_bits=7))
    with pytest.raises(ValueError, match="channel counts differ, expected 4, got 3"):
        stats.merge(af.ChannelStats(3))
    with pytest.raises(ValueError, match="exact mode differs"):
        stats.merge(af.ChannelStats(4, exact=True))
    with pytest.raises(TypeError, match="expects a ChannelStats"):
        stats.merge(torch.zeros(4))


def test_load_state_dict_mismatch(stats):
    sd = stats.state_dict()
    with pytest.raises(ValueError, match="histogram parameters"):
        af.ChannelStats(4, mantissa_bits=6).load_state_dict(sd)
    with pytest.raises(ValueError, match=r"must have shape \[5\]"):
        af.ChannelStats(5).load_state_dict(sd)
    del sd["hist"]
    with pytest.raises(ValueError, match=r"missing keys \['hist'\]"):
        af.ChannelStats(4).load_state_dict(sd)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"mantissa_bits": 24}, r"mantissa_bits must be in \[0, 23\]"),
        ({"exp_min": 5, "exp_max": 5}, "exponent window"),
        ({"exp_max": 128}, "exponent window"),
    ],
)
def test_bad_histogram_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        af.ChannelStats(4, **kwargs)


def test_bad_num_channels():
    with pytest.raises(ValueError, match="num_channels must be a positive int, got 0"):
        af.ChannelStats(0)


def test_samples_outside_exact_mode(stats):
    with pytest.raises(ValueError, match="exact mode"):
        stats.samples
