"""Prompt sources for collection and fitting: text files, JSON-lines files and Hugging Face datasets,
read in order as a stream of strings, and tokenised into padded batches.

- ``*.txt``: one prompt per line (surrounding whitespace stripped, blank lines skipped).
- ``*.jsonl`` / ``*.ndjson``: one JSON object per line, the prompt in its ``text`` field (or
  ``field``); blank lines skipped.
- ``*.csv`` / ``*.parquet`` / ``*.json``: read with ``datasets`` (column ``field``, default ``text``).
- anything else: a ``datasets`` name on the hub or a local dataset folder (``load_dataset``, or
  ``load_from_disk`` for a folder written by ``save_to_disk``), configuration ``subset`` (e.g.
  ``en`` of ``allenai/c4``), split ``split`` (default ``train``), column ``field``; streamed where
  the dataset allows, so nothing is read ahead.
  ``datasets`` is optional (``pip install datasets``).

The order of prompts is the order of the source, every time it is read: a reader can skip the
first N prompts and continue exactly where an earlier run stopped.
"""

from __future__ import annotations

import inspect
import itertools
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

TEXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
DATASETS_FILE_BUILDERS = {".csv": "csv", ".parquet": "parquet", ".json": "json"}
DEFAULT_FIELD = "text"
DEFAULT_SPLIT = "train"


class PromptSourceError(ValueError):
    """Prompts that cannot be read: a missing or empty file, a bad JSON line, a missing field, a
    dataset that cannot be loaded; the message names the source (and line)."""


