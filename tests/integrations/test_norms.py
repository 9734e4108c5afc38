"""``norm_spec``: for every supported norm class, the standard formula computed from the spec
equals the module's own forward; everything else gets ``None``."""

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from act_fast.integrations import NORM_CLASSES, NormSpec, norm_spec

EPS = 0.05  # far from every default, so a wrong eps attribute fails the comparison
HF_RMS = [
    ("llama", "LlamaRMSNorm", 0.0),
    ("mistral", "MistralRMSNorm", 0.0),
    ("qwen2", "Qwen2RMSNorm", 0.0),
    ("qwen3", "Qwen3RMSNorm", 0.0),
    ("phi3", "Phi3RMSNorm", 0.0),
    ("gemma", "GemmaRMSNorm", 1.0),
    ("gemma2", "Gemma2RMSNorm", 1.0),
    ("gemma3", "Gemma3RMSNorm", 1.0),
]


def reference(spec: NormSpec, x: torch.Tensor) -> torch.Tensor:
    """The norm written from the spec alone, in float32."""
    w = None if spec.weight is None else spec.weight.detach() + spec.weight_offset
    b = None if spec.bias is None else spec.bias.detach()
    if spec.kind == "rms":
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + spec.eps)
        return y if w is None else y * w
    if spec.kind == "layer":
        return F.layer_norm(x, (x.shape[-1],), w, b, spec.eps)
    assert spec.kind == "group"
    return F.group_norm(x, spec.num_groups, w, b, spec.eps)


def randomise(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
    return module


def hf_rms(model: str, cls: str, dim: int = 24) -> nn.Module:
    return getattr(importlib.import_module(f"transformers.models.{model}.modeling_{model}"), cls)(dim, eps=EPS)


def check(module: nn.Module, x: torch.Tensor, kind: str) -> NormSpec:
    spec = norm_spec(randomise(module))
    assert spec is not None and spec.kind == kind
    with torch.no_grad():
        torch.testing.assert_close(reference(spec, x), module(x), rtol=1e-5, atol=1e-5)
    return spec


def test_reference_is_sensitive_to_eps():
    """Small inputs, so an eps error of 5 % of the mean square shows; guards the tests below."""
    x = torch.randn(3, 24) * 0.2
    spec = norm_spec(randomise(nn.RMSNorm(24, eps=EPS)))
    wrong = NormSpec("rms", EPS * 1.05, spec.weight, None)
    assert not torch.allclose(reference(wrong, x), reference(spec, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model,cls,offset", HF_RMS)
def test_transformers_rms_norms(model, cls, offset):
    module = hf_rms(model, cls)
    spec = check(module, torch.randn(2, 5, 24) * 0.2, "rms")
    assert spec.eps == EPS and spec.weight is module.weight and spec.bias is None
    assert spec.weight_offset == offset
    assert spec.cast_before_scale == (offset == 0.0)  # Llama-style rounds before scaling


@pytest.mark.parametrize("eps", [EPS, None])
def test_torch_rms_norm(eps):
    module = nn.RMSNorm(24, eps=eps)
    spec = check(module, torch.randn(2, 5, 24) * (0.2 if eps else 1e-3), "rms")
    assert spec.eps == (EPS if eps else torch.finfo(torch.float32).eps)
    assert norm_spec(nn.RMSNorm(24, elementwise_affine=False)).weight is None


@pytest.mark.parametrize("affine,bias", [(True, True), (True, False), (False, False)])
def test_layer_norm(affine, bias):
    module = nn.LayerNorm(24, eps=EPS, elementwise_affine=affine, bias=bias)
    spec = check(module, torch.randn(2, 5, 24) * 0.2, "layer")
    assert spec.eps == EPS and spec.weight is module.weight and spec.bias is module.bias
    assert (spec.weight is None) != affine and (spec.bias is None) != bias


@pytest.mark.parametrize("affine", [True, False])
def test_group_norm(affine):
    module = nn.GroupNorm(4, 12, eps=EPS, affine=affine)
    spec = check(module, torch.randn(2, 12, 3, 5) * 0.2, "group")
    assert spec.num_groups == 4 and spec.eps == EPS and (spec.weight is None) != affine


def test_registry_covers_exactly_the_supported_classes():
    torch_classes = {f"torch.nn.modules.normalization.{c}" for c in ("LayerNorm", "GroupNorm", "RMSNorm")}
    hf_classes = {f"transformers.models.{m}.modeling_{m}.{c}" for m, c, _ in HF_RMS}
    assert set(NORM_CLASSES) == torch_classes | hf_classes
    for key in hf_classes:  # every key names a class that exists
        path, cls = key.rsplit(".", 1)
        assert isinstance(getattr(importlib.import_module(path), cls), type)


class SubclassedLayerNorm(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x) * 2


def unsupported() -> list[nn.Module]:
    from diffusers.models.normalization import AdaLayerNormZero, RMSNorm

    replaced = nn.LayerNorm(8)
    replaced.forward = lambda x: x  # e.g. a patched instance
    return [
        nn.Linear(8, 8),
        nn.LayerNorm((4, 8)),  # normalises over two dimensions
        nn.RMSNorm((4, 8)),
        SubclassedLayerNorm(8),
        replaced,
        nn.BatchNorm1d(8),
        RMSNorm(8, eps=1e-6),  # output dtype follows the weight, not the input
        AdaLayerNormZero(8),
    ]


@pytest.mark.parametrize("i", range(len(unsupported())))
def test_unsupported_modules_get_none(i):
    assert norm_spec(unsupported()[i]) is None


def test_every_norm_of_the_tiny_llms_is_supported():
    """The registry keys match the classes the models really instantiate (incl. gemma3_text)."""
    from tiny_models import CAUSAL_LM_TYPES, tiny_causal_lm

    for model_type in CAUSAL_LM_TYPES:
        model = tiny_causal_lm(model_type)
        norms = [n for n, m in model.named_modules() if type(m).__name__.endswith(("RMSNorm", "LayerNorm"))]
        assert norms and all(norm_spec(model.get_submodule(n)) is not None for n in norms), model_type
