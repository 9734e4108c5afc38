"""``sites``: the qualified names of the modules to collect or steer, by preset, pattern or filter;
``site_names``: the one reading of a ``sites`` argument across the API (a string is a preset, a
list is module names)."""

from __future__ import annotations

import fnmatch
import re
import warnings
from collections.abc import Callable, Sequence

from torch import nn

from act_fast.integrations.norms import norm_spec
from act_fast.integrations.registry import SITE_FAMILIES, describe, model_key

Selector = Callable[[str, nn.Module], bool]
# A sites argument: a preset name, or module names.
SiteSpec = str | Sequence[str]

_NUMBERED = re.compile(r"(?:^|\.)\d+(?:\.|$)")


def _in_block(name: str) -> bool:
    """Inside a repeated block (under a numbered child of a ModuleList)."""
    return _NUMBERED.search(name) is not None


def _last(name: str, *candidates: str) -> bool:
    """The last component of ``name`` is one of ``candidates``."""
    return name.rsplit(".", 1)[-1] in candidates


# Opt-in heuristics by module class and name for models without a registry entry.
GENERIC_PRESETS: dict[str, Selector] = {
    "generic:layernorm": lambda name, m: _in_block(name) and norm_spec(m) is not None,
    "generic:o_proj": lambda name, m: _in_block(name) and _last(name, "o_proj", "out_proj", "c_proj") and ".mlp." not in name,
    "generic:attn_out": lambda name, m: _in_block(name) and _last(name, "self_attn", "attn", "attention", "attn1", "attn2"),
    "generic:mlp_out": lambda name, m: _in_block(name) and _last(name, "mlp", "feed_forward", "ff"),
}


def presets(model: nn.Module) -> list[str]:
    """The preset names :func:`sites` accepts for ``model``: its family's, then the generic ones."""
    family = SITE_FAMILIES.get(model_key(model))
    return [*(family.presets if family else ()), *GENERIC_PRESETS]


def _preset_selector(model: nn.Module, preset: str) -> Selector:
    if preset in GENERIC_PRESETS:
        return GENERIC_PRESETS[preset]
    family = SITE_FAMILIES.get(model_key(model))
    if family is None:
        raise ValueError(
            f"no site presets for {describe(model)}; supported model types: {sorted(SITE_FAMILIES)}. "
            f"Select sites with pattern= or filter= (preset=None), or a generic preset {list(GENERIC_PRESETS)}"
        )
    if preset not in family.presets:
        raise ValueError(f"unknown site preset {preset!r} for {describe(model)}; presets: {presets(model)}")
    return lambda name, m: family.matches(preset, name)


def _pattern_selector(pattern: str | re.Pattern[str]) -> Selector:
    if isinstance(pattern, re.Pattern):
        return lambda name, m: pattern.search(name) is not None
    if isinstance(pattern, str):
        return lambda name, m: fnmatch.fnmatchcase(name, pattern)
    raise TypeError(f"pattern must be a glob string or a compiled regex, got {type(pattern).__name__}")


def sites(
    model: nn.Module,
    preset: str | None = "post_layernorm",
    *,
    pattern: str | re.Pattern[str] | None = None,
    filter: Selector | None = None,
) -> list[str]:
    """Qualified names of the modules selected in ``model``, in ``named_modules`` order.

    Args:
        model: a supported transformers model (by ``config.model_type``: llama, mistral, qwen2,
            qwen3, gemma, gemma2, gemma3_text, phi3, gpt2, bert) or diffusers model (by class:
            UNet2DConditionModel, FluxTransformer2DModel, SD3Transformer2DModel,
            PixArtTransformer2DModel), or any module with ``preset=None`` or a generic preset.
        preset: ``post_layernorm`` (the norm after attention; Gemma2/3 and BERT: the post-
            attention and post-feedforward norms), ``layernorm`` (every norm of the repeated
            blocks except per-head q/k norms), ``o_proj`` (attention output projection),
            ``attn_out`` (attention module), ``mlp_out`` (MLP module); per-model choices are in
            :mod:`act_fast.integrations.transformers` and :mod:`act_fast.integrations.diffusers`.
            ``generic:layernorm`` / ``generic:o_proj`` / ``generic:attn_out`` / ``generic:mlp_out``
            are name and class heuristics for any model. ``None``: select by ``pattern`` /
            ``filter`` alone.
        pattern: a glob over the full qualified name (:func:`fnmatch.fnmatchcase`) or a compiled
            regex (``re.search``).
        filter: ``(name, module) -> bool``.

    With several of ``preset``, ``pattern`` and ``filter``, a module must satisfy all of them.

    Raises:
        ValueError: an unknown preset (the model's presets listed), a model without presets (the
            supported model types listed), nothing to select by, or a selection matching nothing.
        TypeError: a ``pattern`` that is neither a string nor a compiled regex.
    """
    selectors = []
    if preset is not None:
        selectors.append(_preset_selector(model, preset))
    if pattern is not None:
        selectors.append(_pattern_selector(pattern))
    if filter is not None:
        selectors.append(filter)
    if not selectors:
        raise ValueError("sites() needs a preset, a pattern= or a filter=")
    found = [name for name, module in model.named_modules() if name and all(s(name, module) for s in selectors)]
    if not found:
        criteria = ", ".join(f"{k}={v!r}" for k, v in (("preset", preset), ("pattern", pattern), ("filter", filter)) if v is not None)
        raise ValueError(f"no module of {describe(model)} matches {criteria}")
    return found


def site_names(model: nn.Module, spec: SiteSpec) -> list[str]:
    """The module names a ``sites`` argument means: a string is a preset of :func:`sites`, a
    sequence is module names (at least one). A string that is no preset but names a module is read
    as that one module, with a DeprecationWarning (the first release read strings that way in
    ``collect``)."""
    if isinstance(spec, str):
        if spec not in presets(model) and spec in dict(model.named_modules()):
            warnings.warn(
                f"sites={spec!r} names a module, but a string is a preset name; pass [{spec!r}] for one module",
                DeprecationWarning,
                stacklevel=3,
            )
            return [spec]
        return sites(model, spec)
    if not isinstance(spec, Sequence) or not all(isinstance(s, str) for s in spec):
        raise TypeError(f"sites must be a preset name or a list of module names, got {type(spec).__name__}")
    if not spec:
        raise ValueError("sites is empty: give a preset name or at least one module name")
    return list(spec)
