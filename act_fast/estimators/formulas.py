"""The closed-form map formulas of docs/design.md §1 on per-channel summaries (float64 ``[C]``
tensors), shared by :mod:`.closed_form` (summaries from :class:`act_fast.ChannelStats`) and
:mod:`.reference_import` (summaries read from the AcT reference implementation's files).
Each returns ``(w, b)``."""

from __future__ import annotations

import torch
from torch import Tensor

# A source channel whose std is below this fraction of |mean| has no spread left after float64
# rounding; regressing on it would divide by rounding noise.
ZERO_SPREAD_REL = 64 * torch.finfo(torch.float64).eps


def has_spread(var_s: Tensor, m_s: Tensor) -> Tensor:
    """Source channels whose variance is more than float64 rounding of their mean."""
    return var_s > (ZERO_SPREAD_REL * m_s.abs()).square()


def std_mask(std_s: Tensor, std_t: Tensor, std_eps: float) -> Tensor:
    """Channels where both stds exceed ``std_eps`` (a NaN std, from one sample, fails)."""
    return (std_s > std_eps) & (std_t > std_eps)


def linear_act(cov: Tensor, var_s: Tensor, m_s: Tensor, m_t: Tensor) -> tuple[Tensor, Tensor]:
    """``w = Cov(Q_s, Q_t) / Var(s)`` (population moments), ``b = m_t − w m_s``; a source channel
    with zero spread gets ``w = 1, b = m_t − m_s``."""
    spread = has_spread(var_s, m_s)
    w = torch.where(spread, cov / torch.where(spread, var_s, 1.0), 1.0)
    return w, m_t - w * m_s


def mean_act(m_s: Tensor, m_t: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """``w = 1, b = m_t − m_s`` on kept channels, identity elsewhere."""
    return torch.ones_like(m_s), torch.where(keep, m_t - m_s, 0.0)


def gaussian_act(m_s: Tensor, std_s: Tensor, m_t: Tensor, std_t: Tensor, keep: Tensor, spread: Tensor) -> tuple[Tensor, Tensor]:
    """``w = σ_t / σ_s, b = m_t − w m_s`` on kept channels (``w = 1`` where the source has no
    spread), identity elsewhere."""
    w = torch.where(keep & spread, std_t / torch.where(spread, std_s, 1.0), 1.0)
    return w, torch.where(keep, m_t - w * m_s, 0.0)


def aura(auroc: Tensor) -> tuple[Tensor, Tensor]:
    """``w = 1 − 2(AUROC − ½)`` where the AUROC of source vs target exceeds ½, else 1; ``b = 0``."""
    w = torch.where(auroc > 0.5, 1.0 - 2.0 * (auroc - 0.5), 1.0)
    return w, torch.zeros_like(w)


def mean_diff(m_s: Tensor, m_t: Tensor) -> tuple[Tensor, Tensor]:
    """The vector add ``w = 1, b = m_t − m_s`` on every channel (no mask)."""
    return torch.ones_like(m_s), m_t - m_s
