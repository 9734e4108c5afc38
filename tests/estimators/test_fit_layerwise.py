"""Incremental fit layer by layer (issue 23 item 2): the maps of whole-model forwards, bit for bit in
fp32, from one forward up to the first block and each block run from the kept activations."""

import logging

import pytest
import torch
from torch import nn

import act_fast as af
from act_fast.estimators import layerwise
from act_fast.estimators.fitting import forward_order
from tiny_models import tiny_bert, tiny_causal_lm, tiny_llama, tiny_unet, unet_batches

from tests.estimators.test_fit import prompts

SITES = ["model.layers.0.post_attention_layernorm", "model.layers.0.input_layernorm", "model.layers.1.input_layernorm",
         "model.layers.2.post_attention_layernorm"]


def assert_same_maps(a, b):
    assert list(a) == list(b)
    for site in a:
        for name, v in a[site].tensors().items():
            assert torch.equal(v, b[site].tensors()[name]), (site, name)


@pytest.mark.parametrize("pooling,method,exact", [("mean", "linear_act", None), ("none", "linear_act", False), ("last", "mean_act", None)])
def test_layerwise_equals_whole_model_forwards(pooling, method, exact):
    model = tiny_llama(num_hidden_layers=3)
    src, tgt = prompts(1, n_batches=2), prompts(2, n_batches=2)
    kw = dict(method=method, pooling=pooling, exact=exact, progress=False)
    whole = af.fit(model, src, tgt, SITES, layerwise=False, **kw)
    by_layer = af.fit(model, src, tgt, SITES, layerwise=True, **kw)
    assert_same_maps(whole, by_layer)
    # Steering is removed afterwards: the model answers as before.
    assert not any(m._forward_hooks for m in model.modules())


def test_activations_above_the_budget_go_to_disk_and_give_the_same_maps(caplog, monkeypatch):
    model = tiny_llama(num_hidden_layers=3)
    src, tgt = prompts(3), prompts(4)
    spilled = []
    put = layerwise.ActivationCache.put

    def spy(self, index, hidden):
        put(self, index, hidden)
        spilled.append(self.spilled)

    monkeypatch.setattr(layerwise.ActivationCache, "put", spy)
    with caplog.at_level(logging.INFO, logger="act_fast.fit"):
        on_disk = af.fit(model, src, tgt, SITES[:3], layerwise=True, cache_budget=0, progress=False)
    assert spilled and spilled[-1] > 0
    assert "bytes kept per prompt token" in caplog.text
    assert_same_maps(af.fit(model, src, tgt, SITES[:3], layerwise=False, progress=False), on_disk)


def test_models_that_are_not_a_stack_of_blocks_fall_back_saying_why(caplog):
    model = tiny_llama()
    src, tgt = prompts(5), prompts(6)
    sites = ["model.layers.0.input_layernorm", "model.norm"]  # the final norm is outside the stack
    with caplog.at_level(logging.INFO, logger="act_fast.fit"):
        maps = af.fit(model, src, tgt, sites, progress=False)
    assert "not layer by layer: site 'model.norm' is not inside a stack of blocks" in caplog.text
    assert list(maps) == sites
    with pytest.raises(ValueError, match="layerwise=True.*model.norm"):
        af.fit(model, src, tgt, sites, layerwise=True, progress=False)


def test_gemma2_per_layer_masks_fall_back():
    """Gemma2 alternates sliding-window and global masks: blocks do not share their inputs."""
    model = tiny_causal_lm("gemma2", num_hidden_layers=2)
    ordered = ["model.layers.0.post_attention_layernorm", "model.layers.1.post_attention_layernorm"]
    blocks, why = layerwise.plan(model, ordered)
    assert blocks is not None
    why = layerwise.check_stack(model, blocks, prompts(0, T=12)[0])
    assert why == "" or "other inputs" in why  # short prompts may fit inside the window


def test_plan_groups_sites_by_block():
    model = tiny_llama(num_hidden_layers=4)
    ordered = forward_order(model, SITES, prompts(0)[0])
    blocks, why = layerwise.plan(model, ordered)
    assert why == "" and blocks.stack == "model.layers" and [i for i, _ in blocks.blocks] == [0, 1, 2]
    assert blocks.sites == {0: ["model.layers.0.input_layernorm", "model.layers.0.post_attention_layernorm"],
                            1: ["model.layers.1.input_layernorm"], 2: ["model.layers.2.post_attention_layernorm"]}


def test_bytes_per_token_is_stated():
    model = tiny_llama(num_hidden_layers=2)
    per_token, why = layerwise.estimate_bytes_per_token(model, SITES[:3], prompts(0)[0])
    assert why == "" and per_token >= 32 * 4  # at least the fp32 hidden state (hidden size 32)
