"""Streaming per-channel activation statistics (docs/design.md §2) and their collection from models."""

from act_fast.stats.channel_stats import ChannelStats
from act_fast.stats.collection import collect
from act_fast.stats.histogram import (
    HistogramParams,
    HistogramQuantiles,
    coupled_covariance,
    cross_moment,
    histogram_auroc,
    midpoint_grid,
    quantile_error_bound,
)

__all__ = [
    "ChannelStats",
    "HistogramParams",
    "HistogramQuantiles",
    "collect",
    "coupled_covariance",
    "cross_moment",
    "histogram_auroc",
    "midpoint_grid",
    "quantile_error_bound",
]
