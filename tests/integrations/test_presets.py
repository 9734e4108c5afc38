"""``sites``: every preset of every supported model type selects the documented modules (names,
count, channel count); pattern / filter / intersection; generic presets; every error path."""

import ast
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import tiny_models
from torch import nn

import act_fast as af
import act_fast.integrations
from act_fast.integrations import GENERIC_PRESETS, PRESET_NAMES, SITE_FAMILIES, model_key, presets

L = 2  # layers (blocks) of every tiny model
LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "gemma", "phi3")
DIFFUSERS = {
    "UNet2DConditionModel": "tiny_unet",
    "FluxTransformer2DModel": "tiny_flux",
    "SD3Transformer2DModel": "tiny_sd3",
    "PixArtTransformer2DModel": "tiny_pixart",
}
MODELS = (*tiny_models.CAUSAL_LM_TYPES, "bert", *DIFFUSERS)


def build(key: str) -> nn.Module:
    if key in DIFFUSERS:
        return getattr(tiny_models, DIFFUSERS[key])()
    return tiny_models.tiny_bert() if key == "bert" else tiny_models.tiny_causal_lm(key)


@pytest.fixture(scope="module")
def zoo():
    """``zoo(key)``: the tiny model of a registry key, built once per module."""
    built: dict[str, nn.Module] = {}

    def get(key: str) -> nn.Module:
        if key not in built:
            built[key] = build(key)
        return built[key]

    return get


def shape(name: str) -> str:
    """A site name with its block indices replaced by ``N``."""
    return re.sub(r"(?<=\.)\d+(?=\.|$)", "N", name)


def llm(layers: str, attn: str, mlp: str, post: set[str], norms: set[str], o_proj: str) -> dict[str, tuple[int, set[str]]]:
    return {
        "post_layernorm": (L * len(post), {f"{layers}.N.{n}" for n in post}),
        "layernorm": (L * len(norms), {f"{layers}.N.{n}" for n in norms}),
        "o_proj": (L, {f"{layers}.N.{o_proj}"}),
        "attn_out": (L, {f"{layers}.N.{attn}"}),
        "mlp_out": (L, {f"{layers}.N.{mlp}"}),
    }


_LLAMA_NORMS = {"input_layernorm", "post_attention_layernorm"}
_LLAMA = llm("model.layers", "self_attn", "mlp", {"post_attention_layernorm"}, _LLAMA_NORMS, "self_attn.o_proj")
_GEMMA2_POST = {"post_attention_layernorm", "post_feedforward_layernorm"}
_GEMMA2 = llm("model.layers", "self_attn", "mlp", _GEMMA2_POST, _LLAMA_NORMS | _GEMMA2_POST | {"pre_feedforward_layernorm"}, "self_attn.o_proj")
_UNET_BLOCKS = ("down_blocks.N", "mid_block", "up_blocks.N")
_UNET_TB = [f"{b}.attentions.N.transformer_blocks.N" for b in _UNET_BLOCKS]
_UNET_TB_COUNT = 4  # down_blocks.0: 1, mid_block: 1, up_blocks.1: 2 (layers_per_block + 1)
_BERT_NORMS = {"attention.output.LayerNorm", "output.LayerNorm"}

