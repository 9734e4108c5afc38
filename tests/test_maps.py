"""AffineMap / SteeringMaps: validation, safetensors round trip, bad files, model checks."""

import json
import struct

import pytest
import torch
from tolerances import assert_close

import act_fast as af
from act_fast.maps import FORMAT_NAME, AffineMap, MapFileError, SteeringMaps, load_maps, model_fingerprint


def make_maps() -> SteeringMaps:
    return SteeringMaps(
        {
            "model.layers.0.post_attention_layernorm": AffineMap(torch.randn(6), torch.randn(6), -torch.rand(6), torch.rand(6)),
            "model.layers.1.mlp": AffineMap(torch.randn(4), torch.randn(4)),
        },
        method="linear_act",
        support="q_0_100",
        pooling="mean",
        model_type="llama",
        model_fingerprint="abc",
    )


def test_round_trip(tmp_path):
    maps = make_maps()
    path = maps.save(tmp_path / "maps.safetensors")
    loaded = load_maps(path)
    assert list(loaded) == list(maps)
    for site, m in maps.items():
        for name, t in m.tensors().items():
            assert torch.equal(getattr(loaded[site], name), t)
    assert loaded["model.layers.1.mlp"].lo is None
    meta = loaded.metadata()
    assert meta["method"] == "linear_act" and meta["support"] == "q_0_100" and meta["pooling"] == "mean"
    assert meta["model_type"] == "llama" and meta["model_fingerprint"] == "abc"
    assert meta["channels"] == {"model.layers.0.post_attention_layernorm": 6, "model.layers.1.mlp": 4}
    assert meta["version"] == af.__version__ and meta["created"] == maps.created


def test_save_is_atomic_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = make_maps().save(tmp_path / "maps.safetensors")
    before = path.read_bytes()
    import safetensors.torch

    def failing_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        make_maps().save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["maps.safetensors"]


def test_apply_calls_the_transport_op():
    m = AffineMap(torch.full((3,), 2.0), torch.ones(3))
    x = torch.randn(2, 5, 3)
    assert_close(m.apply(x, 0.5), x + 0.5 * (2.0 * x + 1.0 - x))


def test_invalid_maps_are_refused():
    with pytest.raises(ValueError, match=r"bias must have shape \[3\] like weight, got \[4\]"):
        AffineMap(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match=r"weight holds NaN or Inf \(first bad channels: \[1\]\)"):
        AffineMap(torch.tensor([1.0, float("nan"), 1.0]), torch.zeros(3))
    with pytest.raises(ValueError, match="lo and hi must be given together"):
        AffineMap(torch.ones(3), torch.zeros(3), lo=torch.zeros(3))
    with pytest.raises(TypeError, match="weight must be a floating-point tensor"):
        AffineMap(torch.ones(3, dtype=torch.int64), torch.zeros(3))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no map file at .*nothing.safetensors"):
        load_maps(tmp_path / "nothing.safetensors")


