"""act_fast: steer generative models by transporting their activations (AcT, LinEAS).

The math, the layers and the file formats are in docs/design.md. Entry points:

- :func:`sites`: the module names to collect or steer (presets per model family, patterns, filters).
- :func:`collect`: per-site streaming :class:`ChannelStats` from a model over batches;
  :func:`save_stats` / :func:`load_stats` for statistics files.
- :func:`fit_map`, :func:`fit`, :func:`fit_lineas`: transport maps (Linear/Mean/Gaussian-AcT, AURA,
  mean difference; LinEAS) as :class:`SteeringMaps`; :func:`load_maps` and
  :meth:`SteeringMaps.save` for their safetensors files; :func:`import_reference_maps` for maps
  fitted by the AcT reference code; :func:`from_repeng`, :func:`from_steering_vectors`,
  :func:`from_vectors` and ``.gguf`` control vectors in :func:`load_maps` for steering vectors made
  elsewhere; :meth:`SteeringMaps.to_gguf` and :meth:`SteeringMaps.push_to_hub` to hand them on
  (:mod:`act_fast.interop`).
- :func:`steer`: apply maps inside a model (fold / fused / op per site) with a strength λ, per
  request if wanted; returns a :class:`SteeringHandle`.
- :mod:`act_fast.ops`: the kernels (``affine_transport``, ``rms_norm_transport``,
  ``layer_norm_transport``, ``group_norm_transport``) as ``torch.ops.act_fast.*`` custom ops
  (Triton on CUDA, compiled C++ on CPU, a pure-torch reference).
- The ``act-fast`` command (:mod:`act_fast.cli`): ``collect`` (torchrun, resumable), ``fit``,
  ``generate``, ``inspect``, ``bench``, ``demo``, ``build-cpu``; the vLLM plugin
  (:mod:`act_fast.vllm`).
"""

from act_fast import ops
from act_fast._version import __version__
from act_fast.estimators import fit, fit_lineas, fit_map, import_reference_maps
from act_fast.integrations import sites
from act_fast.interop import from_repeng, from_steering_vectors, from_vectors
from act_fast.maps import AffineMap, SteeringMaps, load_maps
from act_fast.stats import ChannelStats, collect
from act_fast.stats.io import load_stats, save_stats
from act_fast.steering import SteeringHandle, steer

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
    "from_repeng",
    "from_steering_vectors",
    "from_vectors",
    "import_reference_maps",
    "load_maps",
    "load_stats",
    "ops",
    "save_stats",
    "sites",
    "steer",
]
