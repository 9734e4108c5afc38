"""Estimators: per-channel transport maps from activation statistics (DESIGN.md §1)."""

from act_fast.estimators.closed_form import METHODS, fit_map
from act_fast.estimators.fit import fit
from act_fast.estimators.lineas import LineasMaps, SupportReport, fit_lineas
from act_fast.estimators.reference_import import import_reference_maps
from act_fast.estimators.support import SUPPORT_PRESETS, support_levels

__all__ = ["METHODS", "SUPPORT_PRESETS", "LineasMaps", "SupportReport", "fit", "fit_lineas", "fit_map", "import_reference_maps", "support_levels"]
