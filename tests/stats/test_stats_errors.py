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


@pytest.mark.parametrize("exact", [False, True])
def test_tampered_state_dicts_are_refused_and_change_nothing(exact):
    """Every field is validated before anything is assigned (issue: NaN means, negative M2 or counts,
    min > max, fractional counts and samples that disagree with the counts were accepted, and a
    failed exact-mode load left moments overwritten and samples old)."""
    g = torch.Generator().manual_seed(0)
    good = af.ChannelStats(4, exact=exact).update(torch.randn(30, 4, generator=g)).state_dict()
    target = af.ChannelStats(4, exact=exact).update(torch.randn(7, 4, generator=g) + 5.0)
    before = target.state_dict()

    def tampered(key, value):
        sd = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in good.items()}
        sd[key] = value(sd[key]) if callable(value) else value
        return sd

    cases = [
        (tampered("mean", lambda t: t.index_fill(0, torch.tensor([1]), float("nan"))), "mean.*NaN or Inf"),
        (tampered("m2", lambda t: -t), "negative values"),
        (tampered("count", lambda t: t.double() + 0.5), "integer counts"),
        (tampered("nan", lambda t: t - 1), "negative counts"),
        (tampered("vmin", lambda t: good["vmax"] + 1.0), "vmin <= vmax"),
        (tampered("count", lambda t: t - 1), "does not add up|disagree"),
        (tampered("rows_seen", torch.tensor(3)), "exceeds rows_seen"),
    ]
    if exact:
        cases.append((tampered("samples", lambda t: t[:-2]), "disagree with 'count'"))
    for sd, message in cases:
        with pytest.raises((ValueError, TypeError), match=message):
            target.load_state_dict(sd)
        after = target.state_dict()
        assert all(torch.equal(after[k], before[k]) for k in before if isinstance(before[k], torch.Tensor)), message
    target.load_state_dict(good)
    assert torch.equal(target.histogram, af.ChannelStats.from_state_dict(good).histogram)


def test_quantile_levels_of_the_wrong_type_say_so(stats):
    stats.update(torch.randn(10, 4))
    with pytest.raises(TypeError, match="quantile levels must be a number in \\[0, 1\\], a list of numbers or a real tensor, got str"):
        stats.quantile("0.5")
    with pytest.raises(TypeError, match="got list"):
        stats.quantile([0.5, "0.9"])
    np = pytest.importorskip("numpy")
    assert torch.equal(stats.quantile(np.float32(0.5)), stats.quantile(0.5))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match=r"ChannelStats: device 'cuda': CUDA is not available"):
        af.ChannelStats(4, device="cuda")


@pytest.mark.parametrize("state", [{}, {"count": torch.zeros(3)}, {"params": torch.tensor([5, -16]), "count": torch.zeros(3), "exact": torch.tensor(False)}])
def test_from_state_dict_of_no_state_names_what_is_missing(state):
    with pytest.raises(ValueError, match="ChannelStats.from_state_dict"):
        af.ChannelStats.from_state_dict(state)


def test_from_state_dict_of_a_non_mapping_is_a_type_error():
    with pytest.raises(TypeError, match="mapping"):
        af.ChannelStats.from_state_dict([1, 2])  # type: ignore[arg-type]
