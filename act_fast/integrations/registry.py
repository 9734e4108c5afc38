"""The registry of supported models: ``config.model_type`` (transformers) or class name
(diffusers) -> :class:`SiteFamily`. Add a model by adding an entry."""

from __future__ import annotations

from torch import nn

from act_fast.integrations.diffusers import DIFFUSERS_FAMILIES
from act_fast.integrations.families import SiteFamily
from act_fast.integrations.transformers import TRANSFORMERS_FAMILIES

SITE_FAMILIES: dict[str, SiteFamily] = {**TRANSFORMERS_FAMILIES, **DIFFUSERS_FAMILIES}


def model_key(model: nn.Module) -> str:
    """The registry key of ``model``: its ``config.model_type`` when set (transformers models and
    their wrappers), else the first registered class name in its MRO, else its class name."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if isinstance(model_type, str) and model_type:
        return model_type
    return next((c.__name__ for c in type(model).__mro__ if c.__name__ in SITE_FAMILIES), type(model).__name__)


def describe(model: nn.Module) -> str:
    """``LlamaForCausalLM (model_type 'llama')``, or the class name alone, for error messages."""
    key, name = model_key(model), type(model).__name__
    return name if key == name else f"{name} ({key!r})"
