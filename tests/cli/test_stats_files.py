"""Statistics files (af.save_stats / af.load_stats): exact round trip of every state entry, metadata,
atomic writes, and load errors that name the file."""

import json
import os
import struct
import subprocess

import pytest
import torch

import act_fast as af
from act_fast.maps import AffineMap, SteeringMaps
from act_fast.stats.io import FORMAT_NAME, StatsFileError, stats_metadata


def make_stats() -> dict[str, af.ChannelStats]:
    g = torch.Generator().manual_seed(0)
    hist = af.ChannelStats(6, mantissa_bits=4)
    hist.update(torch.randn(50, 6, generator=g) * 3 + 100)  # pooled-prompt-like: large mean, small spread
    hist.update(torch.tensor([[float("nan"), float("inf"), -float("inf"), 0.0, 1e-30, 1.0]]))
    exact = af.ChannelStats(3, exact=True).update(torch.randn(7, 3, generator=g), torch.tensor([True, False, True, True, True, False, True]))
    return {"model.layers.0.post_attention_layernorm": hist, "model.layers.1.mlp": exact}


def test_round_trip_is_exact_for_every_state_entry(tmp_path):
    stats = make_stats()
    path = af.save_stats(stats, tmp_path / "s.safetensors", metadata={"pooling": "mean", "note": [1, 2]})
    loaded = af.load_stats(path)
    assert list(loaded) == list(stats)
    for site, s in stats.items():
        a, b = s.state_dict(), loaded[site].state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), (site, key)
        assert loaded[site].params == s.params and loaded[site].exact == s.exact
    # Loaded statistics keep accumulating like the originals.
    x = torch.randn(5, 6)
    assert torch.equal(loaded["model.layers.0.post_attention_layernorm"].update(x).histogram,
                       stats["model.layers.0.post_attention_layernorm"].update(x).histogram)


