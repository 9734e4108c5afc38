"""``act-fast generate``, ``inspect`` and ``bench`` on a tiny Llama folder with maps fitted from real
sentences."""

import json
import sys

import pytest
import torch

import act_fast as af
from act_fast.maps import AffineMap, SteeringMaps
from cli_helpers import COOKING, FOOTBALL

PROMPTS = ("The best way to cook rice is", "In the last minute of the match")


@pytest.fixture(scope="module")
def maps_file(tiny_model, tmp_path_factory):
    """Linear-AcT maps, cooking → football, on the layernorm sites (with a support)."""
    from act_fast.cli import main

    path = tmp_path_factory.mktemp("maps") / "maps.safetensors"
    args = ["fit", "--model", str(tiny_model), "--source", str(COOKING), "--target", str(FOOTBALL), "--sites", "layernorm",
            "--limit", 48, "--batch-size", 16, "--out", str(path)]
    assert main([str(a) for a in args]) == 0
    return path


def test_generate_unsteered_and_each_strength_side_by_side(act, tiny_model, maps_file):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rc, stdout, stderr = act("generate", "--model", tiny_model, "--maps", maps_file, "--strength", "0,1", "--prompt", PROMPTS[0],
                             "--prompt", PROMPTS[1], "--max-new-tokens", 6, "--strength-range", "0,1")
    assert rc == 0, stderr
    lines = stdout.splitlines()
    blocks = {label: [line.split(" | ", 1)[1] for line in lines if line.strip().startswith(label + " |")] for label in ("unsteered", "λ=0.00", "λ=1.00")}
    assert all(len(texts) == 2 for texts in blocks.values())
    for texts in blocks.values():  # every line starts with its prompt
        assert texts[0].startswith(PROMPTS[0]) and texts[1].startswith(PROMPTS[1])
    assert blocks["λ=0.00"] == blocks["unsteered"]
    # The unsteered continuation is the model's own greedy one.
    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    enc = tok([PROMPTS[0]], return_tensors="pt")
    ids = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert blocks["unsteered"][0] == PROMPTS[0] + tok.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).replace("\n", " ⏎ ")


def test_generate_refuses_maps_of_another_model(act, tiny_model, maps_file, tmp_path):
    gpt2 = SteeringMaps({"transformer.h.0.ln_1": AffineMap(torch.ones(64), torch.zeros(64))}, model_type="gpt2").save(tmp_path / "gpt2.safetensors")
    rc, _, err = act("generate", "--model", tiny_model, "--maps", gpt2, "--prompt", "Hello")
    assert rc == 2 and f"{gpt2} holds maps for a 'gpt2' model; this model is 'llama'" in err
    maps = af.load_maps(maps_file)
    other = SteeringMaps(dict(maps.maps), method=maps.method, model_type="llama", model_fingerprint="0" * 64).save(tmp_path / "other.safetensors")
    rc, _, err = act("generate", "--model", tiny_model, "--maps", other, "--prompt", "Hello")
    assert rc == 2 and "fitted on another llama model" in err and "--allow-model-mismatch" in err
    rc, _, err = act("generate", "--model", tiny_model, "--maps", other, "--prompt", "Hello", "--allow-model-mismatch", "--max-new-tokens", 2)
    assert rc == 0, err
    wide = SteeringMaps({"model.layers.0.input_layernorm": AffineMap(torch.ones(32), torch.zeros(32))}, model_type="llama").save(tmp_path / "w.safetensors")
    rc, _, err = act("generate", "--model", tiny_model, "--maps", wide, "--prompt", "Hello")
    assert rc == 2 and "map has 32 channels, the module outputs 64" in err and err.count("\n") == 1
    assert act("generate", "--model", tiny_model, "--maps", maps_file)[0] == 2


def test_inspect_prints_a_table_and_writes_a_png(act, maps_file, tmp_path):
    png = tmp_path / "plots" / "maps.png"
    rc, stdout, stderr = act("inspect", maps_file, "--plot", png)
    assert rc == 0, stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    maps = af.load_maps(maps_file)
    assert f"{maps_file}: 4 sites, 256 channels" in stdout and "method linear_act, support q_0_100, pooling mean; model llama" in stdout
    rows = {line.split()[0]: line.split() for line in stdout.splitlines() if line.startswith("model.layers.")}
    assert list(rows) == list(maps)
    for site, m in maps.items():
        assert rows[site][1] == "64"
        assert float(rows[site][3]) == pytest.approx((m.weight.double() - 1).abs().mean().item(), rel=1e-3)
        assert float(rows[site][5]) == pytest.approx((m.hi.double() - m.lo.double()).mean().item(), rel=1e-3)