def test_truncated_file(tmp_path):
    path = make_maps().save(tmp_path / "maps.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10])
    with pytest.raises(MapFileError, match=r"maps.safetensors: not a readable safetensors file \(truncated or corrupt\?\)"):
        load_maps(path)


def test_corrupt_header(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(struct.pack("<Q", 20) + b"{not json at all....")
    with pytest.raises(MapFileError, match="garbage.safetensors: not a readable safetensors file"):
        load_maps(path)


def test_not_a_map_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"lm_head.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(MapFileError, match="weights.safetensors: a safetensors file, but not an act_fast map file"):
        load_maps(path)


def _rewrite(path, tensors=None, meta_update=None):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()[FORMAT_NAME])
        loaded = {k: f.get_tensor(k) for k in f.keys()}
    loaded.update(tensors or {})
    meta.update(meta_update or {})
    save_file(loaded, str(path), metadata={FORMAT_NAME: json.dumps(meta)})


def test_newer_format_version(tmp_path):
    path = make_maps().save(tmp_path / "maps.safetensors")
    _rewrite(path, meta_update={"format_version": 99})
    with pytest.raises(MapFileError, match="format version 99 is newer"):
        load_maps(path)


def test_nan_and_shape_errors_in_file(tmp_path):
    path = make_maps().save(tmp_path / "maps.safetensors")
    _rewrite(path, tensors={"model.layers.1.mlp/bias": torch.tensor([0.0, float("inf"), 0.0, 0.0])})
    with pytest.raises(MapFileError, match=r"site 'model.layers.1.mlp': .*bias holds NaN or Inf"):
        load_maps(path)
    path = make_maps().save(tmp_path / "maps.safetensors")
    _rewrite(path, tensors={"model.layers.1.mlp/bias": torch.zeros(5)})
    with pytest.raises(MapFileError, match=r"bias must have shape \[4\]"):
        load_maps(path)
    path = make_maps().save(tmp_path / "maps.safetensors")
    _rewrite(path, meta_update={"channels": {"model.layers.0.post_attention_layernorm": 6, "model.layers.1.mlp": 8}})
    with pytest.raises(MapFileError, match="weight has 4 channels, metadata says 8"):
        load_maps(path)


def test_check_model_lists_every_mismatch():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    maps = SteeringMaps({"0": AffineMap(torch.ones(5), torch.zeros(5)), "1": AffineMap(torch.ones(4), torch.zeros(4)), "7": AffineMap(torch.ones(4), torch.zeros(4))})
    with pytest.raises(ValueError, match=r"2 mismatches[\s\S]*site '7': no such module[\s\S]*site '0': map has 5 channels, the module outputs 4"):
        maps.check_model(model, channels={"0": 4, "1": 4})
    SteeringMaps({"1": AffineMap(torch.ones(4), torch.zeros(4))}).check_model(model, channels={"1": 4})


def test_model_fingerprint_tracks_structure_not_paths():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, vocab_size=50)
    a = LlamaForCausalLM(LlamaConfig(**cfg))
    b = LlamaForCausalLM(LlamaConfig(**cfg, name_or_path="/somewhere/else"))
    c = LlamaForCausalLM(LlamaConfig(**{**cfg, "num_hidden_layers": 2}))
    assert model_fingerprint(a)[0] == "llama"
    assert model_fingerprint(a) == model_fingerprint(b)
    assert model_fingerprint(a) != model_fingerprint(c)


def test_metadata_of_the_wrong_kind_is_refused(tmp_path):
    cases = {
        "format": ({"format": "other.maps"}, r"metadata format is 'other.maps', expected 'act_fast.maps'"),
        "sites_string": ({"sites": "model.layers.1.mlp"}, r"metadata 'sites' must be a list of module names, got str"),
        "duplicate": ({"sites": ["model.layers.1.mlp", "model.layers.1.mlp"]}, r"lists sites more than once: \['model.layers.1.mlp'\]"),
        "channels": ({"channels": {"model.layers.1.mlp": "4"}}, r"metadata 'channels' must map each site to an int"),
        "version": ({"format_version": "1"}, r"metadata 'format_version' must be an int"),
    }
    for name, (update, message) in cases.items():
        path = make_maps().save(tmp_path / f"{name}.safetensors")
        _rewrite(path, meta_update=update)
        with pytest.raises(MapFileError, match=message):
            load_maps(path)


def test_inverted_support_is_refused_in_memory_and_in_files(tmp_path):
    with pytest.raises(ValueError, match=r"support has lo > hi \(first bad channels: \[2\]\)"):
        AffineMap(torch.ones(4), torch.zeros(4), torch.tensor([0.0, 0.0, 1.0, 0.0]), torch.tensor([1.0, 0.0, 0.5, 1.0]))
    AffineMap(torch.ones(2), torch.zeros(2), torch.zeros(2), torch.zeros(2))  # lo == hi: an empty support is allowed
    path = make_maps().save(tmp_path / "maps.safetensors")
    _rewrite(path, tensors={"model.layers.0.post_attention_layernorm/lo": torch.full((6,), 2.0)})
    with pytest.raises(MapFileError, match="support has lo > hi"):
        load_maps(path)


def test_a_directory_is_named_as_such(tmp_path):
    with pytest.raises(MapFileError, match=r"is a directory, not a map file"):
        load_maps(tmp_path)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        make_maps().save(tmp_path)


