"""``act-fast collect`` on a tiny Llama folder and real sentences: the file holds what the library
computes, checkpoints and --resume (also after SIGKILL), torchrun sharding, refusals."""

import json
import signal
import subprocess
import time

import pytest

import act_fast as af
from act_fast.prompts import batched, model_max_length, read_prompts, tokenize
from act_fast.stats.io import stats_metadata
from cli_helpers import COOKING, FOOTBALL, assert_same_stats, cli_command, cli_env, run, torchrun_command


def library_stats(model_dir, data, batch_size: int, pooling: str = "mean", sites: str = "post_layernorm", sort: bool = False):
    """What af.collect gives over the same batches, in one call (``sort``: prompts sorted by length,
    one window holding them all)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    max_length = model_max_length(tok, model)
    prompts = list(read_prompts(data))
    batches = [tokenize(tok, b, max_length) for b in batched(sorted(prompts, key=len) if sort else prompts, batch_size)]
    return af.collect(model, batches=batches, sites=af.sites(model, sites), pooling=pooling, progress=False, stop_early=True), batches


def collect_record(path) -> dict:
    return stats_metadata(path)["metadata"]["collect"]


def test_collect_writes_what_the_library_computes(act, tiny_model, tmp_path):
    out = tmp_path / "cooking.safetensors"
    rc, stdout, stderr = act("collect", "--model", tiny_model, "--data", COOKING, "--out", out, "--batch-size", 16, "--checkpoint-every", 3,
                             "--sort-window", 1)
    assert rc == 0, stderr
    expected, batches = library_stats(tiny_model, COOKING, 16)
    assert_same_stats(af.load_stats(out), expected, moments_exact=True)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    record = collect_record(out)
    assert record["complete"] and record["prompts"] == 168 and record["rows"] == 168 and record["tokens"] == tokens
    assert record["batches"] == 11 and record["settings"]["world_size"] == 1 and record["settings"]["batch_size"] == 16
    meta = stats_metadata(out)
    assert meta["metadata"]["pooling"] == "mean" and meta["model_type"] == "llama" and meta["model_fingerprint"]
    assert f"collected 168 prompts (168 rows, {tokens:,} tokens) at 2 sites" in stdout and "prompts/s" in stdout and "tokens/s" in stdout
    assert f"wrote {out} (" in stdout and " KB)" in stdout or " MB)" in stdout
    assert stderr == ""  # not a terminal: no progress bar unless asked


def test_pooling_none_counts_every_token_and_limit_and_jsonl_field(act, tiny_model, tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"id": i, "body": line}) + "\n" for i, line in enumerate(FOOTBALL.read_text().splitlines())))
    out = tmp_path / "tokens.safetensors"
    rc, stdout, stderr = act("collect", "--model", tiny_model, "--data", data, "--field", "body", "--out", out, "--pooling", "none",
                             "--limit", 20, "--batch-size", 8, "--sites", "model.layers.1.mlp")
    assert rc == 0, stderr
    record = collect_record(out)
    assert record["prompts"] == 20 and record["rows"] == record["tokens"] > 20
    stats = af.load_stats(out)
    assert list(stats) == ["model.layers.1.mlp"] and int(stats["model.layers.1.mlp"].count[0]) == record["tokens"]


def test_progress_bar_when_asked(act, tiny_model, tmp_path):
    rc, _, stderr = act("collect", "--model", tiny_model, "--data", COOKING, "--out", tmp_path / "s.safetensors", "--limit", 32,
                        "--batch-size", 16, "--progress")
    assert rc == 0 and "collect" in stderr and "prompts" in stderr and "tok/s" in stderr


def test_resume_continues_and_refuses_other_settings_or_data(act, tiny_model, tmp_path):
    out = tmp_path / "s.safetensors"
    # Source order (--sort-window 1): a resumed run with a larger --limit equals one run with that limit
    # (sorted windows cut by the old limit would differ from the new run's windows).
    common = ("collect", "--model", tiny_model, "--out", out, "--batch-size", 16, "--sort-window", 1)
    assert act(*common, "--data", COOKING, "--limit", 48)[0] == 0
    # Existing output: refused without --resume / --overwrite, and the two exclude each other.
    rc, _, err = act(*common, "--data", COOKING, "--limit", 48)
    assert rc == 2 and f"{out} exists; pass --resume to continue the run that wrote it, or --overwrite" in err
    assert act(*common, "--data", COOKING, "--limit", 48, "--resume", "--overwrite")[0] == 2
    # A complete file has nothing left.
    rc, stdout, _ = act(*common, "--data", COOKING, "--limit", 48, "--resume")
    assert rc == 0 and "nothing left to collect (48 prompts" in stdout
    # Other settings or other data are refused, naming what differs.
    rc, _, err = act("collect", "--model", tiny_model, "--out", out, "--batch-size", 8, "--data", COOKING, "--limit", 48, "--resume")
    assert rc == 2 and "settings differ from the run that wrote it (--batch-size 16 → 8; --sort-window 1 → 16)" in err
    rc, _, err = act(*common, "--data", FOOTBALL, "--limit", 48, "--resume")
    assert rc == 2 and "the first 48 prompts of" in err and "differ from those the checkpoint consumed" in err
    # A larger limit continues where the file stopped: equal to one uninterrupted run.
    assert act(*common, "--data", COOKING, "--limit", 96, "--resume")[0] == 0
    whole = tmp_path / "whole.safetensors"
    assert act("collect", "--model", tiny_model, "--out", whole, "--batch-size", 16, "--data", COOKING, "--limit", 96, "--sort-window", 1)[0] == 0
    assert_same_stats(af.load_stats(out), af.load_stats(whole), moments_exact=True)
    assert collect_record(out)["prompts"] == 96 and collect_record(out)["data_sha256"] == collect_record(whole)["data_sha256"]
    # --overwrite starts again.
    assert act(*common, "--data", COOKING, "--limit", 16, "--overwrite")[0] == 0 and collect_record(out)["prompts"] == 16


def test_resume_refuses_another_world_size(act, tiny_model, tmp_path):
    out = tmp_path / "s.safetensors"
    args = ("collect", "--model", tiny_model, "--out", out, "--batch-size", 16, "--data", COOKING, "--limit", 32)
    assert act(*args)[0] == 0
    meta = stats_metadata(out)["metadata"]
    meta["collect"]["settings"]["world_size"] = 2  # as written by `torchrun --nproc-per-node 2`
    meta["collect"]["complete"] = False
    af.save_stats(af.load_stats(out), out, metadata=meta)
    rc, _, err = act(*args, "--resume")
    assert rc == 2 and "world size (torchrun processes) 2 → 1" in err


def _wait_for_checkpoint(proc: subprocess.Popen, out, at_least: int, timeout: float = 300) -> dict:
    """Polls the output file until a checkpoint holds ``at_least`` prompts; returns its record."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.exists():
            record = collect_record(out)
            if record["prompts"] >= at_least:
                return record
        assert proc.poll() is None, f"collect ended before a checkpoint of {at_least} prompts: {proc.communicate()}"
        time.sleep(0.01)
    raise AssertionError("no checkpoint in time")


