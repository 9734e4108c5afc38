"""``act-fast fit`` from statistics files (no model) and from text (af.fit / af.fit_lineas): the maps
equal what the library computes; per-site summary; refusals."""

import pytest
import torch

import act_fast as af
from act_fast.prompts import batched, model_max_length, read_prompts, tokenize
from act_fast.stats.io import stats_metadata
from cli_helpers import COOKING, FOOTBALL


@pytest.fixture(scope="module")
def topic_stats(tiny_model, tmp_path_factory):
    """Statistics files of both topics (act-fast collect, post_layernorm sites, mean pooling)."""
    from act_fast.cli import main

    folder = tmp_path_factory.mktemp("stats")
    paths = {}
    for name, data in (("cooking", COOKING), ("football", FOOTBALL)):
        paths[name] = folder / f"{name}.safetensors"
        assert main(["collect", "--model", str(tiny_model), "--data", str(data), "--out", str(paths[name]), "--batch-size", "32"]) == 0
    return paths


def assert_same_maps(a, b) -> None:
    assert list(a) == list(b)
    for site in a:
        for field in ("weight", "bias", "lo", "hi"):
            x, y = getattr(a[site], field), getattr(b[site], field)
            assert (x is None) == (y is None) and (x is None or torch.equal(x, y)), (site, field)


def test_fit_from_statistics_files_equals_fit_map(act, topic_stats, tmp_path):
    out = tmp_path / "maps.safetensors"
    rc, stdout, stderr = act("fit", "--source-stats", topic_stats["cooking"], "--target-stats", topic_stats["football"], "--out", out)
    assert rc == 0, stderr
    maps = af.load_maps(out)
    src, tgt = af.load_stats(topic_stats["cooking"]), af.load_stats(topic_stats["football"])
    expected = {site: af.fit_map(src[site], tgt[site], method="linear_act", support="q_0_100") for site in src}
    assert_same_maps(maps, expected)
    meta = maps.metadata()
    assert (meta["method"], meta["support"], meta["pooling"], meta["model_type"]) == ("linear_act", "q_0_100", "mean", "llama")
    assert meta["model_fingerprint"] == stats_metadata(topic_stats["cooking"])["model_fingerprint"]
    assert "linear_act maps, support q_0_100, pooling mean, 2 sites (llama):" in stdout
    header = next(line for line in stdout.splitlines() if line.startswith("site"))
    assert header.split() == ["site", "channels", "moved", "mean", "|w−1|", "mean", "|b|", "support", "width"]
    assert f"wrote {out}" in stdout


def test_fit_from_statistics_method_support_and_site_choice(act, topic_stats, tmp_path):
    stats = ("--source-stats", topic_stats["cooking"], "--target-stats", topic_stats["football"])
    out = tmp_path / "m.safetensors"
    assert act("fit", *stats, "--method", "mean_diff", "--out", out)[0] == 0
    maps = af.load_maps(out)
    assert maps.support == "q_all" and all(m.lo is None for m in maps.values())  # a vector add is never masked
    site = list(maps)[1]
    assert act("fit", *stats, "--method", "gaussian_act", "--support", "0.05,0.95", "--sites", site, "--out", out)[0] == 0
    maps = af.load_maps(out)
    assert list(maps) == [site] and maps.support == "q_5_95" and maps.method == "gaussian_act"


