"""steer(): the modes against a hook-based reference, strength, per-row λ and map sets, removal, errors."""

import pytest
import torch
from random_maps import random_maps
from tiny_models import tiny_llama
from tolerances import assert_close

import act_fast as af

IDS = torch.tensor([[5, 9, 17, 3, 44, 2, 71], [8, 1, 1, 63, 20, 90, 11], [4, 4, 8, 15, 16, 23, 42]])


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=32)).eval()


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def hooked_logits(model, maps, strength, ids=IDS):
    """The maps applied the plain way: a forward hook per site calling AffineMap.apply."""
    modules = dict(model.named_modules())
    handles = [modules[s].register_forward_hook(lambda mod, a, out, m=m: m.apply(out, strength)) for s, m in maps.items()]
    try:
        return logits(model, ids)
    finally:
        for h in handles:
            h.remove()


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture
def gpt2():
    return tiny_gpt2()


def norm_sites(model):
    return af.sites(model, "layernorm")


@pytest.mark.parametrize("mode", ["fold", "fused", "op"])
def test_llama_modes_match_hook_reference(llama, mode):
    maps = random_maps(llama, norm_sites(llama), zero_bias=mode == "fold")
    expected = hooked_logits(llama, maps, 0.7)
    with af.steer(llama, maps, 0.7, mode=mode) as h:
        assert set(h.modes.values()) == {mode}
        assert_close(logits(llama), expected)


@pytest.mark.parametrize("mode", ["fold", "op"])
def test_gpt2_linear_and_norm_sites_match_hook_reference(gpt2, mode):
    maps = random_maps(gpt2, norm_sites(gpt2) + af.sites(gpt2, "o_proj"))  # LayerNorms and Conv1D c_proj
    expected = hooked_logits(gpt2, maps, 0.6)
    with af.steer(gpt2, maps, 0.6, mode=mode) as h:
        assert set(h.modes.values()) == {mode}
        assert_close(logits(gpt2), expected)


def test_tuple_outputs_are_steered(llama):
    maps = random_maps(llama, af.sites(llama, "attn_out"))  # attention modules return (out, weights)
    modules = dict(llama.named_modules())
    handles = [
        modules[s].register_forward_hook(lambda mod, a, out, m=m: (m.apply(out[0], 0.5),) + tuple(out[1:]))
        for s, m in maps.items()
    ]
    try:
        expected = logits(llama)
    finally:
        for h in handles:
            h.remove()
    with af.steer(llama, maps, 0.5) as h:
        assert set(h.modes.values()) == {"op"}
        assert_close(logits(llama), expected)


def test_support_sites_are_fused_or_op(llama):
    maps = random_maps(llama, norm_sites(llama) + af.sites(llama, "o_proj"), support=True)
    expected = hooked_logits(llama, maps, 1.0)
    with af.steer(llama, maps) as h:
        assert {h.modes[s] for s in norm_sites(llama)} == {"fused"}
        assert {h.modes[s] for s in af.sites(llama, "o_proj")} == {"op"}
        assert_close(logits(llama), expected)


def test_auto_folds_when_exact(gpt2, llama):
    with af.steer(gpt2, random_maps(gpt2, norm_sites(gpt2))) as h:
        assert set(h.modes.values()) == {"fold"}  # LayerNorm has a bias to fold b into
    with af.steer(llama, random_maps(llama, norm_sites(llama))) as h:
        assert set(h.modes.values()) == {"fused"}  # RMSNorm has no bias: b != 0 cannot fold
    with af.steer(llama, random_maps(llama, norm_sites(llama), zero_bias=True)) as h:
        assert set(h.modes.values()) == {"fold"}


@pytest.mark.parametrize("mode", ["fold", "fused", "op"])
def test_modes_agree_with_each_other(gpt2, mode):
    maps = random_maps(gpt2, norm_sites(gpt2))
    with af.steer(gpt2, maps, 0.8, mode="op"):
        expected = logits(gpt2)
    with af.steer(gpt2, maps, 0.8, mode=mode):
        assert_close(logits(gpt2), expected)


@pytest.mark.parametrize("mode", ["fold", "fused", "op"])
def test_strength_zero_is_identity_and_changes_refold(gpt2, mode):
    base = logits(gpt2)
    maps = random_maps(gpt2, norm_sites(gpt2))
    with af.steer(gpt2, maps, 0.0, mode=mode) as h:
        if mode == "fold":
            torch.testing.assert_close(logits(gpt2), base, rtol=0, atol=0)  # a zero fold is the original
        else:
            assert_close(logits(gpt2), base)
        h.set_strength(1.0)
        steered = logits(gpt2)
        assert (steered - base).abs().max() > 1e-2
        assert_close(steered, hooked_logits_removed(gpt2, maps, h, 1.0))
        h.set_strength(0.0)
        assert_close(logits(gpt2), base)


def hooked_logits_removed(model, maps, handle, strength):
    """Reference logits computed while the handle's own effect is suspended (strength 0)."""
    handle.set_strength(0.0)
    try:
        return hooked_logits(model, maps, strength)
    finally:
        handle.set_strength(strength)


