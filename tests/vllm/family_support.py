"""Tiny checkpoints of the model families the vLLM plugin is tested on, and their map sets.

Every family is a 2-layer model with hidden size 64 and 2 query heads of 32 (1 KV head): vLLM's CPU
attention has no kernel for head sizes under 32. Each is saved in its dtype with the byte-level BPE
tokenizer of ``tests/checkpoints.py``. The sites are vLLM's steerable ones of every family: the
block norms (fused into vLLM's ``RMSNorm`` / ``GemmaRMSNorm``) and the outputs of ``o_proj`` and
``mlp`` (the transport op after vLLM's module).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from engine_support import MAX_MODEL_LEN, Assets

# model_type -> the config entries that differ from the shared tiny decoder below
FAMILY_CONFIGS: dict[str, dict] = {
    "llama": {},
    "mistral": {"sliding_window": None},
    "qwen2": {},
    "qwen3": {},  # q_norm / k_norm (RMSNorm over head_dim) in every layer
    "gemma": {},  # GemmaRMSNorm (1 + w, scaled in float32); vLLM runs it in float16, unlike Gemma 2 / 3
    "gemma3_text": {"sliding_window": MAX_MODEL_LEN, "query_pre_attn_scalar": 32},
    "phi3": {},
}
_DECODER = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
    max_position_embeddings=MAX_MODEL_LEN, tie_word_embeddings=False,
)
_NO_HEAD_DIM = {"phi3"}  # the config derives head_dim from hidden_size / heads (= 32 here)

# Block norms of each layer, by family (Gemma has four, around attention and MLP)
_LLAMA_NORMS = ("input_layernorm", "post_attention_layernorm")
_GEMMA_NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")


def norm_sites(model_type: str, layers: int = 2) -> list[str]:
    """The fused sites: every block norm and the final norm."""
    names = _GEMMA_NORMS if model_type in ("gemma2", "gemma3_text") else _LLAMA_NORMS
    return [f"model.layers.{i}.{n}" for i in range(layers) for n in names] + ["model.norm"]


def op_sites(layers: int = 2) -> list[str]:
    """The op sites: attention output projection and MLP output of every layer."""
    return [f"model.layers.{i}.{n}" for i in range(layers) for n in ("self_attn.o_proj", "mlp")]


def tiny_checkpoint(path: Path, model_type: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """Writes a tiny ``model_type`` causal LM (see the module docstring) and its tokenizer to ``path``."""
    from checkpoints import train_tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = train_tokenizer()
    entries = {**_DECODER, **FAMILY_CONFIGS[model_type]}
    if model_type in _NO_HEAD_DIM:
        entries.pop("head_dim")
    config = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, **entries,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.to(dtype).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return Path(path)


def build_family_assets(root: Path, model_type: str, dtype: torch.dtype = torch.float32) -> Assets:
    """A tiny checkpoint of ``model_type`` and two map sets: ``a`` on every norm and op site (with
    supports), ``b`` on the norm sites only; strong enough to change the greedy tokens."""
    from steering.random_maps import random_maps
    from transformers import AutoModelForCausalLM

    root = Path(root)
    checkpoint = tiny_checkpoint(root / f"tiny-{model_type}", model_type, dtype)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    norms = norm_sites(model_type)
    files = {
        "a": random_maps(model, norms + op_sites(), seed=1, support=True, scale=0.5).save(root / f"{model_type}-a.safetensors"),
        "b": random_maps(model, norms, seed=2, scale=1.0).save(root / f"{model_type}-b.safetensors"),
    }
    return Assets(checkpoint, files)


@dataclass(frozen=True)
class Family:
    """One tested configuration: a model family in a dtype."""

    model_type: str
    dtype: torch.dtype

    @property
    def id(self) -> str:
        return f"{self.model_type}-{str(self.dtype).removeprefix('torch.')}"
