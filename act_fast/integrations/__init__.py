"""Model support as data (DESIGN.md §3): site presets per model type and the norm classes the
steering code can fuse or fold into. Depends on torch only (transformers and diffusers are never
imported), so every other act_fast module may import from this package."""

from act_fast.integrations.families import PRESET_NAMES, SiteFamily
from act_fast.integrations.norms import NORM_CLASSES, NormSpec, norm_spec
from act_fast.integrations.registry import SITE_FAMILIES, model_key
from act_fast.integrations.sites import GENERIC_PRESETS, presets, sites

__all__ = [
    "GENERIC_PRESETS",
    "NORM_CLASSES",
    "PRESET_NAMES",
    "SITE_FAMILIES",
    "NormSpec",
    "SiteFamily",
    "model_key",
    "norm_spec",
    "presets",
    "sites",
]