@pytest.mark.parametrize("mode", ["fold", "fused", "op"])
def test_remove_restores_bit_for_bit(gpt2, mode):
    before = {k: v.clone() for k, v in gpt2.state_dict().items()}
    base = logits(gpt2)
    h = af.steer(gpt2, random_maps(gpt2, norm_sites(gpt2)), 0.9, mode=mode)
    assert list(gpt2.state_dict()) == list(before)  # keys unchanged while steered
    h.set_strength(0.3)
    h.remove()
    for k, v in gpt2.state_dict().items():
        assert torch.equal(v, before[k]), k
    torch.testing.assert_close(logits(gpt2), base, rtol=0, atol=0)
    modules = dict(gpt2.named_modules())
    assert all("forward" not in vars(modules[s]) and not modules[s]._forward_hooks for s in norm_sites(gpt2))
    with pytest.raises(RuntimeError, match="removed"):
        h.set_strength(1.0)
    h.remove()  # idempotent


@pytest.mark.parametrize("mode", ["fused", "op"])
def test_per_row_strength_equals_separate_runs(llama, mode):
    maps = random_maps(llama, norm_sites(llama), support=True)
    strengths = [0.0, 0.5, 1.0]
    with af.steer(llama, maps, torch.tensor(strengths), mode=mode):
        together = logits(llama)
    for i, s in enumerate(strengths):
        with af.steer(llama, maps, s, mode=mode):
            assert_close(together[i : i + 1], logits(llama, IDS[i : i + 1]))


def test_per_row_strength_refused_by_folded_sites(gpt2):
    with af.steer(gpt2, random_maps(gpt2, norm_sites(gpt2)), mode="fold") as h:
        with pytest.raises(ValueError, match="fold"):
            h.set_strength(torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="share one map"):
        af.steer(gpt2, random_maps(gpt2, norm_sites(gpt2)), torch.tensor([0.1, 0.2, 0.3]), mode="fold")


@pytest.mark.parametrize("mode", ["auto", "op"])
def test_map_sets_selected_per_row(llama, mode):
    sites = norm_sites(llama)
    detox, formal = random_maps(llama, sites, seed=1, support=True), random_maps(llama, sites[:2], seed=2)
    with af.steer(llama, {"detox": detox, "formal": formal}, mode=mode) as h:
        assert h.map_sets == ("detox", "formal")
        torch.testing.assert_close(logits(llama), logits_unsteered(llama, h))  # rows start unsteered
        h.select(["detox", None, "formal"])
        h.set_strength(torch.tensor([0.8, 1.0, 1.0]))
        together = logits(llama)
    with af.steer(llama, detox, 0.8, mode=mode):
        assert_close(together[0:1], logits(llama, IDS[0:1]))
    assert_close(together[1:2], logits(llama, IDS[1:2]))
    with af.steer(llama, formal, 1.0, mode=mode):
        assert_close(together[2:3], logits(llama, IDS[2:3]))


def logits_unsteered(model, handle):
    handle.set_strength(0.0)
    try:
        return logits(model)
    finally:
        handle.set_strength(1.0)


def test_select_by_tensor_and_one_name(llama):
    sites = norm_sites(llama)
    a, b = random_maps(llama, sites, seed=1), random_maps(llama, sites, seed=2)
    with af.steer(llama, {"a": a, "b": b}) as h:
        h.select(torch.tensor([1, -1, 0]))
        by_tensor = logits(llama)
        h.select(["b", None, "a"])
        torch.testing.assert_close(logits(llama), by_tensor, rtol=0, atol=0)
        h.select("a")
        all_a = logits(llama)
    with af.steer(llama, a):
        torch.testing.assert_close(all_a, logits(llama))


def test_state_dict_keys_unchanged(llama):
    keys = list(llama.state_dict())
    with af.steer(llama, random_maps(llama, norm_sites(llama) + af.sites(llama, "o_proj"), support=True)):
        assert list(llama.state_dict()) == keys


def test_errors(llama, gpt2):
    maps = random_maps(llama, norm_sites(llama))
    with pytest.raises(ValueError, match="mode must be one of"):
        af.steer(llama, maps, mode="magic")
    bad = af.SteeringMaps({"model.layers.0.nope": af.AffineMap(torch.ones(32), torch.zeros(32))})
    with pytest.raises(ValueError, match="no such module"):
        af.steer(llama, bad)
    wrong = af.SteeringMaps({norm_sites(llama)[0]: af.AffineMap(torch.ones(7), torch.zeros(7))})
    with pytest.raises(ValueError, match="7 channels"):
        af.steer(llama, wrong)
    with pytest.raises(ValueError, match="fold"):
        af.steer(llama, random_maps(llama, norm_sites(llama), support=True), mode="fold")
    with pytest.raises(ValueError, match="not a norm"):
        af.steer(llama, random_maps(llama, af.sites(llama, "o_proj")), mode="fused")
    with af.steer(llama, maps) as h:
        with pytest.raises(ValueError, match="already steered"):
            af.steer(llama, maps)
        with pytest.raises(ValueError, match="one map set"):
            h.select(["a"])
        with pytest.raises(ValueError, match="finite"):
            h.set_strength(float("nan"))
    with af.steer(llama, {"a": maps}) as h:
        with pytest.raises(ValueError, match="unknown map sets"):
            h.select(["b"])
        h.select(["a", "a"])
        with pytest.raises(ValueError, match="rows"):
            logits(llama)  # 3 rows, 2 selections
    gpt2_maps = random_maps(gpt2, norm_sites(gpt2))
    gpt2_maps.model_type = "gpt2"
    llama_like = af.SteeringMaps({norm_sites(llama)[0]: gpt2_maps[norm_sites(gpt2)[0]]}, model_type="gpt2")
    with pytest.raises(ValueError, match="fitted on a 'gpt2' model"):
        af.steer(llama, llama_like)
