"""GGUF control vectors: export (llama.cpp's format and metadata), exact round trip, import of
files written as llama.cpp and repeng write them, refusals and hostile files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from interop_helpers import add_at_layers, inputs, llama, logits
from tolerances import assert_close

import act_fast as af
from act_fast.cli import main
from act_fast.maps import AffineMap, MapFileError, SteeringMaps

gguf = pytest.importorskip("gguf")


def _write(path, tensors: dict[str, np.ndarray], *, arch="controlvector", hint="llama", count=None):
    """A control vector written with gguf's writer the way llama.cpp's cvector-generator does (int32
    layer count, no act_fast metadata)."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string(f"{arch}.model_hint", hint)
    writer.add_int32(f"{arch}.layer_count", len(tensors) if count is None else count)
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _additive(model, layers=(1, 2)) -> SteeringMaps:
    return af.from_vectors({i: torch.randn(32) for i in layers}, model)


def test_export_is_the_file_llama_cpp_reads(tmp_path):
    model = llama()
    maps = _additive(model)
    path = maps.to_gguf(tmp_path / "v.gguf")
    reader = gguf.GGUFReader(path)
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "llama"
    assert reader.get_field("controlvector.layer_count").contents() == 2
    names = [t.name for t in reader.tensors]
    assert names == ["direction.1", "direction.2"]
    for tensor, site in zip(reader.tensors, ("model.layers.1", "model.layers.2")):
        # llama.cpp's loader: F32, 1-D, n_embd elements, layer index >= 1
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
        assert list(tensor.shape) == [32]
        assert torch.equal(torch.from_numpy(np.array(tensor.data)), maps[site].bias)


def test_round_trip_is_exact(tmp_path):
    model = llama()
    maps = _additive(model)
    back = af.load_maps(maps.to_gguf(tmp_path / "v.gguf"))
    assert list(back) == list(maps)
    for site in maps:
        assert torch.equal(back[site].weight, maps[site].weight) and torch.equal(back[site].bias, maps[site].bias)
        assert back[site].lo is None
    assert back.metadata() == maps.metadata()


def test_round_trip_keeps_other_layer_lists(tmp_path):
    torch.manual_seed(0)
    from tiny_models import tiny_causal_lm

    gpt2 = tiny_causal_lm("gpt2")
    maps = af.from_vectors({1: torch.randn(32)}, gpt2)
    assert list(maps) == ["transformer.h.1"]
    back = af.load_maps(maps.to_gguf(tmp_path / "g.gguf"))
    assert list(back) == ["transformer.h.1"] and torch.equal(back["transformer.h.1"].bias, maps["transformer.h.1"].bias)


def test_llama_cpp_file_steers_like_adding_at_layer_outputs(tmp_path):
    model = llama()
    batch = inputs(model)
    vectors = {1: torch.randn(32), 2: torch.randn(32)}
    path = _write(tmp_path / "cvec.gguf", {f"direction.{i}": v.numpy() for i, v in vectors.items()})
    maps = af.load_maps(path)
    assert list(maps) == ["model.layers.1", "model.layers.2"] and maps.model_type == "llama" and maps.method == "mean_diff"
    assert all(torch.equal(m.weight, torch.ones(32)) and m.lo is None for m in maps.values())
    for strength in (1.0, -0.5):
        hooks = add_at_layers(model, vectors, strength)
        expected = logits(model, batch)
        for h in hooks:
            h.remove()
        with af.steer(model, maps, strength=strength) as handle:
            assert set(handle.modes.values()) == {"op"}
            assert_close(logits(model, batch), expected)
    assert not torch.equal(expected, logits(model, batch))


def test_import_with_another_model_type_names_its_layers(tmp_path):
    path = _write(tmp_path / "g.gguf", {"direction.1": np.ones(8, np.float32)}, hint="gpt2")
    assert list(af.load_maps(path)) == ["transformer.h.1"]
    assert list(af.interop.read_control_vector(path, model_type="llama")) == ["model.layers.1"]


@pytest.mark.parametrize(
    "maps, reasons",
    [
        (SteeringMaps({"model.layers.1": AffineMap(torch.full((4,), 2.0), torch.zeros(4))}, model_type="llama"), ["scale w ≠ 1"]),
        (SteeringMaps({"model.layers.1": AffineMap(torch.ones(4), torch.zeros(4), -torch.ones(4), torch.ones(4))}, model_type="llama"), ["support"]),
        (SteeringMaps({"model.layers.0": AffineMap(torch.ones(4), torch.zeros(4))}, model_type="llama"), ["layer 0"]),
        (SteeringMaps({"model.layers.1.post_attention_layernorm": AffineMap(torch.ones(4), torch.zeros(4))}, model_type="llama"), ["not a decoder-layer output"]),
    ],
)
def test_export_refuses_what_llama_cpp_cannot_apply(tmp_path, maps, reasons):
    with pytest.raises(ValueError) as err:
        maps.to_gguf(tmp_path / "x.gguf")
    site = next(iter(maps))
    assert site in str(err.value) and all(r in str(err.value) for r in reasons)
    assert not (tmp_path / "x.gguf").exists()


