"""benchmarks/gpu_check.sh: its plan runs end to end on CPU with ``--smoke`` (tests collected,
benchmarks at tiny shapes) and writes the report; a step past its limit is killed with its
children; without CUDA and without ``--smoke`` it refuses."""

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "OUT")}
    env["ACT_FAST_WHEELS"] = str(tmp_path / "no-wheels")
    env["PYTHON"] = sys.executable
    return env


def test_smoke_runs_the_whole_plan_and_writes_the_report(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke", "--out", str(out)],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "no carried wheels" in proc.stdout
    report = json.loads((out / "gpu_check.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == ["tests", "steer", "kernels", "decode_b1", "decode_b32"]
    assert {n: s["status"] for n, s in steps.items()} == dict.fromkeys(steps, "passed")
    for name in ("tests", "steer"):
        assert "needs CUDA" in steps[name]["note"] and "collected" in steps[name]["summary"], steps[name]
    meta = report["meta"]
    assert meta["smoke"] and not meta["cuda"] and meta["commit"] and meta["date"]
    bench = json.loads((out / "smoke-bench.json").read_text())
    assert {"copy", "transport", "norm", "stats", "decode_b1", "decode_b32"} <= set(bench["sections"])
    assert [e for sec in bench["sections"].values() for e in sec.get("errors", [])] == []
    measured = {row["what"] for row in report["headline"]}
    assert "device copy bandwidth" in measured and any(w.startswith("ChannelStats.update") for w in measured)
    assert any(w.startswith("steered decode") for w in measured) and any(w.startswith("per-request maps") for w in measured)
    md = (out / "gpu_check.md").read_text()
    for text in ("Smoke run", "| device |", "| date (UTC) |", "| commit |", "## Headline figures"):
        assert text in md
    assert "===== decode_b32: passed" in (out / "gpu_check.log").read_text()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["gpu_check.json", "gpu_check.log", "gpu_check.md", "smoke-bench.json", "smoke-bench.md"]
    )  # the device tool brings back at most 8 files


def test_a_step_past_its_limit_is_killed_with_its_children():
    step = gpu_check.Step("sleepy", "sleeps", 1, [sys.executable, "-c",
                          "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                          "print('started', flush=True); time.sleep(60)"])
    start = time.perf_counter()
    gpu_check.run_step(step, 2.0, io.StringIO())
    assert step.status == "timed out" and time.perf_counter() - start < 15
    assert step.output_tail == ["started"]


def test_budget_spent_leaves_steps_not_run(tmp_path):
    out = tmp_path / "out"
    code = gpu_check.main(["--smoke", "--out", str(out), "--budget", str(gpu_check.REPORT_RESERVE_S + 2), "--only", "kernels"])
    assert code == 1
    steps = {s["name"]: s for s in json.loads((out / "gpu_check.json").read_text())["steps"]}
    assert steps["kernels"]["status"] == "not run" and steps["kernels"]["note"] == "overall budget spent"
    assert steps["tests"]["status"] == "skipped"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_refuses_without_cuda_unless_smoke(tmp_path):
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
