"""How a normalisation module normalises: :func:`norm_spec` and its registry of norm classes.

The steering code uses a :class:`NormSpec` to replace a norm by a fused norm + transport kernel,
or to fold a map into the norm's affine parameters. A class is registered only when its forward
is exactly the standard formula (checked against the installed source and by the tests):

- ``rms``:   ``x * rsqrt(mean(x², -1) + eps) * (weight + weight_offset)``, with the module's rounding
  order (:attr:`NormSpec.cast_before_scale`)
- ``layer``: ``F.layer_norm(x, (C,), weight, bias, eps)`` over the last dimension
- ``group``: ``F.group_norm(x, num_groups, weight, bias, eps)`` over channel dimension 1

Anything else (diffusers' own RMSNorm, whose output dtype follows the weight, adaptive norms,
LayerNorms over several dimensions, instances whose ``forward`` was replaced) gets ``None``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

KINDS = ("rms", "layer", "group")


@dataclass(frozen=True)
class NormSpec:
    """The normalisation a module computes (see the module docstring for the formulas).

    Attributes:
        kind: ``"rms"``, ``"layer"`` or ``"group"``.
        eps: added to the mean square / variance before the reciprocal square root.
        weight: the affine scale parameter, ``None`` when the norm has none.
        bias: the affine shift parameter, ``None`` when the norm has none.
        weight_offset: the effective scale is ``weight + weight_offset`` (1.0 for Gemma's
            ``1 + w``).
        num_groups: GroupNorm only.
        cast_before_scale: the module rounds the normalised value to the input dtype before
            multiplying by the scale (Llama-style HF RMSNorms: ``weight * x̂.to(input_dtype)``);
            False: it scales in float32 and rounds once (Gemma, ``torch.nn.RMSNorm``). The fused
            kernels reproduce the order (``rms_norm_transport(cast_before_scale=...)``), so a fused
            site at λ = 0 returns the module's output bit for bit.
    """

    kind: str
    eps: float
    weight: nn.Parameter | None
    bias: nn.Parameter | None
    weight_offset: float = 0.0
    num_groups: int | None = None
    cast_before_scale: bool = False


Extractor = Callable[[nn.Module], NormSpec | None]


def _layer_norm(m: nn.Module) -> NormSpec | None:
    if len(m.normalized_shape) != 1:
        return None
    return NormSpec("layer", float(m.eps), m.weight, m.bias)


def _group_norm(m: nn.Module) -> NormSpec:
    return NormSpec("group", float(m.eps), m.weight, m.bias, num_groups=int(m.num_groups))


def _torch_rms_norm(m: nn.Module) -> NormSpec | None:
    if len(m.normalized_shape) != 1:
        return None
    # eps=None means the machine epsilon of the compute type, fp32 for fp32/bf16/fp16 input.
    eps = torch.finfo(torch.float32).eps if m.eps is None else float(m.eps)
    return NormSpec("rms", eps, m.weight, None)


def _hf_rms_norm(eps_attr: str, weight_offset: float, cast_before_scale: bool) -> Extractor:
    def extract(m: nn.Module) -> NormSpec:
        return NormSpec("rms", float(getattr(m, eps_attr)), m.weight, None, weight_offset=weight_offset, cast_before_scale=cast_before_scale)

    return extract


# `variance_epsilon`, scale `w`, `w * normed.to(input_dtype)`.
_LLAMA_STYLE = _hf_rms_norm("variance_epsilon", 0.0, cast_before_scale=True)
# `eps`, scale `1 + w`, `(normed * (1 + w.float())).type_as(x)`.
_GEMMA_STYLE = _hf_rms_norm("eps", 1.0, cast_before_scale=False)


def _hf(model: str, cls: str) -> str:
    return f"transformers.models.{model}.modeling_{model}.{cls}"


# Exact class (``module.qualname``) -> extractor; subclasses are not matched, as they may
# override ``forward``.
NORM_CLASSES: dict[str, Extractor] = {
    "torch.nn.modules.normalization.LayerNorm": _layer_norm,
    "torch.nn.modules.normalization.GroupNorm": _group_norm,
    "torch.nn.modules.normalization.RMSNorm": _torch_rms_norm,
    **{
        _hf(m, f"{c}RMSNorm"): _LLAMA_STYLE
        for m, c in (("llama", "Llama"), ("mistral", "Mistral"), ("qwen2", "Qwen2"), ("qwen3", "Qwen3"), ("phi3", "Phi3"))
    },
    **{_hf(m, f"{c}RMSNorm"): _GEMMA_STYLE for m, c in (("gemma", "Gemma"), ("gemma2", "Gemma2"), ("gemma3", "Gemma3"))},
}


def class_key(cls: type) -> str:
    """``module.qualname`` of a class: the key of the class registries."""
    return f"{cls.__module__}.{cls.__qualname__}"


def norm_spec(module: nn.Module) -> NormSpec | None:
    """The :class:`NormSpec` of ``module``, or ``None`` when it is not a registered norm class
    computing the standard formula (including when its instance ``forward`` was replaced)."""
    extract = NORM_CLASSES.get(class_key(type(module)))
    if extract is None or "forward" in vars(module):
        return None
    return extract(module)
