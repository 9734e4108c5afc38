"""Model support as data (docs/design.md §3): site presets per model type, the norm classes the
steering code can fuse or fold into, and the linear classes it can fold into. Depends on torch only
(transformers and diffusers are never imported), so every other act_fast module may import from
this package."""

from act_fast.integrations.families import PRESET_NAMES, SiteFamily
from act_fast.integrations.fold_targets import LINEAR_CLASSES, FoldTarget, fold_target
from act_fast.integrations.hosts import host_refusals, is_adapter_layer, wrapped_site
from act_fast.integrations.norms import NORM_CLASSES, NormSpec, norm_spec
from act_fast.integrations.registry import SITE_FAMILIES, model_key
from act_fast.integrations.selection import GENERIC_PRESETS, SiteSpec, presets, site_names, sites

__all__ = [
    "GENERIC_PRESETS",
    "LINEAR_CLASSES",
    "NORM_CLASSES",
    "PRESET_NAMES",
    "SITE_FAMILIES",
    "FoldTarget",
    "NormSpec",
    "SiteFamily",
    "SiteSpec",
    "fold_target",
    "host_refusals",
    "is_adapter_layer",
    "model_key",
    "norm_spec",
    "presets",
    "site_names",
    "sites",
    "wrapped_site",
]
