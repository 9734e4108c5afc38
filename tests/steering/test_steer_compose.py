"""Composition in steer(): per-row ordered chains of map sets (``select`` with dicts), the
whole-model chain of a list of map sets (folded when support-free), set_strength, explain, bad
input, and torch.compile without recompiles when chains change."""

import pytest
import torch
from random_maps import random_maps
from tiny_models import tiny_llama
from tolerances import assert_close

import act_fast as af

IDS = torch.tensor([[5, 9, 17, 3, 44, 2, 71], [8, 1, 1, 63, 20, 90, 11], [4, 4, 8, 15, 16, 23, 42]])


@pytest.fixture
def llama():
    return tiny_llama()


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def chained_logits(model, chain, ids):
    """The chain applied the plain way: at each site a forward hook applying each set's map (where
    the set has the site) one after another with AffineMap.apply, in the chain's order."""
    modules = dict(model.named_modules())
    sites = list(dict.fromkeys(s for maps, _ in chain for s in maps))

    def hook(module, args, out, site):
        for maps, lam in chain:
            if site in maps:
                out = maps[site].apply(out, lam)
        return out

    handles = [modules[s].register_forward_hook(lambda mod, a, out, s=s: hook(mod, a, out, s)) for s in sites]
    try:
        return logits(model, ids)
    finally:
        for h in handles:
            h.remove()


def two_sets(llama, support=True, zero_bias=False):
    norms = af.sites(llama, "layernorm")
    # detox everywhere (with a support), formal on part of the norms and the o_proj outputs
    detox = random_maps(llama, norms, seed=1, support=support, zero_bias=zero_bias)
    formal = random_maps(llama, norms[1:3] + ([] if zero_bias else af.sites(llama, "o_proj")), seed=2, zero_bias=zero_bias)
    return detox, formal


@pytest.mark.parametrize("mode", ["auto", "op"])
def test_per_row_chains_match_the_maps_applied_one_after_another(llama, mode):
    detox, formal = two_sets(llama)
    with af.steer(llama, {"detox": detox, "formal": formal}, mode=mode) as h:
        h.select([{"detox": 0.8, "formal": 0.5}, None, {"formal": 1.0}])
        together = logits(llama)
        h.select([{"formal": 0.5, "detox": 0.8}, {}, "formal"])  # the other order; a name is λ 1
        reversed_order = logits(llama)
    assert_close(together[0:1], chained_logits(llama, [(detox, 0.8), (formal, 0.5)], IDS[0:1]))
    assert torch.equal(together[1], logits(llama)[1])  # unsteered in the same batch
    assert_close(together[2:3], chained_logits(llama, [(formal, 1.0)], IDS[2:3]))
    assert_close(reversed_order[0:1], chained_logits(llama, [(formal, 0.5), (detox, 0.8)], IDS[0:1]))
    assert not torch.allclose(reversed_order[0], together[0])  # the order matters
    torch.testing.assert_close(reversed_order[2], together[2], rtol=0, atol=0)


def test_one_chain_for_every_row_and_strength_scaling(llama):
    detox, formal = two_sets(llama)
    with af.steer(llama, {"detox": detox, "formal": formal}) as h:
        h.select({"detox": 0.8, "formal": 0.5})
        every_row = logits(llama)
        h.set_strength(0.5)  # scales each λ of the chain
        halved = logits(llama)
        h.set_strength(0.0)
        zero = logits(llama)
    assert_close(every_row, chained_logits(llama, [(detox, 0.8), (formal, 0.5)], IDS))
    assert_close(halved, chained_logits(llama, [(detox, 0.4), (formal, 0.25)], IDS))
    assert torch.equal(zero, logits(llama))


def test_zero_strength_chains_are_the_model_bit_for_bit(llama):
    detox, formal = two_sets(llama)
    base = logits(llama)
    with af.steer(llama, {"detox": detox, "formal": formal}, mode="op") as h:
        h.select([{"detox": 0.0, "formal": 0.0}, {"formal": 0.0}, None])
        assert torch.equal(logits(llama), base)


def test_whole_model_chain_of_a_list_folds_support_free_maps(llama):
    detox, formal = two_sets(llama, support=False, zero_bias=True)
    weights = {k: v.clone() for k, v in llama.state_dict().items()}
    with af.steer(llama, [detox, formal], strength=[0.8, 0.5]) as h:
        assert set(h.modes.values()) == {"fold"}
        assert h.map_sets == ("0", "1")
        assert "every row: 0 (λ 0.8) → 1 (λ 0.5)" in h.explain()
        folded = logits(llama)
        h.set_strength([0.3, 1.0])
        changed = logits(llama)
        with pytest.raises(ValueError, match="fold the whole-model chain"):
            h.select({"0": 1.0})
    expected = chained_logits(llama, [(detox, 0.8), (formal, 0.5)], IDS)
    assert_close(folded, expected)
    assert_close(changed, chained_logits(llama, [(detox, 0.3), (formal, 1.0)], IDS))
    assert all(torch.equal(v, weights[k]) for k, v in llama.state_dict().items())


