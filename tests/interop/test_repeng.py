"""repeng ``ControlVector``: act_fast applies it as repeng's own ``ControlModel`` does, and reads
and writes the same ``.gguf`` files."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from interop_helpers import import_or_skip, inputs, llama, logits
from tolerances import assert_close

import act_fast as af

repeng = import_or_skip("repeng")


def _vector() -> "repeng.ControlVector":
    rng = np.random.default_rng(0)
    return repeng.ControlVector(model_type="llama", directions={1: rng.standard_normal(32).astype(np.float32), 2: rng.standard_normal(32).astype(np.float32)})


def _repeng_logits(model, vector, coeff, batch):
    controlled = repeng.ControlModel(copy.deepcopy(model), list(vector.directions))
    controlled.set_control(vector, coeff)
    return logits(controlled, batch)


@pytest.mark.parametrize("coeff", [1.0, -1.5])
def test_same_logits_as_repeng_control_model(coeff):
    model = llama()
    batch = inputs(model, batch=1)  # repeng's padding mask assumes position_ids [B, T]; transformers 5 passes [1, T]
    vector = _vector()
    expected = _repeng_logits(model, vector, coeff, batch)
    maps = af.from_repeng(vector, model)
    assert list(maps) == ["model.layers.1", "model.layers.2"] and maps.model_type == "llama"
    with af.steer(model, maps, strength=coeff):
        assert_close(logits(model, batch), expected)
    assert not torch.equal(logits(model, batch), expected)


def test_repeng_gguf_file_and_back(tmp_path):
    model = llama()
    vector = _vector()
    vector.export_gguf(tmp_path / "repeng.gguf")
    from_file = af.load_maps(tmp_path / "repeng.gguf")
    from_object = af.from_repeng(vector)
    assert list(from_file) == list(from_object)
    for site in from_file:
        assert torch.equal(from_file[site].bias, from_object[site].bias)
    assert list(af.from_repeng(str(tmp_path / "repeng.gguf"), model)) == list(from_file)
    # repeng reads act_fast's export back to the same directions
    from_object.to_gguf(tmp_path / "act_fast.gguf")
    again = repeng.ControlVector.import_gguf(tmp_path / "act_fast.gguf")
    assert again.model_type == "llama" and sorted(again.directions) == [1, 2]
    for layer, direction in vector.directions.items():
        assert np.array_equal(np.asarray(again.directions[layer]), direction)


def test_not_a_control_vector():
    with pytest.raises(TypeError, match="repeng ControlVector"):
        af.from_repeng({"directions": {}})
