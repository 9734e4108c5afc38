"""accelerate ``device_map`` with disk offload and ``cpu_offload``: maps go to each site's execution
device, fold never touches an offloaded (meta) parameter, fused never bypasses accelerate's hooks,
steering equals the un-offloaded model's and ``remove()`` restores everything bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
from interop_helpers import inputs, llama, logits
from tolerances import assert_close

import act_fast as af
from act_fast.maps import AffineMap, SteeringMaps

accelerate = pytest.importorskip("accelerate", reason="accelerate is not installed (it is in the dev extra)")

DEVICE_MAP = {
    "model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "disk",
    "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu",
}


def _maps() -> SteeringMaps:
    torch.manual_seed(5)
    scale = lambda: AffineMap(torch.rand(32) + 0.5, torch.zeros(32))  # noqa: E731 (foldable into a norm)
    return SteeringMaps(
        {
            "model.layers.1.post_attention_layernorm": scale(),
            "model.layers.2.input_layernorm": AffineMap(torch.rand(32) + 0.5, torch.randn(32), -torch.ones(32), torch.ones(32)),
            "model.layers.2": AffineMap(torch.ones(32), torch.randn(32)),
            "model.layers.0.self_attn.o_proj": scale(),
        },
        model_type="llama",
    )


def _disk(tmp_path):
    return accelerate.dispatch_model(copy.deepcopy(llama()), DEVICE_MAP, offload_dir=str(tmp_path / "offload"))


def _cpu(tmp_path):
    return accelerate.cpu_offload(copy.deepcopy(llama()), execution_device=torch.device("cpu"))


def _snapshot(model) -> dict:
    """Every parameter (meta ones as themselves), the module forwards accelerate installed, and the
    offloaded weights accelerate loads from."""
    params = {n: (p.device, p.clone()) for n, p in model.named_parameters()}
    forwards = {n: m.__dict__.get("forward") for n, m in model.named_modules()}
    stored = {}
    for n, m in model.named_modules():
        weights = getattr(getattr(m, "_hf_hook", None), "weights_map", None)
        if weights is not None:  # a PrefixedDataset: iterates full keys of its dataset
            data = getattr(weights, "dataset", weights)
            stored.update({k: data[k].clone() for k in weights})
    return {"params": params, "forwards": forwards, "stored": stored}


def _same(a: dict, b: dict) -> bool:
    if a["forwards"].keys() != b["forwards"].keys() or any(a["forwards"][k] is not b["forwards"][k] for k in a["forwards"]):
        return False
    if a["stored"].keys() != b["stored"].keys() or not all(torch.equal(a["stored"][k], b["stored"][k]) for k in a["stored"]):
        return False
    for k, (device, value) in a["params"].items():
        other_device, other = b["params"][k]
        if device != other_device or (device.type != "meta" and not torch.equal(value, other)):
            return False
    return a["params"].keys() == b["params"].keys()


@pytest.mark.parametrize("offload", [_disk, _cpu], ids=["disk", "cpu"])
def test_offloaded_model_steers_like_the_plain_one_and_restores(tmp_path, offload):
    plain = llama()
    batch = inputs(plain)
    maps = _maps()
    with af.steer(plain, maps):
        expected = logits(plain, batch)
    model = offload(tmp_path)
    assert model.model.layers[1].post_attention_layernorm.weight.is_meta
    unsteered = logits(model, batch)
    before = _snapshot(model)
    assert before["stored"] and any(f is not None for f in before["forwards"].values())
    handle = af.steer(model, maps)
    assert set(handle.modes.values()) == {"op"}
    explain = dict(line.split(": ", 1) for line in handle.explain().splitlines())
    assert "fold refused: its parameters are offloaded (meta device" in explain["model.layers.1.post_attention_layernorm"]
    assert "fused refused: accelerate wraps its forward" in explain["model.layers.1.post_attention_layernorm"]
    assert_close(logits(model, batch), expected)
    handle.remove()
    assert _same(before, _snapshot(model))
    assert torch.equal(logits(model, batch), unsteered)


def test_forced_fold_and_fused_are_refused_at_steer_naming_the_site(tmp_path):
    model = _disk(tmp_path)
    maps = SteeringMaps({"model.layers.1.post_attention_layernorm": AffineMap(torch.rand(32) + 0.5, torch.zeros(32))}, model_type="llama")
    with pytest.raises(ValueError, match=r"model.layers.1.post_attention_layernorm: its parameters are offloaded"):
        af.steer(model, maps, mode="fold")
    with pytest.raises(ValueError, match=r"model.layers.1.post_attention_layernorm: accelerate wraps its forward"):
        af.steer(model, maps, mode="fused")


def test_maps_go_to_the_execution_device(tmp_path):
    from act_fast.modeling import module_device

    model = _disk(tmp_path)
    layer = model.model.layers[2]
    assert next(layer.parameters()).is_meta
    assert module_device(layer) == torch.device("cpu")