@pytest.mark.parametrize("mode", ["fused", "op"])
def test_whole_model_chain_with_supports_in_kernels(llama, mode):
    detox, formal = two_sets(llama, support=True)
    if mode == "fused":
        formal = af.SteeringMaps({s: m for s, m in formal.items() if "norm" in s})
    with af.steer(llama, [formal, detox], strength=[1.0, 0.7], mode="auto" if mode == "op" else "fused") as h:
        assert "fold" not in h.modes.values()
        y = logits(llama)
        h.set_strength(torch.tensor([1.0, 0.0, 0.5]))  # per row, times each set's λ
        per_row = logits(llama)
    assert_close(y, chained_logits(llama, [(formal, 1.0), (detox, 0.7)], IDS))
    assert torch.equal(per_row[1], logits(llama)[1])
    assert_close(per_row[2:3], chained_logits(llama, [(formal, 0.5), (detox, 0.35)], IDS[2:3]))


def test_explain_shows_each_rows_chain(llama):
    detox, formal = two_sets(llama)
    with af.steer(llama, {"detox": detox, "formal": formal}) as h:
        h.select([{"detox": 0.8, "formal": 0.5}, None, {"formal": 1.0}])
        text = h.explain()
    assert "map sets: ['detox', 'formal']; up to 2 compose on a row" in text
    assert "row 0: detox (λ 0.8) → formal (λ 0.5); row 1: unsteered; row 2: formal (λ 1)" in text


class TestRefused:
    @pytest.fixture
    def handle(self, llama):
        detox, formal = two_sets(llama)
        with af.steer(llama, {"detox": detox, "formal": formal}) as h:
            yield h

    @pytest.mark.parametrize(
        "choice,error,message",
        [
            ([{"toxic": 1.0}], ValueError, r"select, row 0: unknown map set \['toxic'\]; this handle has \['detox', 'formal'\]"),
            ({"detox": float("nan")}, ValueError, r"set 'detox'.*must be finite"),
            ([None, {"formal": float("inf")}], ValueError, r"select, row 1, set 'formal'.*finite"),
            ({"formal": 1e39}, ValueError, r"finite \(in float32\)"),
            ([[("detox", 0.5), ("detox", 0.2)]], ValueError, r"\['detox'\] named twice.*sets: \['detox', 'formal'\]"),
            ({"detox": "strong"}, TypeError, r"λ must be a number, got str"),
        ],
    )
    def test_bad_selection(self, handle, choice, error, message):
        with pytest.raises(error, match=message):
            handle.select(choice)

    def test_more_sets_than_a_chain_takes(self, llama):
        sites = af.sites(llama, "layernorm")
        sets = {f"s{k}": random_maps(llama, sites, seed=k) for k in range(5)}
        with af.steer(llama, sets) as h:
            h.select({f"s{k}": 0.1 for k in range(4)})
            with pytest.raises(ValueError, match=r"5 map sets .* at most 4 compose on one row .*sets: \['s0', 's1', 's2', 's3', 's4'\]"):
                h.select({f"s{k}": 0.1 for k in range(5)})
        with pytest.raises(ValueError, match="composes 1 to 4 sets, got 5"):
            af.steer(llama, list(sets.values()))

    def test_list_strength_needs_a_list_of_sets(self, handle, llama):
        with pytest.raises(ValueError, match="one per map set"):
            handle.set_strength([0.5, 0.5])
        with pytest.raises(ValueError, match="goes with a list of map sets"):
            af.steer(llama, random_maps(llama, af.sites(llama, "layernorm")), strength=[0.5])

    def test_selection_tensor_out_of_range_names_the_sets(self, handle):
        """Issue 21 item 10: refused in select with the user's numbers, not the forward's slots."""
        with pytest.raises(ValueError, match=r"holds \[5\] at rows \[0\]: positions must be -1 \(unsteered\) or in \[0, 2\) \(0 = 'detox', 1 = 'formal'\)"):
            handle.select(torch.tensor([5, 0]))
        with pytest.raises(ValueError, match=r"holds \[-2\]"):
            handle.select(torch.tensor(-2))


def test_compile_does_not_recompile_when_chains_change(llama):
    from torch._dynamo.testing import CompileCounterWithBackend

    detox, formal = two_sets(llama)
    torch._dynamo.reset()
    with af.steer(llama, {"detox": detox, "formal": formal}, mode="op") as h:
        h.select([None, None, None])
        h.select([{"detox": 0.0}, None, None])
        counter = CompileCounterWithBackend("eager")
        compiled = torch.compile(llama, backend=counter, fullgraph=True)
        with torch.no_grad():
            for chains in (
                [{"detox": 0.8, "formal": 0.5}, None, {"formal": 1.0}],
                [{"formal": 0.3, "detox": 1.2}, {"detox": 0.1}, None],
                [None, {"formal": 0.5, "detox": 0.5}, {"detox": 1.0, "formal": 1.0}],
            ):
                h.select(chains)
                assert_close(compiled(input_ids=IDS).logits, llama(input_ids=IDS).logits)
        assert counter.frame_count == 1, "a chain change recompiled"
    torch._dynamo.reset()


def test_chain_strength_times_the_scale_must_stay_finite(llama):
    detox, formal = two_sets(llama)
    with af.steer(llama, {"detox": detox, "formal": formal}) as h:
        h.select({"detox": 1e30})
        with pytest.raises(ValueError, match="overflow float32"):
            h.set_strength(1e30)
        assert torch.equal(h.strength, torch.tensor([[1e30, 0.0]]))  # unchanged
