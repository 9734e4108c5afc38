"""Sites whose output rows are not the step's tokens, or are per-rank partial sums, are refused at
engine start naming the site (checked on stand-in models built from vLLM's own RMSNorm)."""

import pytest
import torch
from torch import nn

import act_fast as af
from engine_support import require_vllm

require_vllm()

from act_fast.vllm.sites import SiteError, plan_sites  # noqa: E402

HIDDEN, HEAD_DIM = 32, 8


def _norm(channels):
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.layernorm import RMSNorm

    with set_current_vllm_config(VllmConfig()):
        return RMSNorm(channels)


class PartialSumLinear(nn.Linear):
    """Stands for vLLM's RowParallelLinear(reduce_results=False) on one of ``tp_size`` ranks."""

    def __init__(self, tp_size):
        super().__init__(HIDDEN, HIDDEN)
        self.reduce_results, self.tp_size = False, tp_size


class Decoder(nn.Module):
    def __init__(self, tp_size=2):
        super().__init__()
        self.input_layernorm = _norm(HIDDEN)
        self.self_attn = nn.Module()
        self.self_attn.q_norm = _norm(HEAD_DIM)  # Qwen3: applied to [tokens x heads, head_dim]
        self.self_attn.o_proj = nn.Linear(HIDDEN, HIDDEN)
        self.shared_expert = PartialSumLinear(tp_size)


class Multimodal(nn.Module):
    def __init__(self):
        super().__init__()
        self.visual = nn.Module()
        self.visual.norm = _norm(HIDDEN)  # runs on image patches
        self.language_model = Decoder()

    def get_language_model(self):
        return self.language_model


def _maps(**channels):
    return {"s": af.SteeringMaps({site.replace("__", "."): af.AffineMap(torch.ones(c), torch.zeros(c)) for site, c in channels.items()})}


def test_per_head_norms_and_partial_sums_are_refused_naming_the_site():
    maps = _maps(input_layernorm=HIDDEN, self_attn__q_norm=HEAD_DIM, self_attn__o_proj=HIDDEN, shared_expert=HIDDEN)
    with pytest.raises(SiteError) as err:
        plan_sites(Decoder(tp_size=2), maps, {"s": "s.safetensors"}, HIDDEN)
    message = str(err.value)
    assert "2 problems" in message
    assert "site 'self_attn.q_norm' cannot be steered per token: a RMSNorm over 8 channels" in message and "[tokens x heads, head_dim]" in message
    assert "site 'shared_expert' cannot be steered per token: a PartialSumLinear with reduce_results=False under tensor parallelism 2" in message
    assert "input_layernorm" not in message and "o_proj" not in message


def test_the_same_sites_without_the_problem_are_planned():
    maps = _maps(input_layernorm=HIDDEN, self_attn__o_proj=HIDDEN, shared_expert=HIDDEN)
    plans = plan_sites(Decoder(tp_size=1), maps, {"s": "s.safetensors"}, HIDDEN)  # one rank: the sum is whole
    assert [(p.name, p.mode) for p in plans] == [("input_layernorm", "fused"), ("self_attn.o_proj", "op"), ("shared_expert", "op")]


def test_sites_outside_the_language_model_of_a_multimodal_model_are_refused():
    maps = _maps(visual__norm=HIDDEN, language_model__input_layernorm=HIDDEN)
    with pytest.raises(SiteError, match=r"site 'visual.norm' cannot be steered per token: it is outside the language model \('language_model'\)") as err:
        plan_sites(Multimodal(), maps, {"s": "s.safetensors"}, HIDDEN)
    assert "1 problem)" in str(err.value)
