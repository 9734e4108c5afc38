"""Shared by the vLLM tests and the vLLM benchmark: a tiny Llama folder, two map sets fitted to it,
and the Hugging Face reference generations (transformers + ``act_fast.steer``).

The checkpoint uses 2 heads of 32 (vLLM's CPU attention has no kernel for head size 16).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:  # for tests/checkpoints.py and tests/steering/random_maps.py
    sys.path.insert(0, str(TESTS))

from checkpoints import tiny_llama_checkpoint  # noqa: E402

VLLM_MISSING = "vLLM is not installed here; the vLLM tests run in their own environment (see README, .ci/run)"


def require_vllm() -> None:
    """Skips the calling test module when vLLM is missing (tests/vllm itself can pass for a namespace
    package named vllm, so look for vllm.v1)."""
    import pytest

    pytest.importorskip("vllm.v1", reason=VLLM_MISSING)

LLAMA_OVERRIDES = {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "max_position_embeddings": 512}
MAX_MODEL_LEN = 512
NORM_SITES = [f"model.layers.{i}.{n}" for i in range(2) for n in ("input_layernorm", "post_attention_layernorm")] + ["model.norm"]
OP_SITES = ["model.layers.0.self_attn.o_proj", "model.layers.1.mlp"]

PROMPTS = [
    "The chef cooked a delicious meal",
    "The striker scored a goal in the final minute of the match",
    "Fresh basil and garlic",
    "The referee",
]
# Longer than two KV-cache blocks (vLLM's CPU default is 128 tokens), so that prefix caching has
# whole blocks to share.
LONG_PROMPT = " ".join(
    [
        "The chef chopped the onions, warmed the olive oil in a heavy pan, added garlic and thyme,",
        "stirred in the tomatoes and let the sauce simmer slowly while the pasta water came to a boil,",
        "then tasted, seasoned with salt and pepper, and served the dish with fresh basil and grated cheese.",
    ]
    * 3
)


@dataclass(frozen=True)
class Assets:
    checkpoint: Path
    map_files: dict[str, Path]  # set name -> map file


def build_assets(root: Path) -> Assets:
    """The checkpoint and two map sets: ``a`` (norm and op sites, with supports) and ``b`` (norm
    sites, no support), strong enough to change the tiny model's greedy tokens."""
    from steering.random_maps import random_maps
    from transformers import AutoModelForCausalLM

    root = Path(root)
    checkpoint = tiny_llama_checkpoint(root / "tiny-llama", **LLAMA_OVERRIDES)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    files = {
        "a": random_maps(model, NORM_SITES + OP_SITES, seed=1, support=True, scale=0.5).save(root / "a.safetensors"),
        "b": random_maps(model, NORM_SITES, seed=2, scale=1.0).save(root / "b.safetensors"),
    }
    return Assets(checkpoint, files)


class HFReference:
    """Greedy generations of the checkpoint with transformers (in ``dtype``), unsteered or steered by
    ``act_fast.steer`` with the same map sets (per-row map set and λ, batch of one)."""

    def __init__(self, assets: Assets, dtype: torch.dtype = torch.float32) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        import act_fast as af

        self.tokenizer = AutoTokenizer.from_pretrained(assets.checkpoint)
        self.model = AutoModelForCausalLM.from_pretrained(assets.checkpoint, dtype=dtype).eval()
        self.map_sets = {name: af.load_maps(path) for name, path in assets.map_files.items()}
        self._cached = lru_cache(maxsize=None)(self._generate)
        self._cached_chain = lru_cache(maxsize=None)(self._generate_chain)

    def generate(self, prompt: str, maps: str | None = None, strength: float = 0.0, max_tokens: int = 12) -> list[int]:
        """Generated token ids (without the prompt)."""
        return list(self._cached(prompt, maps, float(strength), max_tokens))

    def _generate(self, prompt: str, maps: str | None, strength: float, max_tokens: int) -> tuple[int, ...]:
        import act_fast as af

        ids = self.tokenizer(prompt, return_tensors="pt").input_ids
        kwargs = dict(max_new_tokens=max_tokens, do_sample=False, attention_mask=torch.ones_like(ids))
        with torch.no_grad():
            if maps is None or strength == 0.0:
                out = self.model.generate(ids, **kwargs)
            else:
                with af.steer(self.model, self.map_sets) as handle:
                    handle.select([maps])
                    handle.set_strength(torch.tensor([strength]))
                    out = self.model.generate(ids, **kwargs)
        return tuple(out[0, ids.shape[1] :].tolist())

    def generate_chain(self, prompt: str, chain: tuple[tuple[str, float], ...], max_tokens: int = 12) -> list[int]:
        """Generated token ids with the map sets composed in ``chain`` order (``(set, λ)`` pairs),
        steered by ``act_fast.steer`` + ``select([{set: λ, ...}])``."""
        return list(self._cached_chain(prompt, tuple(chain), max_tokens))

    def _generate_chain(self, prompt: str, chain: tuple[tuple[str, float], ...], max_tokens: int) -> tuple[int, ...]:
        import act_fast as af

        ids = self.tokenizer(prompt, return_tensors="pt").input_ids
        kwargs = dict(max_new_tokens=max_tokens, do_sample=False, attention_mask=torch.ones_like(ids))
        with torch.no_grad(), af.steer(self.model, self.map_sets) as handle:
            handle.select([dict(chain)])
            out = self.model.generate(ids, **kwargs)
        return tuple(out[0, ids.shape[1] :].tolist())

def engine_kwargs(checkpoint: Path, dtype: torch.dtype = torch.float32, **overrides) -> dict:
    """Engine arguments of the vLLM tests: vLLM's defaults (compiled mode, prefix caching, chunked
    prefill) except the checkpoint's dtype, a context length the tiny models support and a fixed
    KV-cache size (the CPU backend otherwise reserves a fraction of the machine's memory)."""
    return dict(
        model=str(checkpoint), dtype=str(dtype).removeprefix("torch."), max_model_len=MAX_MODEL_LEN, seed=0,
        kv_cache_memory_bytes=1 << 27, **overrides,
    )