def test_export_lists_every_refused_site(tmp_path):
    model = llama()
    act = af.fit_map(*_two_stats(), method="linear_act")
    maps = SteeringMaps({"model.layers.1": act, "model.layers.2.mlp": AffineMap(torch.ones(32), torch.ones(32))}, model_type="llama")
    with pytest.raises(ValueError, match=r"2 map\(s\)") as err:
        maps.to_gguf(tmp_path / "x.gguf")
    assert "model.layers.1: per-channel scale" in str(err.value) and "model.layers.2.mlp: not a decoder-layer output" in str(err.value)
    del model


def _two_stats():
    from act_fast import ChannelStats

    a, b = ChannelStats(32), ChannelStats(32)
    a.update(torch.randn(64, 32))
    b.update(torch.randn(64, 32) * 2 + 1)
    return a, b


@pytest.mark.parametrize(
    "tensors, kwargs, match",
    [
        ({"direction.1": np.ones(4, np.float32)}, {"arch": "llama"}, "general.architecture is 'llama'"),
        ({"blk.1.weight": np.ones(4, np.float32)}, {}, "not a control vector direction"),
        ({"direction.1": np.ones((2, 4), np.float32)}, {}, "1-D"),
        ({"direction.1": np.ones(4, np.float32), "direction.2": np.ones(5, np.float32)}, {}, "different sizes"),
        ({"direction.1": np.array([1.0, np.nan], np.float32)}, {}, "NaN"),
        ({"direction.1": np.ones(4, np.int32)}, {}, "I32"),
        ({}, {}, "no direction tensors"),
    ],
)
def test_hostile_files_are_refused_naming_the_file(tmp_path, tensors, kwargs, match):
    path = _write(tmp_path / "bad.gguf", tensors, **kwargs)
    with pytest.raises(MapFileError, match=match) as err:
        af.load_maps(path)
    assert str(path) in str(err.value)


def test_not_gguf_and_missing(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\x07" * 20)
    with pytest.raises(MapFileError, match="not a readable GGUF file") as err:
        af.load_maps(junk)
    assert str(junk) in str(err.value)
    with pytest.raises(FileNotFoundError):
        af.load_maps(tmp_path / "missing.gguf")


def test_bad_act_fast_metadata_is_refused(tmp_path):
    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_string("act_fast.maps", "{not json")
    writer.add_tensor("direction.1", np.ones(4, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(MapFileError, match="act_fast.maps is not JSON"):
        af.load_maps(path)


def test_cli_export(tmp_path, capsys):
    model = llama()
    maps = _additive(model)
    src = maps.save(tmp_path / "maps.safetensors")
    out = tmp_path / "out.gguf"
    assert main(["export", str(src), "--format", "gguf", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    back = af.load_maps(out)
    assert all(torch.equal(back[s].bias, maps[s].bias) for s in maps)
    meta = json.loads(gguf.GGUFReader(out).get_field("act_fast.maps").contents())
    assert meta["sites"] == list(maps)


def test_cli_export_refusal_names_sites(tmp_path, capsys):
    maps = SteeringMaps({"model.layers.1.post_attention_layernorm": AffineMap(torch.rand(4) + 0.5, torch.zeros(4))}, model_type="llama")
    src = maps.save(tmp_path / "act.safetensors")
    assert main(["export", str(src), "--format", "gguf", "--out", str(tmp_path / "x.gguf")]) == 2
    err = capsys.readouterr().err
    assert "act-fast export: error:" in err and "model.layers.1.post_attention_layernorm" in err and "scale" in err
    assert not (tmp_path / "x.gguf").exists()


def test_f16_directions_load_as_float32(tmp_path):
    value = np.array([0.5, -1.25, 3.0, 65504.0], np.float16)
    maps = af.load_maps(_write(tmp_path / "h.gguf", {"direction.1": value}))
    assert maps["model.layers.1"].bias.dtype == torch.float32
    assert torch.equal(maps["model.layers.1"].bias, torch.from_numpy(value.astype(np.float32)))