def test_metadata_holds_fingerprint_parameters_and_the_callers_entries(tmp_path, tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    path = af.save_stats(make_stats(), tmp_path / "s.safetensors", metadata={"pooling": "last"}, model=model)
    meta = stats_metadata(path)
    assert (meta["model_type"], meta["model_fingerprint"]) == af.maps.model_fingerprint(model)
    assert meta["sites"] == list(make_stats()) and meta["channels"] == {"model.layers.0.post_attention_layernorm": 6, "model.layers.1.mlp": 3}
    assert meta["params"]["model.layers.0.post_attention_layernorm"] == {"mantissa_bits": 4, "exp_min": -16, "exp_max": 16}
    assert meta["exact"] == {"model.layers.0.post_attention_layernorm": False, "model.layers.1.mlp": True}
    assert meta["metadata"] == {"pooling": "last"} and meta["version"] == af.__version__
    # Without a model, the caller's entries give the fingerprint.
    meta = stats_metadata(af.save_stats(make_stats(), tmp_path / "t.safetensors", metadata={"model_type": "llama", "model_fingerprint": "abc"}))
    assert (meta["model_type"], meta["model_fingerprint"]) == ("llama", "abc")


def test_save_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match="non-empty dict"):
        af.save_stats({}, tmp_path / "s.safetensors")
    with pytest.raises(TypeError, match="site 'a' holds a Tensor"):
        af.save_stats({"a": torch.ones(3)}, tmp_path / "s.safetensors")
    with pytest.raises(TypeError, match="metadata must hold JSON values"):
        af.save_stats(make_stats(), tmp_path / "s.safetensors", metadata={"x": object()})
    with pytest.raises(IsADirectoryError, match="is a directory"):
        af.save_stats(make_stats(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_save_is_atomic_cleans_stale_temporaries_and_honours_the_umask(tmp_path, monkeypatch):
    path = af.save_stats(make_stats(), tmp_path / "s.safetensors")
    before = path.read_bytes()
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process that no longer exists left a temporary behind (killed mid-save)
    (tmp_path / f".s.safetensors.{gone.pid}.0badcafe.tmp").write_bytes(b"left by a killed save")
    import safetensors.torch

    def failing_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(safetensors.torch, "save_file", failing_save)
        with pytest.raises(OSError, match="disk full"):
            af.save_stats(make_stats(), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"]
    old = os.umask(0o027)
    try:
        fresh = af.save_stats(make_stats(), tmp_path / "fresh.safetensors")  # a new file follows the umask
        af.save_stats(make_stats(), path)  # an existing one keeps its mode
    finally:
        os.umask(old)
    assert fresh.stat().st_mode & 0o777 == 0o640
    assert path.stat().st_mode & 0o777 == 0o644


def _rewrite_header(path, edit) -> None:
    """Edits the JSON header of a safetensors file in place (same data section)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])


def _rename(header: dict, old: str, new: str) -> None:
    items = [(new if k == old else k, v) for k, v in header.items()]
    header.clear()
    header.update(items)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no statistics file at .*missing.safetensors"):
        af.load_stats(tmp_path / "missing.safetensors")
    with pytest.raises(StatsFileError, match="is a directory"):
        af.load_stats(tmp_path)
    good = af.save_stats(make_stats(), tmp_path / "good.safetensors")

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(StatsFileError, match=r"truncated.safetensors: not a readable safetensors file"):
        af.load_stats(truncated)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(StatsFileError, match="garbage.safetensors: not a readable"):
        af.load_stats(garbage)

    maps = SteeringMaps({"a": AffineMap(torch.ones(3), torch.zeros(3))}).save(tmp_path / "maps.safetensors")
    with pytest.raises(StatsFileError, match="maps.safetensors: an act_fast map file, not a statistics file"):
        af.load_stats(maps)

    import safetensors.torch

    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"x": torch.ones(2)}, str(plain))
    with pytest.raises(StatsFileError, match="plain.safetensors: a safetensors file, but not an act_fast statistics file"):
        af.load_stats(plain)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda h: h["__metadata__"].__setitem__(FORMAT_NAME, "{not json"), "corrupt act_fast statistics metadata"),
        (lambda h: h["__metadata__"].__setitem__(FORMAT_NAME, json.dumps({**json.loads(h["__metadata__"][FORMAT_NAME]), "format_version": 99})),
         "statistics format version 99 is newer than this act_fast reads"),
        (lambda h: h["__metadata__"].__setitem__(FORMAT_NAME, json.dumps({**json.loads(h["__metadata__"][FORMAT_NAME]), "format": "other"})),
         "corrupt act_fast statistics metadata: format is 'other'"),
        (lambda h: h["__metadata__"].__setitem__(FORMAT_NAME, json.dumps({**json.loads(h["__metadata__"][FORMAT_NAME]), "sites": "abc"})),
         "'sites' must be a list"),
        (lambda h: h["__metadata__"].__setitem__(FORMAT_NAME, json.dumps(
            {**json.loads(h["__metadata__"][FORMAT_NAME]), "channels": {"model.layers.0.post_attention_layernorm": 7, "model.layers.1.mlp": 3}})),
         "holds 6 channels, metadata says 7"),
        (lambda h: h["__metadata__"].__setitem__(FORMAT_NAME, json.dumps(
            {**json.loads(h["__metadata__"][FORMAT_NAME]), "sites": ["model.layers.0.post_attention_layernorm"],
             "channels": {"model.layers.0.post_attention_layernorm": 6}})),
         r"tensors that belong to no listed site: \['model.layers.1.mlp/"),
        (lambda h: _rename(h, "model.layers.1.mlp/count", "model.layers.1.mlp/counts"), "site 'model.layers.1.mlp': .*missing"),
    ],
    ids=["json", "newer", "format", "sites-type", "channels", "stray", "renamed-tensor"],
)
def test_invalid_files_are_refused(tmp_path, edit, message):
    path = af.save_stats(make_stats(), tmp_path / "s.safetensors")
    _rewrite_header(path, edit)
    with pytest.raises(StatsFileError, match=message) as info:
        af.load_stats(path)
    assert str(path) in str(info.value)


def test_byte_flips_in_the_tensor_data_are_refused(tmp_path):
    """Every tensor of the state is covered: flipping the lowest or the highest byte of any element
    sampled from each tensor is refused, naming the file."""
    path = af.save_stats(make_stats(), tmp_path / "s.safetensors")
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    size = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "BOOL": 1, "U8": 1}
    flips = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        width = size[info["dtype"]]
        for element in sorted({0, (end - begin) // width // 2, (end - begin) // width - 1}):
            at = 8 + n + begin + element * width
            flips += [(key, at, 0x01), (key, at + width - 1, 0x40)]  # lowest and highest byte
    accepted = []
    for key, i, bit in flips:
        flipped = bytearray(raw)
        flipped[i] ^= bit
        path.write_bytes(bytes(flipped))
        try:
            af.load_stats(path)
            accepted.append((key, i))
        except StatsFileError as err:
            assert str(path) in str(err)
    assert not accepted, f"{len(accepted)} of {len(flips)} flipped bytes loaded: {accepted[:8]}"


def test_files_without_a_digest_still_load(tmp_path):
    path = af.save_stats(make_stats(), tmp_path / "s.safetensors")

    def drop_digest(h):
        meta = json.loads(h["__metadata__"][FORMAT_NAME])
        meta.pop("payload_sha256", None)
        h["__metadata__"][FORMAT_NAME] = json.dumps(meta)

    _rewrite_header(path, drop_digest)
    loaded = af.load_stats(path)
    assert torch.equal(loaded["model.layers.1.mlp"].samples, make_stats()["model.layers.1.mlp"].samples)
