"""Engine start with bad steering configuration fails, naming the map file (and the site)."""

from __future__ import annotations

import pytest
import torch

import act_fast as af
from engine_support import require_vllm

require_vllm()

from test_engine import engine_kwargs  # noqa: E402

pytestmark = pytest.mark.slow


def start(assets, maps: dict):
    from vllm import LLM

    return LLM(**engine_kwargs(assets), additional_config={"act_fast": {"maps": {k: str(v) for k, v in maps.items()}}})


def test_missing_map_file_fails_engine_start(assets, tmp_path):
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(ValueError, match=rf"map set 'gone'.*{missing}"):
        start(assets, {"a": assets.map_files["a"], "gone": missing})


def test_damaged_map_file_fails_engine_start(assets, tmp_path):
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(assets.map_files["a"].read_bytes()[:-100])
    with pytest.raises(ValueError, match=rf"map set 'a'.*{damaged}"):
        start(assets, {"a": damaged})


def test_malformed_config_fails_engine_start(assets):
    from vllm import LLM

    with pytest.raises(ValueError, match="non-empty dict of map-set name"):
        LLM(**engine_kwargs(assets), additional_config={"act_fast": {"maps": []}})


def test_maps_that_do_not_fit_vllm_modules_fail_engine_start(assets, tmp_path, capfd):
    """Checked in the worker against vLLM's own module names and widths (vLLM fuses q/k/v into
    qkv_proj); vLLM reports a worker failure as 'see root cause above', so the message is in the log."""
    path = af.SteeringMaps({
        "model.layers.0.self_attn.q_proj": af.AffineMap(torch.ones(64), torch.zeros(64)),
        "model.layers.1.input_layernorm": af.AffineMap(torch.ones(32), torch.zeros(32)),
    }).save(tmp_path / "other-model.safetensors")
    with pytest.raises(RuntimeError, match="Engine core initialization failed"):
        start(assets, {"x": path})
    captured = capfd.readouterr()
    log = captured.out + captured.err
    assert f"map set 'x' ({path}): site 'model.layers.0.self_attn.q_proj' is not a module of vLLM's LlamaForCausalLM" in log
    assert "model.layers.0.self_attn.qkv_proj" in log  # the closest names are suggested
    assert f"map set 'x' ({path}): site 'model.layers.1.input_layernorm': the map has 32 channels, vLLM's RMSNorm outputs 64" in log