@dataclass(frozen=True)
class PromptSource:
    """Where prompts come from. Iterating yields the prompts (``str``) in source order.

    Attributes:
        spec: a file path, a dataset folder or a ``datasets`` hub name.
        field: the JSON field / dataset column holding the text (default ``text``).
        split: the dataset split (default ``train``); files have none.
        subset: the dataset configuration name (``load_dataset(spec, subset)``), if it has several.
    """

    spec: str
    field: str | None = None
    split: str | None = None
    subset: str | None = None

    @property
    def kind(self) -> str:
        """``txt``, ``jsonl``, ``datasets-file`` (csv / parquet / json) or ``dataset``."""
        suffix = Path(self.spec).suffix.lower()
        if suffix in TEXT_SUFFIXES:
            return "txt"
        if suffix in JSONL_SUFFIXES:
            return "jsonl"
        if suffix in DATASETS_FILE_BUILDERS:
            return "datasets-file"
        return "dataset"

    def describe(self) -> str:
        """``prompts.txt``, ``data.jsonl (field 'body')``, ``user/set (split 'train', field 'text')``."""
        extras = [] if self.subset is None else [f"subset {self.subset!r}"]
        if self.kind in ("dataset", "datasets-file"):
            extras.append(f"split {self.split or DEFAULT_SPLIT!r}")
        if self.kind != "txt":
            extras.append(f"field {self.field or DEFAULT_FIELD!r}")
        return f"{self.spec} ({', '.join(extras)})" if extras else self.spec

    def check(self) -> None:
        """Fails early (before any model is loaded) when the source cannot be read: a missing file,
        a folder given as a text file, ``datasets`` missing, or no first prompt."""
        if self.kind == "txt" and self.field is not None:
            raise PromptSourceError(f"{self.spec}: a .txt file has one prompt per line and no fields; --field applies to .jsonl files and datasets")
        if self.kind == "txt" and self.split is not None:
            raise PromptSourceError(f"{self.spec}: a .txt file has no splits; --split applies to datasets")
        if self.kind == "jsonl" and self.split is not None:
            raise PromptSourceError(f"{self.spec}: a .jsonl file has no splits; --split applies to datasets")
        if self.kind != "dataset" and self.subset is not None:
            raise PromptSourceError(f"{self.spec}: a file has no configurations; --subset applies to datasets on the hub or in a folder")
        if self.kind != "dataset":
            path = Path(self.spec)
            if path.is_dir():
                raise PromptSourceError(f"{path} is a directory; give a {path.suffix} file (or a dataset folder without a file suffix)")
            if not path.is_file():
                raise FileNotFoundError(f"no data file at {path}")
        if next(iter(self), None) is None:
            raise PromptSourceError(f"{self.describe()}: no prompts (the source is empty or every line is blank)")

    def count(self) -> int | None:
        """The number of prompts when it is cheap to know (files: one pass over the lines; a
        dataset with a known length), else None (a stream)."""
        if self.kind == "txt":
            with open(self.spec, encoding="utf-8", errors="replace") as f:
                return sum(1 for line in f if line.strip())
        if self.kind == "jsonl":
            with open(self.spec, encoding="utf-8", errors="replace") as f:
                return sum(1 for line in f if line.strip())
        try:
            return len(self._dataset())  # type: ignore[arg-type]
        except TypeError:
            return None

    def __iter__(self) -> Iterator[str]:
        if self.kind == "txt":
            return self._txt()
        if self.kind == "jsonl":
            return self._jsonl()
        return self._dataset_rows()

    # ----------------------------------------------------------------------- readers
    def _txt(self) -> Iterator[str]:
        with open(self.spec, encoding="utf-8") as f:
            try:
                for line in f:
                    text = line.strip()
                    if text:
                        yield text
            except UnicodeDecodeError as err:
                raise PromptSourceError(f"{self.spec}: not UTF-8 text ({err.reason} at byte {err.start} of a line)") from None

    def _jsonl(self) -> Iterator[str]:
        field = self.field or DEFAULT_FIELD
        with open(self.spec, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise PromptSourceError(f"{self.spec}:{number}: not valid JSON ({err.msg})") from None
                yield _text_of(record, field, f"{self.spec}:{number}")

    def _dataset(self) -> Any:
        try:
            import datasets
        except ImportError:
            raise PromptSourceError(
                f"reading {self.spec!r} needs the 'datasets' package (pip install datasets); "
                "or give a .txt file (one prompt per line) or a .jsonl file"
            ) from None
        split = self.split or DEFAULT_SPLIT
        path = Path(self.spec)
        try:
            if self.kind == "datasets-file":
                return datasets.load_dataset(DATASETS_FILE_BUILDERS[path.suffix.lower()], data_files=str(path), split=split, streaming=True)
            if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
                loaded = datasets.load_from_disk(str(path))
                if isinstance(loaded, datasets.DatasetDict):
                    if split not in loaded:
                        raise PromptSourceError(f"{self.spec}: no split {split!r}; splits: {sorted(loaded)}")
                    loaded = loaded[split]
                return loaded
            try:
                return datasets.load_dataset(self.spec, self.subset, split=split, streaming=True)
            except NotImplementedError:  # a dataset script or format without streaming support
                return datasets.load_dataset(self.spec, self.subset, split=split)
        except PromptSourceError:
            raise
        except Exception as err:  # noqa: BLE001 -- hub, network, file-format errors all mean "cannot load"
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            offline = " (offline: HF_DATASETS_OFFLINE / HF_HUB_OFFLINE set, or no network, and the dataset is not cached?)" if not path.exists() else ""
            raise PromptSourceError(f"cannot load dataset {self.spec!r} split {split!r}: {type(err).__name__}: {reason}{offline}") from None

    def _dataset_rows(self) -> Iterator[str]:
        field = self.field or DEFAULT_FIELD
        ds = self._dataset()
        columns = getattr(ds, "column_names", None)
        if columns is not None and field not in columns:
            raise PromptSourceError(f"{self.describe()}: no column {field!r}; columns: {list(columns)} (choose one with --field)")
        csv = Path(self.spec).suffix.lower() == ".csv"
        for number, record in enumerate(ds, 1):  # 1-based, like .jsonl lines
            text = _text_of(record, field, f"{self.spec} row {number}" + (" (counted from 1 after the header)" if csv else ""))
            if text.strip():
                yield text


def _text_of(record: Any, field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise PromptSourceError(f"{where}: expected a JSON object with a {field!r} field, got {type(record).__name__}")
    if field not in record:
        raise PromptSourceError(f"{where}: no field {field!r}; fields: {sorted(record)[:10]} (choose one with --field)")
    text = record[field]
    if not isinstance(text, str):
        raise PromptSourceError(f"{where}: field {field!r} holds a {type(text).__name__}, expected a string")
    return text


def read_prompts(spec: str | os.PathLike, *, field: str | None = None, split: str | None = None, subset: str | None = None) -> PromptSource:
    """A :class:`PromptSource` for ``spec`` (see the module docstring for what it may be)."""
    return PromptSource(str(spec), field, split, subset)


def batched(prompts: Iterable[str], size: int) -> Iterator[list[str]]:
    """Consecutive lists of ``size`` prompts (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    it = iter(prompts)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def model_accepts(model: nn.Module, name: str) -> bool:
    """Whether ``model.forward`` takes a keyword ``name`` (explicitly, not through ``**kwargs``)."""
    return name in inspect.signature(model.forward).parameters


def model_max_length(tokenizer: Any, model: nn.Module) -> int | None:
    """The longest input the model takes: its config's ``max_position_embeddings`` or the
    tokenizer's ``model_max_length``, whichever is smaller (None when neither is set)."""
    limits = [getattr(getattr(model, "config", None), "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    limits = [int(v) for v in limits if isinstance(v, int) and 0 < v < 10**9]
    return min(limits) if limits else None


def tokenize(tokenizer: Any, texts: list[str], max_length: int | None, *, token_type_ids: bool = False) -> dict[str, Tensor]:
    """Prompts as one padded batch of CPU tensors: ``input_ids`` / ``attention_mask`` ``[B, T]``
    (and ``token_type_ids`` when asked), truncated to ``max_length`` tokens when given."""
    enc = tokenizer(
        texts, padding=True, truncation=max_length is not None, max_length=max_length, return_tensors="pt",
        return_token_type_ids=token_type_ids,
    )
    return {k: v for k, v in enc.items() if isinstance(v, torch.Tensor)}