def test_inspect_a_statistics_file_and_refusals(act, tiny_model, maps_file, tmp_path, monkeypatch):
    stats = tmp_path / "s.safetensors"
    assert act("collect", "--model", tiny_model, "--data", COOKING, "--out", stats, "--limit", 24, "--checkpoint-every", 1, "--batch-size", 8)[0] == 0
    rc, stdout, _ = act("inspect", stats)
    assert rc == 0 and "statistics of 2 sites; model llama" in stdout and "24 prompts" in stdout and "complete" in stdout
    assert stdout.count("model.layers.") == 2
    rc, _, err = act("inspect", stats, "--plot", tmp_path / "x.png")
    assert rc == 2 and "--plot draws map files" in err
    rc, _, err = act("inspect", COOKING)
    assert rc == 2 and "not a readable safetensors file" in err
    rc, _, err = act("inspect", tmp_path / "none.safetensors")
    assert rc == 2 and "no map or statistics file at" in err
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rc, _, err = act("inspect", maps_file, "--plot", tmp_path / "x.png")
    assert rc == 2 and "inspect --plot needs matplotlib: pip install matplotlib" in err and not (tmp_path / "x.png").exists()


def test_bench_times_unsteered_and_every_mode(act, tiny_model, maps_file, tmp_path):
    out = tmp_path / "bench.json"
    rc, stdout, stderr = act("bench", "--model", tiny_model, "--maps", maps_file, "--prompt-length", 8, "--new-tokens", 2, "--rounds", 2,
                             "--warmup", 0, "--json", out)
    assert rc == 0, stderr
    rows = {r["config"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["unsteered", "auto", "fold", "fused", "op"]
    assert "the map has a support" in rows["fold"]["error"]  # maps with a support cannot be folded
    for name in ("unsteered", "auto", "fused", "op"):
        assert rows[name]["error"] is None and rows[name]["prefill_tokens_per_s"] > 0 and rows[name]["decode_tokens_per_s"] > 0
        assert len(rows[name]["prefill"]["times_ms"]) == 2 and rows[name]["decode"]["spread"] is not None  # one per round
    assert rows["unsteered"]["decode_vs_unsteered"] is None and rows["op"]["decode_vs_unsteered"]["ratio"] > 0
    assert rows["op"]["modes"] == {"op": 4} and rows["fused"]["modes"] == {"fused": 4}
    table = [line.split() for line in stdout.splitlines()]
    header = next(i for i, cells in enumerate(table) if cells[:1] == ["config"])
    assert table[header][:4] == ["config", "prefill", "tok/s", "±"]
    assert table[header + 5][0] == "op" and float(table[header + 5][1].replace(",", "")) > 0 and table[header + 5][2].endswith("%")
    assert "interquartile range / median" in stdout
    rc, _, err = act("bench", "--model", tiny_model, "--maps", maps_file, "--modes", "fast")
    assert rc == 2 and "--modes: unknown ['fast']" in err
    rc, _, err = act("bench", "--model", tiny_model, "--maps", maps_file, "--prompt-length", 250, "--new-tokens", 10)
    assert rc == 2 and "exceed the model's 256 positions" in err


def test_plot_labels_keep_what_tells_sites_apart():
    from act_fast.cli.summary import short_labels

    assert short_labels(["model.layers.3.post_attention_layernorm", "model.layers.3.input_layernorm", "model.norm"]) == [
        "3.post_attention_layernorm", "3.input_layernorm", "model.norm"]
    bert = ["encoder.layer.0.attention.output.LayerNorm", "encoder.layer.0.output.LayerNorm"]
    assert short_labels(bert) == ["0.attention.output.LayerNorm", "0.output.LayerNorm"]
    clash = ["a.0.norm", "b.0.norm"]  # the same short label: full names
    assert short_labels(clash) == clash
