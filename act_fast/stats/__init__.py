"""Streaming per-channel activation statistics (docs/design.md §2) and their collection from models."""

from act_fast.stats.channel_stats import ChannelStats
from act_fast.stats.collection import collect
from act_fast.stats.histogram import HistogramParams, HistogramQuantiles, cross_moment, histogram_auroc, midpoint_grid

__all__ = [
    "ChannelStats",
    "HistogramParams",
    "HistogramQuantiles",
    "collect",
    "cross_moment",
    "histogram_auroc",
    "midpoint_grid",
]
