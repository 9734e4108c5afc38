"""``additional_config["act_fast"]`` parsing and map-file loading (no vLLM needed)."""

import pytest
import torch

import act_fast as af
from act_fast.vllm.config import SteeringConfigError, engine_config, load_map_sets, maps_digest


def _maps(tmp_path, name="a.safetensors", seed=0):
    g = torch.Generator().manual_seed(seed)
    m = af.SteeringMaps({"model.norm": af.AffineMap(torch.rand(8, generator=g), torch.rand(8, generator=g))})
    return m.save(tmp_path / name)


def test_absent_entry_means_no_steering():
    assert engine_config(None) is None
    assert engine_config({}) is None
    assert engine_config({"other_plugin": 1}) is None


def test_map_sets_keep_their_order(tmp_path):
    config = engine_config({"act_fast": {"maps": {"z": "z.safetensors", "a": str(tmp_path / "a.safetensors")}}})
    assert config.set_names == ("z", "a")


@pytest.mark.parametrize(
    "entry, message",
    [
        ("detox.safetensors", "must be a dict like"),
        ({"map": {"a": "a.safetensors"}}, r"unknown keys \['map'\]"),
        ({"maps": {}}, "non-empty dict"),
        ({"maps": ["a.safetensors"]}, "non-empty dict"),
        ({"maps": {"": "a.safetensors"}}, "non-empty strings"),
        ({"maps": {"a": 3}}, "must be a path string"),
    ],
)
def test_malformed_config_is_refused(entry, message):
    with pytest.raises(SteeringConfigError, match=message):
        engine_config({"act_fast": entry})


def test_missing_and_damaged_files_are_named(tmp_path):
    good = _maps(tmp_path)
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(SteeringConfigError, match=rf"map set 'b'.*{missing}"):
        load_map_sets(engine_config({"act_fast": {"maps": {"a": str(good), "b": str(missing)}}}))
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(SteeringConfigError, match=rf"map set 'c'.*{damaged}"):
        load_map_sets(engine_config({"act_fast": {"maps": {"a": str(good), "c": str(damaged)}}}))
    sets = load_map_sets(engine_config({"act_fast": {"maps": {"a": str(good)}}}))
    assert list(sets) == ["a"] and list(sets["a"]) == ["model.norm"]


def test_digest_follows_file_contents(tmp_path):
    path = _maps(tmp_path, seed=0)
    config = engine_config({"act_fast": {"maps": {"a": str(path)}}})
    first = maps_digest(config)
    assert maps_digest(config) == first
    _maps(tmp_path, seed=1)  # same path, other maps
    assert maps_digest(config) != first


def test_strength_range_default_and_explicit():
    from act_fast.vllm.config import DEFAULT_STRENGTH_RANGE

    assert engine_config({"act_fast": {"maps": {"a": "a.safetensors"}}}).strength_range == DEFAULT_STRENGTH_RANGE == (-10.0, 10.0)
    assert engine_config({"act_fast": {"maps": {"a": "a.safetensors"}, "strength_range": [0, 2]}}).strength_range == (0.0, 2.0)


@pytest.mark.parametrize("bad", [[1.0], [2.0, 1.0], "0,1", [0, float("inf")], [0, 1e39], [True, 2], {"lo": 0, "hi": 1}, [0, "1"]])
def test_bad_strength_range_is_refused(bad):
    with pytest.raises(SteeringConfigError, match=r"\['strength_range'\] must be \[lo, hi\]"):
        engine_config({"act_fast": {"maps": {"a": "a.safetensors"}, "strength_range": bad}})


def test_paths_in_the_entry_become_strings(tmp_path):
    import json

    from act_fast.vllm.config import normalise_paths

    path = tmp_path / "a.safetensors"
    config = {"act_fast": {"maps": {"a": path}, "strength_range": (-2, 2)}, "other": 1}
    plain = normalise_paths(config)
    assert plain == {"act_fast": {"maps": {"a": str(path)}, "strength_range": (-2, 2)}, "other": 1}
    json.dumps(plain, sort_keys=True)  # what vLLM's config hash does
    assert config["act_fast"]["maps"]["a"] is path  # the caller's dict is not changed
    assert normalise_paths({"x": path}) == {"x": path} and normalise_paths(None) is None