# Per model and preset: (number of sites, their names with indices replaced by N).
EXPECTED: dict[str, dict[str, tuple[int, set[str]]]] = {
    **dict.fromkeys(LLAMA_LIKE, _LLAMA),
    **dict.fromkeys(("gemma2", "gemma3_text"), _GEMMA2),
    "gpt2": llm("transformer.h", "attn", "mlp", {"ln_2"}, {"ln_1", "ln_2"}, "attn.c_proj"),
    "bert": llm("encoder.layer", "attention", "output.dense", _BERT_NORMS, _BERT_NORMS, "attention.output.dense"),
    "UNet2DConditionModel": {
        "post_layernorm": (_UNET_TB_COUNT, {f"{t}.norm3" for t in _UNET_TB}),
        # 8 resnets × 2 GroupNorms + 4 attentions × (1 GroupNorm + 3 LayerNorms)
        "layernorm": (
            32,
            {f"{b}.resnets.N.norm{i}" for b in _UNET_BLOCKS for i in (1, 2)}
            | {f"{b}.attentions.N.norm" for b in _UNET_BLOCKS}
            | {f"{t}.norm{i}" for t in _UNET_TB for i in (1, 2, 3)},
        ),
        "o_proj": (2 * _UNET_TB_COUNT, {f"{t}.attn{i}.to_out.N" for t in _UNET_TB for i in (1, 2)}),
        "attn_out": (2 * _UNET_TB_COUNT, {f"{t}.attn{i}" for t in _UNET_TB for i in (1, 2)}),
        "mlp_out": (_UNET_TB_COUNT, {f"{t}.ff" for t in _UNET_TB}),
    },
    "FluxTransformer2DModel": {
        "post_layernorm": (L, {"transformer_blocks.N.norm2"}),
        "layernorm": (5 * L, {f"transformer_blocks.N.{n}" for n in ("norm1.norm", "norm1_context.norm", "norm2", "norm2_context")}
                      | {"single_transformer_blocks.N.norm.norm"}),
        "o_proj": (L, {"transformer_blocks.N.attn.to_out.N"}),
        "attn_out": (2 * L, {"transformer_blocks.N.attn", "single_transformer_blocks.N.attn"}),
        "mlp_out": (L, {"transformer_blocks.N.ff"}),
    },
    "SD3Transformer2DModel": {
        "post_layernorm": (L, {"transformer_blocks.N.norm2"}),
        # the last block is context_pre_only: no norm2_context
        "layernorm": (4 * L - 1, {f"transformer_blocks.N.{n}" for n in ("norm1.norm", "norm1_context.norm", "norm2", "norm2_context")}),
        "o_proj": (L, {"transformer_blocks.N.attn.to_out.N"}),
        "attn_out": (L, {"transformer_blocks.N.attn"}),
        "mlp_out": (L, {"transformer_blocks.N.ff"}),
    },
    "PixArtTransformer2DModel": {
        "post_layernorm": (L, {"transformer_blocks.N.norm2"}),
        "layernorm": (2 * L, {"transformer_blocks.N.norm1", "transformer_blocks.N.norm2"}),
        "o_proj": (2 * L, {"transformer_blocks.N.attn1.to_out.N", "transformer_blocks.N.attn2.to_out.N"}),
        "attn_out": (2 * L, {"transformer_blocks.N.attn1", "transformer_blocks.N.attn2"}),
        "mlp_out": (L, {"transformer_blocks.N.ff"}),
    },
}
CASES = [(m, p) for m in MODELS for p in PRESET_NAMES]


def test_every_registered_model_is_tested():
    assert set(SITE_FAMILIES) == set(MODELS) == set(EXPECTED)
    for key, family in SITE_FAMILIES.items():
        assert set(family.presets) == set(PRESET_NAMES), key


@pytest.mark.parametrize("key", MODELS)
def test_model_key(zoo, key):
    assert model_key(zoo(key)) == key
    assert presets(zoo(key)) == [*PRESET_NAMES, *GENERIC_PRESETS]


@pytest.mark.parametrize("key,preset", CASES)
def test_preset_selects_the_documented_modules(zoo, key, preset):
    model = zoo(key)
    names = af.sites(model, preset)
    count, shapes = EXPECTED[key][preset]
    assert len(names) == count and {shape(n) for n in names} == shapes, names
    order = [n for n, _ in model.named_modules()]
    assert names == [n for n in order if n in set(names)]  # existing names, named_modules order


def unet_width(name: str, module: nn.Module, unet: nn.Module) -> int:
    """The channels a UNet site should output: a GroupNorm keeps its input width (a resnet's first
    norm sees the skip concatenation); anything else has its block's width."""
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    widths = unet.config.block_out_channels
    block, index = re.match(r"(down_blocks|mid_block|up_blocks)\.?(\d*)", name).groups()
    return widths[-1] if block == "mid_block" else widths[int(index)] if block == "down_blocks" else widths[::-1][int(index)]


