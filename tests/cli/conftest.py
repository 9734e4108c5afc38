"""Fixtures of the command-line tests: a tiny Llama folder with a locally trained tokenizer (no
downloads), the real sentence files shipped in act_fast/data, and ``act-fast`` run in this process
(helpers for subprocesses and torchrun are in cli_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from checkpoints import tiny_llama_checkpoint
from cli_helpers import COOKING, FOOTBALL


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer Llama (hidden 64) and its BPE tokenizer saved to a folder."""
    return tiny_llama_checkpoint(tmp_path_factory.mktemp("model") / "tiny-llama")


@pytest.fixture(scope="session")
def both_topics(tmp_path_factory) -> Path:
    """Cooking then football sentences, one a line (332 prompts)."""
    path = tmp_path_factory.mktemp("data") / "topics.txt"
    path.write_text(COOKING.read_text() + FOOTBALL.read_text())
    return path


@pytest.fixture
def act(capsys):
    """Runs ``act-fast ARGS`` in this process: ``(exit status, stdout, stderr)``."""
    from act_fast.cli import main

    def call(*args) -> tuple[int, str, str]:
        rc = main([str(a) for a in args])
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    return call
