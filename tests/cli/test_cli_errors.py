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
        (("--held-out", "1.5"), "held_out must be a fraction in (0, 1)"),
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
