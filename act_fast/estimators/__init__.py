"""Estimators: per-channel transport maps from activation statistics (docs/design.md §1)."""

from act_fast.estimators.closed_form import ESTIMATORS, METHODS, Estimator, fit_map
from act_fast.estimators.fitting import fit
from act_fast.estimators.lineas import LineasMaps, SupportReport, fit_lineas
from act_fast.estimators.reference_import import import_reference_maps
from act_fast.estimators.support import SUPPORT_PRESETS, support_levels

__all__ = [
    "ESTIMATORS",
    "METHODS",
    "SUPPORT_PRESETS",
    "Estimator",
    "LineasMaps",
    "SupportReport",
    "fit",
    "fit_lineas",
    "fit_map",
    "import_reference_maps",
    "support_levels",
]
