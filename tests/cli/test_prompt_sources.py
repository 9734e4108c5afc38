"""Prompt sources: .txt, .jsonl, files and folders read with `datasets`, in source order, with errors
that name the file and line."""

import json
import subprocess
import sys

import pytest

from act_fast.prompts import PromptSourceError, batched, read_prompts, tokenize
from cli_helpers import COOKING, cli_command, cli_env


def sentences() -> list[str]:
    return [line.strip() for line in COOKING.read_text().splitlines() if line.strip()]


def test_txt_one_prompt_a_line_blank_lines_skipped(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("  first prompt \n\n\t\nsecond one\r\nthird\n")
    source = read_prompts(path)
    assert list(source) == ["first prompt", "second one", "third"] and source.count() == 3
    assert list(read_prompts(COOKING)) == sentences() and read_prompts(COOKING).kind == "txt"
    source.check()


def test_jsonl_text_field_or_named_field(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"text": s, "body": s.upper(), "n": i} for i, s in enumerate(sentences()[:5])]
    path.write_text("\n".join(json.dumps(r) for r in rows[:3]) + "\n\n" + "\n".join(json.dumps(r) for r in rows[3:]) + "\n")
    assert list(read_prompts(path)) == [r["text"] for r in rows]
    assert list(read_prompts(path, field="body")) == [r["body"] for r in rows]
    assert read_prompts(path).count() == 5
    assert read_prompts(path, field="body").describe() == f"{path} (field 'body')"


@pytest.mark.parametrize(
    "content, field, message",
    [
        ('{"text": "ok"}\n{"text": oops}\n', None, r"p.jsonl:2: not valid JSON"),
        ('{"text": "ok"}\n{"body": "x"}\n', None, r"p.jsonl:2: no field 'text'; fields: \['body'\] \(choose one with --field\)"),
        ('{"text": 3}\n', None, r"p.jsonl:1: field 'text' holds a int, expected a string"),
        ('["a"]\n', None, r"p.jsonl:1: expected a JSON object with a 'text' field, got list"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, content, field, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(PromptSourceError, match=message):
        list(read_prompts(path, field=field))


def test_check_fails_early_on_missing_empty_or_misused_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="no data file at .*nothing.txt"):
        read_prompts(tmp_path / "nothing.txt").check()
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(PromptSourceError, match="no prompts"):
        read_prompts(tmp_path / "blank.txt").check()
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(PromptSourceError, match="is a directory"):
        read_prompts(tmp_path / "dir.txt").check()
    with pytest.raises(PromptSourceError, match="no fields; --field applies to .jsonl files and datasets"):
        read_prompts(COOKING, field="text").check()
    with pytest.raises(PromptSourceError, match="no splits"):
        read_prompts(COOKING, split="test").check()


def test_datasets_files_and_saved_folders(tmp_path):
    datasets = pytest.importorskip("datasets")
    texts = sentences()[:12]
    csv = tmp_path / "p.csv"
    csv.write_text("id,body\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts)))
    assert list(read_prompts(csv, field="body")) == texts
    with pytest.raises(PromptSourceError, match=r"p.csv row 1 \(counted from 1 after the header\): no field 'text'; fields: \['body', 'id'\] \(choose one with --field\)"):
        list(read_prompts(csv))
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts[:8]}),
                          "test": datasets.Dataset.from_dict({"text": texts[8:]})}).save_to_disk(str(folder))
    assert list(read_prompts(folder)) == texts[:8] and read_prompts(folder).count() == 8
    assert list(read_prompts(folder, split="test")) == texts[8:]
    with pytest.raises(PromptSourceError, match="no split 'validation'; splits: \\['test', 'train'\\]"):
        list(read_prompts(folder, split="validation"))
    assert read_prompts(folder, split="test").describe() == f"{folder} (split 'test', field 'text')"


def test_missing_datasets_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(PromptSourceError, match=r"needs the 'datasets' package \(pip install datasets\)"):
        read_prompts("someone/some-dataset").check()


@pytest.mark.slow
def test_unreachable_hub_dataset_is_one_clear_error(tmp_path):
    """Offline (set before the hub libraries load, as a user would): one line, exit status 2, before
    any model is loaded (the model folder does not even exist)."""
    pytest.importorskip("datasets")
    cmd = cli_command("collect", "--model", tmp_path / "no-model", "--data", "act-fast-test/no-such-set", "--out", tmp_path / "s.safetensors")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=cli_env(HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf")))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("act-fast collect: error: cannot load dataset 'act-fast-test/no-such-set' split 'train'")
    assert "offline" in lines[0]


def test_batched_and_tokenize(tiny_model):
    from transformers import AutoTokenizer

    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError, match="batch size must be at least 1"):
        next(batched([], 0))
    tok = AutoTokenizer.from_pretrained(tiny_model)
    batch = tokenize(tok, sentences()[:3], max_length=6)
    assert set(batch) == {"input_ids", "attention_mask"} and batch["input_ids"].shape == (3, 6)
    full = tokenize(tok, sentences()[:3], max_length=None)
    assert full["input_ids"].shape[1] > 6 and bool((full["attention_mask"].sum(1) > 6).all())