def hidden_size(model: nn.Module) -> int:
    cfg = model.config
    return cfg.hidden_size if hasattr(cfg, "hidden_size") else cfg.num_attention_heads * cfg.attention_head_dim


@pytest.fixture(scope="module")
def channels(zoo):
    """``channels(key)``: ``{site: channel count of its (first) output}`` over every preset, from
    one forward pass per model."""
    cache: dict[str, dict[str, int]] = {}

    def get(key: str) -> dict[str, int]:
        if key not in cache:
            model, seen = zoo(key), {}
            modules = dict(model.named_modules())
            names = {n for p in PRESET_NAMES for n in af.sites(model, p)}

            def hook(name):
                def record(module, args, output):
                    out = output[0] if isinstance(output, tuple) else output
                    seen[name] = out.shape[1] if out.ndim == 4 else out.shape[-1]

                return record

            handles = [modules[n].register_forward_hook(hook(n)) for n in names]
            try:
                with torch.no_grad():
                    model(**tiny_models.tiny_inputs(model, generator=torch.Generator().manual_seed(0)))
            finally:
                for h in handles:
                    h.remove()
            cache[key] = seen
        return cache[key]

    return get


@pytest.mark.parametrize("key,preset", CASES)
def test_sites_run_and_output_hidden_size_channels(zoo, channels, key, preset):
    model, seen = zoo(key), channels(key)
    modules = dict(model.named_modules())
    for name in af.sites(model, preset):
        assert name in seen, f"{name} did not run in a forward pass"
        expected = unet_width(name, modules[name], model) if key == "UNet2DConditionModel" else hidden_size(model)
        assert seen[name] == expected, name


def test_the_prefix_is_free(zoo):
    """The same presets on the bare model and on any wrapper whose ``.config`` names the type."""
    llama = zoo("llama")

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.config = llama, llama.config

    for preset in PRESET_NAMES:
        full = af.sites(llama, preset)
        assert af.sites(llama.model, preset) == [n.removeprefix("model.") for n in full]
        assert af.sites(Wrapper(), preset) == [f"inner.{n}" for n in full]


def test_diffusers_subclasses_use_their_base_class_presets():
    from diffusers import PixArtTransformer2DModel

    class MyPixArt(PixArtTransformer2DModel):
        pass

    model = MyPixArt(num_attention_heads=2, attention_head_dim=8, num_layers=2, cross_attention_dim=16, sample_size=8, caption_channels=12)
    assert model_key(model) == "PixArtTransformer2DModel"
    assert af.sites(model) == [f"transformer_blocks.{i}.norm2" for i in range(2)]


def test_pattern_filter_and_their_intersection(zoo):
    llama = zoo("llama")
    projections = [f"model.layers.{i}.mlp.{p}_proj" for i in range(L) for p in ("gate", "up", "down")]
    assert af.sites(llama, None, pattern="*.mlp.*_proj") == projections
    assert af.sites(llama, None, pattern=re.compile(r"mlp\.\w+_proj$")) == projections  # re.search
    linear = af.sites(llama, None, filter=lambda name, m: isinstance(m, nn.Linear))
    assert len(linear) == 7 * L + 1 and linear[-1] == "lm_head"
    norms = [f"model.layers.{i}.{n}" for i in range(L) for n in ("input_layernorm", "post_attention_layernorm")]
    assert af.sites(llama, "layernorm", pattern="*.layers.1.*") == norms[2:]
    assert af.sites(llama, "layernorm", filter=lambda name, m: name.startswith("model.layers.0.")) == norms[:2]
    in_attn_1 = lambda name, m: ".1." in name and "self_attn" in name  # noqa: E731
    assert af.sites(llama, None, pattern="*_proj", filter=in_attn_1) == [f"model.layers.1.self_attn.{p}_proj" for p in "qkvo"]
    wide = lambda name, m: m.out_features == 32  # noqa: E731
    assert af.sites(llama, "o_proj", pattern=re.compile(r"\.1\."), filter=wide) == ["model.layers.1.self_attn.o_proj"]


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm, self.attn, self.out_proj, self.mlp = nn.LayerNorm(8), nn.Identity(), nn.Linear(8, 8), nn.Sequential(nn.Linear(8, 8))


