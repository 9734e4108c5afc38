"""act_fast: steer generative models by transporting their activations (AcT, LinEAS).

See DESIGN.md for the math. Public entry points:

- :mod:`act_fast.ops`: the fused kernels (``affine_transport``, ``rms_norm_transport``,
  ``layer_norm_transport``) registered as ``torch.ops.act_fast.*`` custom ops.
"""

from act_fast import ops
from act_fast._version import __version__
from act_fast.integrations import sites
from act_fast.stats import ChannelStats, collect
from act_fast.stats.io import load_stats, save_stats
from act_fast.maps import AffineMap, SteeringMaps, load_maps
from act_fast.estimators import fit, fit_lineas, fit_map, import_reference_maps
from act_fast.steer import SteeringHandle, steer

__all__ = [
    "AffineMap",
    "ChannelStats",
    "SteeringHandle",
    "SteeringMaps",
    "__version__",
    "collect",
    "fit",
    "fit_lineas",
    "fit_map",
    "import_reference_maps",
    "load_maps",
    "load_stats",
    "ops",
    "save_stats",
    "sites",
    "steer",
]