def test_files_honour_the_umask_and_stale_temporaries_are_cleaned(tmp_path):
    import os
    import subprocess
    import sys

    old = os.umask(0o022)
    try:
        path = make_maps().save(tmp_path / "maps.safetensors")
        assert path.stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        make_maps().save(tmp_path / "private.safetensors")
        assert (tmp_path / "private.safetensors").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
    # a save killed half-way leaves its temporary; the next save to the same path removes it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".maps.safetensors.{dead}.abcd1234.tmp"
    stale.write_bytes(b"x" * 1000)
    alive = tmp_path / f".maps.safetensors.{os.getppid()}.abcd1234.tmp"  # a live process's: kept
    alive.write_bytes(b"y")
    make_maps().save(path)
    assert not stale.exists() and alive.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, "maps.safetensors", "private.safetensors"])


def tensor_data_span(path) -> tuple[int, int]:
    """Byte range of a safetensors file's tensor data (after the 8-byte length and the JSON header)."""
    raw = path.read_bytes()
    start = 8 + struct.unpack("<Q", raw[:8])[0]
    return start, len(raw)


def test_every_byte_flip_in_the_tensor_data_is_refused(tmp_path):
    path = make_maps().save(tmp_path / "maps.safetensors")
    raw = path.read_bytes()
    start, end = tensor_data_span(path)
    assert end - start == 4 * (4 * 6 + 2 * 4)
    accepted = []
    for i in range(start, end):
        flipped = bytearray(raw)
        flipped[i] ^= 0x01 if i % 2 else 0x80  # low mantissa bits and sign / exponent bits
        path.write_bytes(bytes(flipped))
        try:
            load_maps(path)
            accepted.append(i - start)
        except MapFileError as err:
            assert str(path) in str(err) and "digest" in str(err), err
    assert not accepted, f"{len(accepted)} flipped bytes loaded: {accepted[:8]}"


def test_files_without_a_digest_still_load(tmp_path):
    """Files written before the digest existed load as before (all their other checks apply)."""
    from safetensors.torch import save_file

    maps = make_maps()
    meta = maps.metadata()
    tensors = {f"{site}/{name}": t for site, m in maps.items() for name, t in m.tensors().items()}
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={FORMAT_NAME: json.dumps(meta)})
    loaded = load_maps(tmp_path / "old.safetensors")
    assert torch.equal(loaded["model.layers.1.mlp"].weight, maps["model.layers.1.mlp"].weight)
    meta["payload_sha256"] = 12  # a digest of the wrong kind is refused
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={FORMAT_NAME: json.dumps(meta)})
    with pytest.raises(MapFileError, match="payload_sha256"):
        load_maps(tmp_path / "bad.safetensors")


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda m: m.weight.__setitem__(1, float("nan")), "weight holds NaN or Inf"),
        (lambda m: m.bias.__setitem__(0, float("inf")), "bias holds NaN or Inf"),
        (lambda m: m.lo.__setitem__(2, 5.0), "lo > hi"),
    ],
)
def test_save_refuses_what_load_would_refuse(tmp_path, spoil, message):
    maps = make_maps()
    spoil(maps["model.layers.0.post_attention_layernorm"])  # changed in place after validation
    path = tmp_path / "maps.safetensors"
    with pytest.raises(ValueError, match=message) as err:
        maps.save(path)
    assert "model.layers.0.post_attention_layernorm" in str(err.value)
    assert not path.exists()


def test_save_refuses_values_that_overflow_float32(tmp_path):
    maps = SteeringMaps({"a": AffineMap(torch.ones(2, dtype=torch.float64), torch.tensor([0.0, 1e300], dtype=torch.float64))})
    with pytest.raises(ValueError, match="site 'a'.*bias holds NaN or Inf"):
        maps.save(tmp_path / "m.safetensors")


def test_save_refuses_what_is_not_a_map(tmp_path):
    with pytest.raises(TypeError, match="site 'a'"):
        SteeringMaps({"a": (torch.ones(2), torch.zeros(2))}).save(tmp_path / "m.safetensors")
