"""User errors: one line with the cause, no traceback, exit status 2, and arguments checked before any
model is loaded (the model loaders are replaced by ones that fail the test if called)."""

import subprocess

import pytest
import torch

from act_fast.cli import models as cli_models
from act_fast.demo import models as demo_models
from cli_helpers import COOKING, cli_command, cli_env


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    for module, name in ((cli_models, "load_model"), (cli_models, "load_config"), (demo_models, "load_minilm"), (demo_models, "load_causal_lm")):
        monkeypatch.setattr(module, name, refuse)


def one_error_line(stderr: str, command: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith(f"act-fast {command}: error: "), lines[0]
    return lines[0]


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a CPU-only torch")


@pytest.mark.parametrize(
    "overrides, extra, message",
    [
        pytest.param({"--device": "cuda"}, (), "--device cuda: CUDA is not available", marks=NO_CUDA),
        ({"--device": "tpu9"}, (), "--device 'tpu9' is not a torch device"),
        ({"--sites": "attention"}, (), "--sites 'attention': unknown site preset; presets: "),
        ({"--data": "missing.txt"}, (), "no data file at missing.txt"),
        ({"--data": "folder.txt"}, (), "folder.txt is a directory"),
        ({"--data": "prompts.jsonl"}, (), "prompts.jsonl:1: no field 'text'"),
        ({"--out": "."}, (), "is a directory; give a file name"),
        ({}, ("--resume", "--overwrite"), "--resume and --overwrite exclude each other"),
    ],
)
def test_collect_checks_arguments_before_loading(act, no_model_loads, tmp_path, monkeypatch, overrides, extra, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder.txt").mkdir()
    (tmp_path / "prompts.jsonl").write_text('{"body": "a prompt"}\n')
    argv = {"--model": "some/model", "--data": str(COOKING), "--out": "s.safetensors", **overrides}
    rc, _, err = act("collect", *[item for pair in argv.items() for item in pair], *extra)
    assert rc == 2 and message in one_error_line(err, "collect")


@pytest.mark.parametrize("flag", ["--batch-size", "--max-length", "--limit"])
def test_collect_refuses_zero_sizes_at_parse_time(act, flag, capsys):
    with pytest.raises(SystemExit) as info:
        act("collect", "--model", "m", "--data", COOKING, "--out", "s.safetensors", flag, "0")
    assert info.value.code == 2 and "expected a positive integer, got 0" in capsys.readouterr().err


def test_missing_model_folder_and_not_a_model_folder(act, tmp_path):
    rc, _, err = act("collect", "--model", tmp_path / "nowhere", "--data", COOKING, "--out", tmp_path / "s.safetensors")
    assert rc == 2 and f"no model folder at {tmp_path / 'nowhere'}" in one_error_line(err, "collect")
    rc, _, err = act("generate", "--model", tmp_path, "--maps", tmp_path / "m.safetensors", "--prompt", "hi")
    assert rc == 2 and "no map file at" in err  # the map file is read first: it is smaller
    rc, _, err = act("fit", "--model", tmp_path, "--source", COOKING, "--target", COOKING, "--out", tmp_path / "o.safetensors")
    assert rc == 2 and f"{tmp_path} is not a model folder (no config.json)" in one_error_line(err, "fit")


@pytest.mark.parametrize(
    "args, message",
    [
        pytest.param(("--device", "cuda"), "--device cuda: CUDA is not available", marks=NO_CUDA),
        (("--support", "q_1_2"), "--support: unknown support 'q_1_2'"),
        (("--sites", "everything"), "--sites 'everything': unknown site preset"),
        (("--sites", "model.layers.0.mlp"), "the demo takes a site preset name"),
        (("--maps", "nothing.safetensors"), "no map file at nothing.safetensors"),
    ],
)
def test_demo_checks_arguments_before_loading(act, no_model_loads, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    rc, _, err = act("demo", "--no-plot", *args)
    assert rc == 2 and message in one_error_line(err, "demo")


def test_demo_batch_size_zero_is_refused_at_parse_time(act, capsys):
    with pytest.raises(SystemExit) as info:
        act("demo", "--batch-size", "0")
    assert info.value.code == 2 and "--batch-size: expected a positive integer, got 0" in capsys.readouterr().err


@NO_CUDA
@pytest.mark.parametrize("command", ["generate", "bench", "fit"])
def test_cuda_without_cuda_before_loading(act, no_model_loads, tmp_path, command):
    extra = {"generate": ("--maps", "m.safetensors", "--prompt", "x"), "bench": ("--maps", "m.safetensors"),
             "fit": ("--source", COOKING, "--target", COOKING, "--out", tmp_path / "o.safetensors")}[command]
    rc, _, err = act(command, "--model", "some/model", "--device", "cuda", *extra)
    assert rc == 2 and "CUDA is not available" in one_error_line(err, command)


@pytest.mark.slow
def test_console_errors_are_one_line_and_a_hub_model_offline_says_so(tmp_path):
    """As a user sees it: the console script in a fresh process, offline, with a hub name."""
    out = tmp_path / "s.safetensors"
    cmd = cli_command("collect", "--model", "act-fast-test/no-such-model", "--data", COOKING, "--out", out)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=cli_env(HF_HOME=str(tmp_path / "hf")))
    assert proc.returncode == 2
    line = one_error_line(proc.stderr, "collect")
    assert "cannot load model 'act-fast-test/no-such-model'" in line and "hub is unreachable" in line and "HF_HUB_OFFLINE=1" in line
    assert not out.exists() and proc.stdout == ""


def test_a_preset_the_models_family_lacks_is_refused_before_the_weights_load(act, tmp_path):
    from transformers import OPTConfig

    folder = tmp_path / "opt"  # a config alone: the check must not need the weights
    OPTConfig(hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2).save_pretrained(folder)
    rc, _, err = act("collect", "--model", folder, "--data", COOKING, "--out", tmp_path / "s.safetensors")
    assert rc == 2 and "--sites 'post_layernorm': no site presets for model type 'opt'; use a generic preset" in one_error_line(err, "collect")
    rc, _, err = act("fit", "--model", folder, "--source", COOKING, "--target", COOKING, "--sites", "generic:nothing", "--out", tmp_path / "m.safetensors")
    assert rc == 2 and "unknown site preset" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (("generate", "--model", "m", "--maps", "m.safetensors", "--strength", "0.5,,1"), "--strength: expected comma-separated numbers with no empty item, got '0.5,,1'"),
        (("generate", "--model", "m", "--maps", "m.safetensors", "--strength", "1,"), "no empty item"),
        (("bench", "--model", "m", "--maps", "m.safetensors", "--modes", "fold,,op"), "--modes: expected a comma-separated list with no empty item"),
        (("demo", "--held-out", "0"), "--held-out: expected a fraction in (0, 1), got 0"),
        (("demo", "--held-out", "1.5"), "--held-out: expected a fraction in (0, 1), got 1.5"),
        (("generate", "--model", "m"), "the following arguments are required: --maps"),
        (("collect", "--model", "m", "--data", "d.txt", "--out", "o.safetensors", "--batch-size", "x"), "--batch-size: expected a positive integer, got 'x'"),
        (("no-such-command",), "invalid choice: 'no-such-command'"),
        (("generate", "--model", "m", "--maps", "m.safetensors", "--strength-range", "1"), "--strength-range: expected two numbers LO,HI"),
        (("generate", "--model", "m", "--maps", "m.safetensors", "--strength-range", "2,1"), "--strength-range: expected LO <= HI, got '2,1'"),
    ],
)
def test_argument_errors_are_one_line(act, capsys, argv, message):
    """The README's promise: a user error is one line, argparse's own errors included (no usage block)."""
    with pytest.raises(SystemExit) as info:
        act(*argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert info.value.code == 2 and len(lines) == 1, err
    assert lines[0].startswith("act-fast") and message in lines[0], lines[0]


def test_generate_refuses_strengths_outside_the_range_before_loading(act, no_model_loads, tmp_path):
    from act_fast.maps import AffineMap, SteeringMaps

    maps = SteeringMaps({"a": AffineMap(torch.ones(2), torch.zeros(2))}).save(tmp_path / "m.safetensors")
    rc, _, err = act("generate", "--model", "some/model", "--maps", maps, "--prompt", "x", "--strength", "0.5,3", "--strength-range=-1,2")
    assert rc == 2 and "--strength 3 is outside --strength-range [-1, 2]" in one_error_line(err, "generate")


def test_inspect_plot_with_a_format_matplotlib_cannot_write_prints_nothing_else(act, tmp_path):
    pytest.importorskip("matplotlib")
    from act_fast.maps import AffineMap, SteeringMaps

    maps = SteeringMaps({"a": AffineMap(torch.ones(2), torch.zeros(2))}).save(tmp_path / "m.safetensors")
    rc, out, err = act("inspect", maps, "--plot", tmp_path / "plot.txt")
    assert rc == 2 and out == "" and not (tmp_path / "plot.txt").exists()
    assert "--plot" in one_error_line(err, "inspect") and "'.txt'" in err and ".png" in err
