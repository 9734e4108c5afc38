"""torchao int8 weight-only quantized Linear layers: steering never folds into quantized weights
(explain() says why), and steers like the float model within the quantization's own error."""

from __future__ import annotations

import copy

import pytest
import torch
from interop_helpers import inputs, llama, logits

import act_fast as af
from act_fast.maps import AffineMap, SteeringMaps

quantization = pytest.importorskip("torchao.quantization", reason="torchao is not installed (it is in the dev extra)")

SITES = ("model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj", "model.layers.2.mlp.down_proj")


def _maps() -> SteeringMaps:
    # no bias: on a float model every site folds into the Linear weight
    torch.manual_seed(3)
    return SteeringMaps({s: AffineMap(torch.rand(32) + 0.5, torch.zeros(32)) for s in SITES}, model_type="llama")


@pytest.fixture(scope="module")
def models():
    base = llama()
    quantized = copy.deepcopy(base)
    quantization.quantize_(quantized, quantization.Int8WeightOnlyConfig())
    assert type(quantized.model.layers[0].self_attn.o_proj.weight).__name__ != "Parameter"
    return base, quantized


def test_never_folds_into_quantized_weights(models):
    base, quantized = models
    maps = _maps()
    with af.steer(base, maps) as handle:
        assert set(handle.modes.values()) == {"fold"}
    weights = {s: quantized.get_submodule(s).weight for s in SITES}
    before = {s: w.dequantize().clone() for s, w in weights.items()}
    with af.steer(quantized, maps) as handle:
        assert set(handle.modes.values()) == {"op"}
        for line in handle.explain().splitlines():
            assert "fold refused: its weight is quantized (Int8Tensor, a tensor subclass); act_fast never folds into quantized weights" in line
        for s in SITES:
            assert quantized.get_submodule(s).weight is weights[s]
            assert torch.equal(weights[s].dequantize(), before[s])


def test_forced_fold_is_refused_at_steer_naming_the_sites(models):
    _, quantized = models
    with pytest.raises(ValueError, match="mode='fold' does not fit 3 site") as err:
        af.steer(quantized, _maps(), mode="fold")
    assert all(f"{s}: its weight is quantized (Int8Tensor" in str(err.value) for s in SITES)


def test_steering_delta_matches_the_float_model_within_quantization_error(models):
    base, quantized = models
    batch = inputs(base)
    maps = _maps()
    plain_f, plain_q = logits(base, batch), logits(quantized, batch)
    with af.steer(base, maps):
        steered_f = logits(base, batch)
    with af.steer(quantized, maps):
        steered_q = logits(quantized, batch)
    assert torch.equal(logits(quantized, batch), plain_q)  # removed exactly
    delta_f, delta_q = steered_f - plain_f, steered_q - plain_q
    quant_error = (plain_q - plain_f).abs().max()
    # the steering effect is far larger than int8's error, and both models see the same effect up to that error
    assert delta_f.abs().max() > 10 * quant_error
    assert (delta_q - delta_f).abs().max() <= 2 * quant_error
