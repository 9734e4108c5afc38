"""Pooling of one module output into statistics rows, with padding kept out (docs/design.md §1).

Every function is device-side only (no host synchronisation): rows that must not count come
back flagged in a row mask instead of being removed.
"""

from __future__ import annotations

import torch
from torch import Tensor

POOLINGS = ("mean", "last", "max", "min", "none")


def as_tokens(out: Tensor, site: str, channel_dim: int) -> Tensor:
    """A module output as ``[B, T, C]``: channels-last ``[B, T, C]`` as is, ``[B, C]`` as one token
    per row, conv features (``channel_dim == 1``: ``[B, C, *spatial]``, see
    :func:`act_fast.modeling.output_channel_dim`) as ``[B, H·W…, C]`` (pooling then runs over space)."""
    if out.ndim >= 3 and channel_dim == 1:
        return out.flatten(2).transpose(1, 2)
    if out.ndim == 3:
        return out
    if out.ndim == 2:
        return out[:, None, :]
    raise ValueError(f"site {site!r}: cannot pool an output of shape {list(out.shape)}; expected [B, C], [B, T, C] or [B, C, H, W]")


def pool(tokens: Tensor, mask: Tensor | None, pooling: str) -> tuple[Tensor, Tensor | None]:
    """Pools ``tokens [B, T, C]`` over the token dim, ignoring padding.

    Args:
        tokens: ``[B, T, C]`` floating.
        mask: ``[B, T]`` bool (True = real token) or None (no padding).
        pooling: ``mean`` / ``last`` / ``max`` / ``min`` over real tokens, or ``none`` (every token
            is a row).

    Returns:
        ``(rows [R, C], row_mask [R] or None)``: ``R = B`` for pooling, ``B·T`` for ``none``.
        Pooled rows are float32 (float64 for float64 input); ``none`` keeps the input dtype.
        A prompt made only of padding is flagged False in the row mask.
    """
    b, t, c = tokens.shape
    if pooling == "none":
        rows = tokens.reshape(b * t, c)
        return rows, None if mask is None else mask.reshape(b * t)
    xf = tokens if tokens.dtype == torch.float64 else tokens.float()
    if mask is None:
        if pooling == "mean":
            return xf.mean(1), None
        if pooling == "last":
            return xf[:, -1], None
        if pooling == "max":
            return xf.amax(1), None
        return xf.amin(1), None
    keep = mask[:, :, None]
    has_tokens = mask.any(1)
    if pooling == "mean":
        total = torch.where(keep, xf, 0.0).sum(1)
        return total / mask.sum(1, keepdim=True).clamp_min(1).to(xf.dtype), has_tokens
    if pooling == "last":
        # Index of the last real token; works for left and right padding alike.
        positions = torch.arange(1, t + 1, device=mask.device)
        last = (mask.to(torch.int64) * positions).amax(1).sub(1).clamp_min(0)
        return xf[torch.arange(b, device=xf.device), last], has_tokens
    if pooling == "max":
        return torch.where(keep, xf, float("-inf")).amax(1), has_tokens
    return torch.where(keep, xf, float("inf")).amin(1), has_tokens
