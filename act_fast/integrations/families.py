"""``SiteFamily``: where a family of models keeps its sites, as regexes over module names."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

PRESET_NAMES = ("post_layernorm", "layernorm", "o_proj", "attn_out", "mlp_out")


@dataclass(frozen=True)
class SiteFamily:
    """The site presets of one model family.

    A module is selected by preset ``p`` when its qualified name is ``<anything>.<block>.<inner>``
    (or ``<block>.<inner>``) with ``block`` matching :attr:`block` and ``inner`` matching
    ``presets[p]``. The prefix is free, so one family serves the bare model and its wrappers
    (``LlamaModel``, ``LlamaForCausalLM``, a PEFT wrapper, …).

    Attributes:
        block: regex of a repeated block's name, e.g. ``r"layers\\.\\d+"``.
        presets: preset name -> regex of the module name inside the block.
    """

    block: str
    presets: Mapping[str, str]

    def matches(self, preset: str, name: str) -> bool:
        """Whether preset ``preset`` (a key of :attr:`presets`) selects the module ``name``."""
        return _compile(self.block, self.presets[preset]).fullmatch(name) is not None

    def with_presets(self, **presets: str) -> SiteFamily:
        """A family with the same blocks and some presets replaced."""
        return SiteFamily(self.block, {**self.presets, **presets})


@lru_cache(maxsize=None)
def _compile(block: str, inner: str) -> re.Pattern[str]:
    return re.compile(rf"(?:.*\.)?(?:{block})\.(?:{inner})")