def _kill_after(cmd: list[str], out, at_least: int) -> dict:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cli_env())
    try:
        record = _wait_for_checkpoint(proc, out, at_least)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    record = collect_record(out)  # the file is readable right after the kill, whatever it was doing
    af.load_stats(out)
    assert not record["complete"], "the run finished before it was killed; use more data"
    return record


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run_bit_for_bit(tiny_model, both_topics, tmp_path):
    args = ("--model", tiny_model, "--data", both_topics, "--batch-size", 4, "--checkpoint-every", 1)
    whole = tmp_path / "whole.safetensors"
    run(cli_command("collect", *args[:-2], "--checkpoint-every", 0, "--out", whole))  # no checkpoints at all
    out = tmp_path / "killed.safetensors"
    first = _kill_after(cli_command("collect", *args, "--out", out), out, 8)
    second = _kill_after(cli_command("collect", *args, "--out", out, "--resume"), out, first["prompts"] + 100)
    assert second["prompts"] > first["prompts"]
    stdout = run(cli_command("collect", *args, "--out", out, "--resume")).stdout
    assert f"collected {332 - second['prompts']:,} prompts after the {second['prompts']:,} of the checkpoint" in stdout
    assert_same_stats(af.load_stats(out), af.load_stats(whole), moments_exact=True)
    a, b = collect_record(out), collect_record(whole)
    assert (a["prompts"], a["rows"], a["tokens"], a["data_sha256"], a["complete"]) == (b["prompts"], b["rows"], b["tokens"], b["data_sha256"], True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed.safetensors", "whole.safetensors"]  # no temporaries left


@pytest.mark.slow
def test_two_torchrun_processes_equal_one_process(tiny_model, both_topics, tmp_path):
    args = ("collect", "--model", tiny_model, "--data", both_topics, "--batch-size", 8, "--checkpoint-every", 5)
    single, double = tmp_path / "single.safetensors", tmp_path / "double.safetensors"
    run(cli_command(*args, "--out", single))
    stdout = run(torchrun_command(2, *args, "--out", double)).stdout
    assert "on 2 processes" in stdout and stdout.count("collected ") == 1  # rank 0 reports
    # Counts, histograms, extrema, NaN/Inf counts, calibration: equal; mean/M2 up to the merge order.
    assert_same_stats(af.load_stats(double), af.load_stats(single), moments_exact=False)
    a, b = collect_record(double), collect_record(single)
    assert (a["prompts"], a["rows"], a["tokens"], a["data_sha256"]) == (b["prompts"], b["rows"], b["tokens"], b["data_sha256"])
    assert a["settings"]["world_size"] == 2


@pytest.mark.slow
def test_two_processes_killed_and_resumed_equal_one_process(act, tiny_model, both_topics, tmp_path):
    args = ("collect", "--model", tiny_model, "--data", both_topics, "--batch-size", 4, "--checkpoint-every", 1)
    single, out = tmp_path / "single.safetensors", tmp_path / "double.safetensors"
    run(cli_command(*args[:-2], "--checkpoint-every", 0, "--out", single))
    _kill_after(torchrun_command(2, *args, "--out", out), out, 40)
    # A checkpoint of 2 processes is not resumed by 1.
    rc, _, err = act(*args, "--out", out, "--resume")
    assert rc == 2 and "world size (torchrun processes) 2 → 1" in err
    run(torchrun_command(2, *args, "--out", out, "--resume"))
    assert_same_stats(af.load_stats(out), af.load_stats(single), moments_exact=False)
    assert collect_record(out)["complete"] and collect_record(out)["tokens"] == collect_record(single)["tokens"]


def test_length_sorted_batches_pad_less_and_equal_the_library_on_sorted_prompts(act, tiny_model, tmp_path):
    """Issue 23 item 4: prompts sorted by length within windows; the summary states tokens/s and the
    padding fraction; the statistics are af.collect's over the same sorted batches."""
    sorted_out, plain_out = tmp_path / "sorted.safetensors", tmp_path / "plain.safetensors"
    rc, stdout, stderr = act("collect", "--model", tiny_model, "--data", COOKING, "--out", sorted_out, "--batch-size", 16,
                             "--sort-window", 64)
    assert rc == 0, stderr
    expected, batches = library_stats(tiny_model, COOKING, 16, sort=True)
    assert_same_stats(af.load_stats(sorted_out), expected, moments_exact=True)
    padding = 100 * (1 - sum(int(b["attention_mask"].sum()) for b in batches) / sum(b["attention_mask"].numel() for b in batches))
    assert f"padding {padding:.1f} % of the batches' token slots (sorted by length in windows of 64 batches)" in stdout
    assert "tokens/s" in stdout
    rc, plain_stdout, _ = act("collect", "--model", tiny_model, "--data", COOKING, "--out", plain_out, "--batch-size", 16, "--sort-window", 1)
    plain = float(plain_stdout.split("padding ")[1].split(" %")[0])
    assert rc == 0 and plain > padding and "(source order)" in plain_stdout
    assert collect_record(sorted_out)["data_sha256"] == collect_record(plain_out)["data_sha256"]  # the same prompts consumed


def test_interrupted_inside_a_window_resumes_to_the_uninterrupted_result(act, tiny_model, tmp_path, monkeypatch):
    """Deterministic and resumable: a run stopped after some batches of a sorted window continues from
    the batches it had not done, and ends equal (bit for bit) to a run never stopped."""
    import act_fast.cli.collect as collect_cli

    args = ("collect", "--model", tiny_model, "--data", COOKING, "--batch-size", 8, "--sort-window", 8, "--checkpoint-every", 1)
    whole, out = tmp_path / "whole.safetensors", tmp_path / "out.safetensors"
    assert act(*args, "--out", whole)[0] == 0

    class Stop(Exception):
        pass

    real = af.collect
    calls = {"n": 0}

    def stopping(*a, **k):
        calls["n"] += 1
        if calls["n"] > 11:  # 11 batches done: one window of 8 and 3 batches of the second
            raise Stop
        return real(*a, **k)

    monkeypatch.setattr(af, "collect", stopping)
    with pytest.raises(Stop):
        act(*args, "--out", out)
    monkeypatch.setattr(af, "collect", real)
    record = collect_record(out)
    assert (record["prompts"], record["batches"], record["window_batches"], record["complete"]) == (64, 11, 3, False)
    assert act(*args, "--out", out, "--resume")[0] == 0
    assert_same_stats(af.load_stats(out), af.load_stats(whole), moments_exact=True)
    a, b = collect_record(out), collect_record(whole)
    assert (a["prompts"], a["batches"], a["rows"], a["tokens"], a["data_sha256"], a["complete"]) == (
        b["prompts"], b["batches"], b["rows"], b["tokens"], b["data_sha256"], True)


def test_length_sorted_batches_are_a_function_of_data_and_settings():
    from act_fast.cli.collect import length_sorted_batches

    prompts = ["ccc", "a", "bb", "dddd", "e", "ff", "g"]
    batches = list(length_sorted_batches(iter(prompts), 2, 2))
    assert [b for b, _ in batches] == [["a", "bb"], ["ccc", "dddd"], ["e", "g"], ["ff"]]
    assert [w for _, w in batches] == [None, ["ccc", "a", "bb", "dddd"], None, ["e", "ff", "g"]]
    assert [b for b, _ in length_sorted_batches(iter(prompts), 2, 2, skip=1)] == [["ccc", "dddd"], ["e", "g"], ["ff"]]
    assert [b for b, _ in length_sorted_batches(iter(prompts), 3, 1)] == [["ccc", "a", "bb"], ["dddd", "e", "ff"], ["g"]]