def test_fit_from_text_equals_af_fit(act, tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "maps.safetensors"
    rc, stdout, stderr = act("fit", "--model", tiny_model, "--source", COOKING, "--target", FOOTBALL, "--limit", 40,
                             "--batch-size", 16, "--out", out)
    assert rc == 0, stderr
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    side = lambda path: [tokenize(tok, b, model_max_length(tok, model)) for b in batched(list(read_prompts(path))[:40], 16)]  # noqa: E731
    expected = af.fit(model, source_batches=side(COOKING), target_batches=side(FOOTBALL), sites=af.sites(model, "post_layernorm"),
                      method="linear_act", support="q_0_100", incremental=True, progress=False)
    assert_same_maps(af.load_maps(out), expected)
    assert "fitting linear_act on 2 sites" in stdout and "from 40 source and 40 target prompts" in stdout
    assert "incremental fit layer by layer:" in stdout and "bytes kept per prompt token" in stdout
    # Above --cache-budget the kept activations go to disk; the maps stay the same.
    spilled = tmp_path / "spilled.safetensors"
    rc, stdout, stderr = act("fit", "--model", tiny_model, "--source", COOKING, "--target", FOOTBALL, "--limit", 40,
                             "--batch-size", 16, "--cache-budget", "1K", "--out", spilled)
    assert rc == 0, stderr
    assert "in memory up to 1.0 KB, the rest in temporary files" in stdout
    assert_same_maps(af.load_maps(spilled), expected)


@pytest.mark.parametrize("text,expected", [("0", 0), ("500", 500), ("2K", 2000), ("1.5M", 1_500_000), ("3g", 3 * 10**9), ("4GB", 4 * 10**9)])
def test_cache_budget_parses_byte_counts(text, expected):
    from act_fast.cli.fit import byte_count

    assert byte_count(text) == expected


@pytest.mark.parametrize("text", ["-1", "lots", "nanM", ""])
def test_cache_budget_refuses_what_is_not_a_byte_count(text):
    import argparse

    from act_fast.cli.fit import byte_count

    with pytest.raises(argparse.ArgumentTypeError, match="byte count"):
        byte_count(text)


def test_fit_lineas_from_text(act, tiny_model, tmp_path):
    out = tmp_path / "lineas.safetensors"
    rc, stdout, stderr = act("fit", "--model", tiny_model, "--source", COOKING, "--target", FOOTBALL, "--limit", 16, "--method", "lineas",
                             "--steps", 3, "--lr", 0.05, "--out", out)
    assert rc == 0, stderr
    maps = af.load_maps(out)
    assert maps.method == "lineas" and all(m.lo is None for m in maps.values())
    assert any(not torch.equal(m.weight, torch.ones_like(m.weight)) for m in maps.values())  # 3 steps moved it


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "give either --model with --source and --target"),
        (("--model", "m", "--source-stats", "s"), "give either --model"),
        (("--model", "m", "--source", "a"), "fitting from text needs --target as well"),
        (("--source-stats", "s"), "needs both --source-stats and --target-stats"),
        (("--model", "m", "--source", "a", "--target", "b", "--method", "lineas", "--support", "q_all"), "LinEAS maps have no support"),
        (("--model", "m", "--source", "a", "--target", "b", "--method", "lineas", "--independent"), "LinEAS fits all sites jointly"),
        (("--model", "m", "--source", "a", "--target", "b", "--support", "q_3_97"), "--support: unknown support 'q_3_97'"),
        (("--model", "m", "--source", "a", "--target", "b", "--sites", "everything"), "--sites 'everything': unknown site preset"),
        (("--model", "m", "--source", "nothing.txt", "--target", "b"), "no data file at nothing.txt"),
    ],
)
def test_refusals_before_any_model_loads(act, args, message, tmp_path):
    rc, stdout, stderr = act("fit", *args, "--out", tmp_path / "m.safetensors")
    assert rc == 2 and stderr.startswith("act-fast fit: error: ") and message in stderr and stderr.count("\n") == 1


def test_statistics_files_that_do_not_go_together(act, topic_stats, tiny_model, tmp_path):
    other = tmp_path / "last.safetensors"
    assert act("collect", "--model", tiny_model, "--data", FOOTBALL, "--out", other, "--pooling", "last", "--limit", 16)[0] == 0
    rc, _, err = act("fit", "--source-stats", topic_stats["cooking"], "--target-stats", other, "--out", tmp_path / "m.safetensors")
    assert rc == 2 and "was pooled 'mean'" in err and "'last'" in err
    meta = stats_metadata(other)
    af.save_stats(af.load_stats(other), other, metadata={**meta["metadata"], "pooling": "mean", "model_type": "llama", "model_fingerprint": "f" * 64})
    rc, _, err = act("fit", "--source-stats", topic_stats["cooking"], "--target-stats", other, "--out", tmp_path / "m.safetensors")
    assert rc == 2 and "come from different models" in err
    rc, _, err = act("fit", "--source-stats", topic_stats["cooking"], "--target-stats", topic_stats["football"], "--sites", "post_layernorm",
                     "--out", tmp_path / "m.safetensors")
    assert rc == 2 and "a preset needs a model" in err
    rc, _, err = act("fit", "--source-stats", topic_stats["cooking"], "--target-stats", COOKING, "--out", tmp_path / "m.safetensors")
    assert rc == 2 and "not a readable safetensors file" in err