class Custom(nn.Module):
    """A model no registry entry knows."""

    def __init__(self):
        super().__init__()
        self.blocks, self.final_norm = nn.ModuleList([Block(), Block()]), nn.LayerNorm(8)


def test_generic_presets_are_explicit():
    model = Custom()
    assert presets(model) == list(GENERIC_PRESETS)
    assert af.sites(model, "generic:layernorm") == ["blocks.0.norm", "blocks.1.norm"]  # not the final norm
    assert af.sites(model, "generic:o_proj") == ["blocks.0.out_proj", "blocks.1.out_proj"]
    assert af.sites(model, "generic:attn_out") == ["blocks.0.attn", "blocks.1.attn"]
    assert af.sites(model, "generic:mlp_out") == ["blocks.0.mlp", "blocks.1.mlp"]
    assert af.sites(model, None, pattern="blocks.*.norm") == ["blocks.0.norm", "blocks.1.norm"]


def test_generic_presets_on_a_registered_model(zoo):
    llama = zoo("llama")
    assert af.sites(llama, "generic:layernorm") == af.sites(llama, "layernorm")
    assert af.sites(zoo("gpt2"), "generic:o_proj") == af.sites(zoo("gpt2"), "o_proj")  # attn.c_proj, not mlp.c_proj


def test_unknown_preset_lists_the_model_presets(zoo):
    listed = r"\['post_layernorm', 'layernorm', 'o_proj', 'attn_out', 'mlp_out', 'generic:layernorm', .*'generic:mlp_out'\]"
    with pytest.raises(ValueError, match=rf"unknown site preset 'nope' for GPT2LMHeadModel \('gpt2'\); presets: {listed}"):
        af.sites(zoo("gpt2"), "nope")


class UnknownType(Custom):
    """A transformers-like model whose ``config.model_type`` has no registry entry."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(model_type="t5")


@pytest.mark.parametrize(
    "model,label", [(Custom(), "Custom"), (UnknownType(), r"UnknownType \('t5'\)"), (nn.Sequential(nn.Linear(2, 2)), "Sequential")]
)
def test_unknown_model_lists_the_supported_types(model, label):
    supported = r"\[.*'FluxTransformer2DModel'.*'gemma3_text'.*'llama'.*\]"
    message = rf"no site presets for {label}; supported model types: {supported}\. Select sites with pattern= or filter="
    with pytest.raises(ValueError, match=message):
        af.sites(model)
    assert af.sites(model, None, filter=lambda name, m: isinstance(m, nn.Linear))  # the suggested way works


def test_a_selection_matching_nothing_names_the_model(zoo):
    llama = zoo("llama")
    with pytest.raises(ValueError, match=r"no module of LlamaForCausalLM \('llama'\) matches pattern='nope\*'"):
        af.sites(llama, None, pattern="nope*")
    with pytest.raises(ValueError, match=r"no module of LlamaForCausalLM \('llama'\) matches preset='o_proj', filter="):
        af.sites(llama, "o_proj", filter=lambda name, m: False)
    with pytest.raises(ValueError, match=r"no module of ModuleList matches preset='generic:layernorm'"):
        af.sites(nn.ModuleList([nn.Linear(2, 2)]), "generic:layernorm")


def test_nothing_to_select_by_and_bad_patterns(zoo):
    with pytest.raises(ValueError, match="needs a preset, a pattern= or a filter="):
        af.sites(zoo("llama"), None)
    with pytest.raises(TypeError, match="glob string or a compiled regex, got int"):
        af.sites(zoo("llama"), None, pattern=3)


def test_integrations_import_only_torch_and_themselves():
    """stats / estimators / steer import from act_fast.integrations, so it must not import them."""
    for path in Path(act_fast.integrations.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for module in [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]:
                    allowed = module.split(".")[0] in {"torch", *sys.stdlib_module_names} or module.startswith("act_fast.integrations")
                    assert allowed, f"{path.name} imports {module}"
