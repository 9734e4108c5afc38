"""Parsing of the per-request keys ``act_fast_maps`` / ``act_fast_strength`` (no vLLM needed)."""

import math

import pytest

from act_fast.vllm.requests import RequestSteeringError, check_range, parse_request, resolve, validate_request

SETS = ("detox", "formal")


@pytest.mark.parametrize("extra", [None, {}, {"other": 1}, {"act_fast_maps": None}, {"act_fast_maps": ""},
                                   {"act_fast_maps": "detox", "act_fast_strength": 0}, {"act_fast_strength": 0.0}])
def test_unsteered_requests(extra):
    assert parse_request(extra) is None
    assert validate_request(extra, SETS) == (0, 0.0)


def test_named_set_and_strength_give_slot_and_lambda():
    assert validate_request({"act_fast_maps": "detox", "act_fast_strength": 0.8}, SETS) == (1, 0.8)
    assert validate_request({"act_fast_maps": "formal", "act_fast_strength": -0.5}, SETS) == (2, -0.5)
    assert validate_request({"act_fast_maps": "formal"}, SETS) == (2, 1.0)  # λ defaults to 1
    assert validate_request({"act_fast_maps": "formal", "act_fast_strength": "0.25"}, SETS) == (2, 0.25)  # numeric text
    assert validate_request({"act_fast_maps": "formal", "act_fast_strength": 2}, SETS) == (2, 2.0)


def test_strength_alone_selects_the_only_set():
    assert validate_request({"act_fast_strength": 0.5}, ("detox",)) == (1, 0.5)
    with pytest.raises(RequestSteeringError, match=r"2 map sets \['detox', 'formal'\]; name one"):
        validate_request({"act_fast_strength": 0.5}, SETS)


def test_unknown_set_names_the_known_sets():
    with pytest.raises(RequestSteeringError, match=r"unknown map set 'toxic'.*\['detox', 'formal'\]"):
        validate_request({"act_fast_maps": "toxic"}, SETS)


@pytest.mark.parametrize("strength", ["strong", "", [0.5], {"x": 1}, True, math.nan, math.inf, "inf"])
def test_non_numeric_or_non_finite_strength_is_refused(strength):
    with pytest.raises(RequestSteeringError, match="act_fast_strength must be"):
        parse_request({"act_fast_maps": "detox", "act_fast_strength": strength})


def test_map_set_name_must_be_text_and_keys_are_checked():
    with pytest.raises(RequestSteeringError, match="act_fast_maps must be a map-set name"):
        parse_request({"act_fast_maps": 3})
    with pytest.raises(RequestSteeringError, match=r"unknown act_fast request keys \['act_fast_strenght'\]"):
        parse_request({"act_fast_maps": "detox", "act_fast_strenght": 1.0})


@pytest.mark.parametrize("strength", [1e39, "1e39", -3.5e38, "-1e300"])
def test_strength_that_overflows_float32_is_refused(strength):
    """Finite as a Python float, inf in the float32 steering buffers."""
    with pytest.raises(RequestSteeringError, match="finite in float32"):
        parse_request({"act_fast_maps": "detox", "act_fast_strength": strength})
    assert parse_request({"act_fast_maps": "detox", "act_fast_strength": 3.4e38}).strength == 3.4e38  # float32 max rounds, finite


def test_strength_range_is_enforced_at_each_bound():
    for inside in (-10.0, 10.0, 0.5, "10"):
        assert validate_request({"act_fast_maps": "formal", "act_fast_strength": inside}, SETS, (-10.0, 10.0)) == (2, float(inside))
    for outside in (10.001, -10.5, 1e30):
        with pytest.raises(RequestSteeringError, match=r"outside this engine's range \[-10.0, 10.0\].*strength_range"):
            validate_request({"act_fast_maps": "formal", "act_fast_strength": outside}, SETS, (-10.0, 10.0))
    assert validate_request({"act_fast_maps": "formal", "act_fast_strength": 0}, SETS, (0.5, 1.0)) == (0, 0.0)  # λ = 0: unsteered
    check_range(1e30, None)  # no range: only finiteness


def test_resolve_none_is_identity_slot():
    assert resolve(None, ()) == (0, 0.0)
