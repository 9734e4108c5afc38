"""Parsing of the per-request keys ``act_fast_maps`` / ``act_fast_strength`` (no vLLM needed)."""

import math

import pytest

from act_fast.vllm.requests import RequestSteeringError, check_range, parse_request, resolve, validate_chain, validate_request

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


# -- composition: ordered chains of map sets (issue 22) --------------------------------------------

CHAIN_SETS = ["detox", "formal", "short"]


@pytest.mark.parametrize(
    "extra",
    [
        {"act_fast_maps": {"formal": 0.5, "detox": 0.8}},  # extra_args offline: a dict keeps its order
        {"act_fast_maps": '{"formal": 0.5, "detox": 0.8}'},  # vllm_xargs: a JSON object as text
        {"act_fast_maps": ["formal", "detox"], "act_fast_strength": [0.5, "0.8"]},  # vllm_xargs lists
    ],
)
def test_chain_forms_resolve_to_ordered_slots(extra):
    assert validate_chain(extra, CHAIN_SETS) == ((2, 0.5), (1, 0.8))


def test_chain_list_without_strengths_is_strength_one_and_one_set_forms_are_chains_of_one():
    assert validate_chain({"act_fast_maps": ["short", "detox"]}, CHAIN_SETS) == ((3, 1.0), (1, 1.0))
    assert validate_chain({"act_fast_maps": "formal", "act_fast_strength": 0.25}, CHAIN_SETS) == ((2, 0.25),)
    assert validate_chain(None, CHAIN_SETS) == ()


def test_chain_pairs_at_zero_are_dropped_and_all_zero_is_unsteered():
    assert validate_chain({"act_fast_maps": {"detox": 0.0, "formal": 0.5}}, CHAIN_SETS) == ((2, 0.5),)
    assert validate_chain({"act_fast_maps": {"detox": 0, "formal": 0.0}}, CHAIN_SETS) == ()
    with pytest.raises(RequestSteeringError, match=r"unknown map set \['nope'\]"):  # names still checked
        validate_chain({"act_fast_maps": {"nope": 0.0}}, CHAIN_SETS)


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"act_fast_maps": {"detox": 1.0, "toxic": 0.5}}, r"unknown map set \['toxic'\] in act_fast_maps; this engine's map sets are \['detox', 'formal', 'short'\]"),
        ({"act_fast_maps": {"detox": float("nan")}}, r"act_fast_strength of map set 'detox' must be finite"),
        ({"act_fast_maps": '{"detox": 1e39}'}, r"finite in float32"),
        ({"act_fast_maps": '{"detox": 1, "detox": 2}'}, r"\['detox'\] named twice"),
        ({"act_fast_maps": ["detox", "detox"]}, r"\['detox'\] named twice"),
        ({"act_fast_maps": {"detox": 0.5}, "act_fast_strength": 0.5}, r"carries each set's λ"),
        ({"act_fast_maps": ["detox", "formal"], "act_fast_strength": [0.5]}, r"list of as many λ"),
        ({"act_fast_maps": '{"detox": 1'}, r"does not parse"),
        ({"act_fast_maps": {"detox": "much"}}, r"act_fast_strength of map set 'detox' must be a number"),
        ({"act_fast_maps": {"detox": 5.0}}, r"outside this engine's range \[-2.0, 2.0\]"),
    ],
)
def test_bad_chains_are_refused_naming_the_problem(extra, message):
    with pytest.raises(RequestSteeringError, match=message):
        validate_chain(extra, CHAIN_SETS, (-2.0, 2.0))


def test_more_sets_than_a_request_may_compose():
    names = [f"s{k}" for k in range(6)]
    assert len(validate_chain({"act_fast_maps": {n: 0.5 for n in names[:4]}}, names)) == 4
    with pytest.raises(RequestSteeringError, match=r"composes 5 map sets, this engine takes at most 4 per request \(its map sets are \['s0'"):
        validate_chain({"act_fast_maps": {n: 0.5 for n in names[:5]}}, names)
