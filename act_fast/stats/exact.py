"""Exact-mode queries on raw samples: order statistics instead of histogram buckets.

Non-finite samples are dropped per channel (they are counted apart, docs/design.md §2), so channels
may hold different numbers of samples. Samples are kept sorted per channel, non-finite ones
pushed to the end as +inf, with ``n_c`` the finite count of channel ``c``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sort_samples(samples: Tensor) -> tuple[Tensor, Tensor]:
    """``samples [N, C]`` → (float64 ``[C, N]`` sorted per channel with non-finite values last as
    +inf, int64 ``[C]`` finite counts)."""
    s = samples.to(torch.float64).t()
    finite = torch.isfinite(s)
    s = torch.where(finite, s, math.inf).sort(dim=1).values
    return s.contiguous(), finite.sum(1)


class SampleQuantiles:
    """Empirical quantile function of per-channel samples.

    Args:
        sorted_samples: float64 ``[C, N]`` from :func:`sort_samples`.
        counts: int64 ``[C]`` finite samples per channel.
    """

    def __init__(self, sorted_samples: Tensor, counts: Tensor) -> None:
        self.sorted = sorted_samples
        self.counts = counts
        self.num_channels = sorted_samples.shape[0]

    def narrow(self, start: int, length: int) -> "SampleQuantiles":
        return SampleQuantiles(self.sorted.narrow(0, start, length), self.counts.narrow(0, start, length))

    def _gather(self, idx: Tensor) -> Tensor:
        v = self.sorted.gather(1, idx.clamp(0, max(self.sorted.shape[1] - 1, 0)))
        return torch.where(self.counts[:, None] > 0, v, math.nan)

    def at(self, u: Tensor) -> Tensor:
        """Generalised inverse ``x_(⌈u·n⌉)`` (step function) at levels ``u`` float64 ``[C, P]``."""
        n = self.counts[:, None]
        idx = torch.ceil(u * n.to(torch.float64)).to(torch.int64) - 1
        return self._gather(torch.minimum(idx.clamp_min(0), (n - 1).clamp_min(0)))

    def offset_at(self, u: Tensor, shift: Tensor) -> Tensor:
        """``x_(⌈u·n⌉) − shift`` at levels ``u [C, P]``, ``shift`` float64 ``[C]`` (float64 samples minus
        a nearby mean: no cancellation beyond the samples' own precision)."""
        return self.at(u) - shift.to(torch.float64)[:, None]

    def linear(self, u: Tensor) -> Tensor:
        """``torch.quantile`` semantics (linear interpolation between order statistics) at ``u [C, P]``."""
        n = self.counts[:, None]
        pos = u * (n - 1).clamp_min(0).to(torch.float64)
        lo = pos.floor()
        frac = pos - lo
        lo_i = lo.to(torch.int64)
        hi_i = torch.minimum(lo_i + 1, (n - 1).clamp_min(0))
        a, b = self._gather(lo_i), self._gather(hi_i)
        return torch.where(frac > 0, a + frac * (b - a), a)

    def breakpoints(self) -> Tensor:
        """``i / n_c`` for ``i = 1 .. N - 1`` (clipped to 1 past ``n_c``): float64 ``[C, N - 1]``."""
        num = self.sorted.shape[1]
        i = torch.arange(1, max(num, 1), dtype=torch.float64, device=self.sorted.device)
        return (i[None, :] / self.counts.clamp_min(1).to(torch.float64)[:, None]).clamp_max(1.0)


def sample_auroc(pos: SampleQuantiles, neg: SampleQuantiles) -> Tensor:
    """Per-channel AUROC ``P(X_pos > X_neg) + ½ P(X_pos = X_neg)`` (Mann-Whitney), float64 ``[C]``."""
    if pos.num_channels != neg.num_channels:
        raise ValueError(f"AUROC needs the same channel count on both sides, got {pos.num_channels} and {neg.num_channels}")
    below = torch.searchsorted(neg.sorted, pos.sorted, side="left").to(torch.float64)
    not_above = torch.searchsorted(neg.sorted, pos.sorted, side="right").to(torch.float64)
    n_neg = neg.counts.to(torch.float64)[:, None]
    # +inf placeholders of the negatives sort past every finite positive; clip ranks to n_neg.
    below, not_above = torch.minimum(below, n_neg), torch.minimum(not_above, n_neg)
    j = torch.arange(pos.sorted.shape[1], device=pos.sorted.device)
    counted = j[None, :] < pos.counts[:, None]
    score = torch.where(counted, below + 0.5 * (not_above - below), 0.0).sum(1)
    return score / (pos.counts.to(torch.float64) * neg.counts.to(torch.float64)).clamp_min(1.0)
