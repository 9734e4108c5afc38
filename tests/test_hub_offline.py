"""A hub model name while the hub is unreachable fails at once (not after transformers' ~60 s of
retries), and a cached one loads from the cache only (issue 21 item 12)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from act_fast import hub

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: connection refused at once
REPO = Path(__file__).resolve().parents[1]


def test_unreachable_and_not_cached_fails_at_once(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", UNREACHABLE)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(hub.HubUnreachable, match=r"hub is unreachable \(no connection to 127.0.0.1:9.*'org/no-such-model' is not in the local cache"):
        hub.hub_kwargs("org/no-such-model")
    monkeypatch.setattr(hub, "_cached", lambda name: True)
    assert hub.hub_kwargs("org/no-such-model") == {"local_files_only": True}
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub.hub_kwargs("org/no-such-model") == {"local_files_only": True}


def test_local_folders_are_not_the_hubs(tmp_path):
    assert hub.hub_kwargs(str(tmp_path)) == {} and hub.hub_kwargs("./nowhere") == {}


@pytest.mark.slow
@pytest.mark.parametrize("command", [("demo", "--no-plot"), ("collect", "--data", str(REPO / "act_fast" / "data" / "cooking.txt"))])
def test_the_cli_fails_at_once_without_the_hub(tmp_path, command):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=UNREACHABLE, HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(REPO))
    start = time.perf_counter()
    out = ("--out", str(tmp_path / "out")) if command[0] == "demo" else ("--out", str(tmp_path / "s.safetensors"))
    cmd = [sys.executable, "-m", "act_fast.cli", command[0], "--model", "org/no-such-model", *command[1:], *out]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    seconds = time.perf_counter() - start
    assert proc.returncode == 2 and "hub is unreachable" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert seconds < 25, f"{seconds:.0f} s before the error"  # imports only; transformers' retries took 30-60 s
