"""Per-token λ and map-slot buffers, filled once per scheduler step.

vLLM runs every scheduled token of every request as one flattened batch ``[num_tokens, C]``,
request after request (each request's tokens contiguous), possibly followed by padding tokens.
The buffers hold one λ and one map slot per token; the steered modules read ``buffer[:num_tokens]``.
They are allocated once, at their maximum size, so their addresses never change (CUDA graphs and
compiled graphs capture them). Invariant between steps: every entry past the current step's real
tokens is 0 (λ = 0, slot 0 = identity), so padding and dummy runs are unsteered.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class TokenControl:
    """``strength``: float32 ``[max_tokens]``; ``map_index``: int32 ``[max_tokens]``, on ``device``.

    With ``width`` S > 0 (an engine with several map sets) both are ``[max_tokens, S]``: each
    token's chain of map slots and their λ (unused positions slot 0, λ 0), read by the ops as a
    composition ``y = T_S(… T_1(x))``.
    """

    def __init__(self, max_tokens: int, device: torch.device, width: int = 0) -> None:
        self.max_tokens = int(max_tokens)
        self.device = torch.device(device)
        self.width = int(width)
        shape = (self.max_tokens,) if self.width == 0 else (self.max_tokens, self.width)
        self.strength = torch.zeros(shape, dtype=torch.float32, device=self.device)
        self.map_index = torch.zeros(shape, dtype=torch.int32, device=self.device)
        self._written = 0  # entries [0, _written) may be non-zero

    def fill(self, slots: np.ndarray, strengths: np.ndarray, tokens_per_request: np.ndarray) -> None:
        """Writes one step: request ``r`` (in batch order) gets ``slots[r]`` and ``strengths[r]`` (rows
        of ``S`` with a width) on its ``tokens_per_request[r]`` consecutive tokens; the rest of the
        buffers is reset to 0.

        Nothing is copied when the step and the previous one are both wholly unsteered.
        """
        counts = np.asarray(tokens_per_request, dtype=np.int64)
        n = int(counts.sum())
        if n > self.max_tokens:
            raise ValueError(f"act_fast: a step of {n} tokens exceeds the steering buffers ({self.max_tokens} tokens, max_num_batched_tokens)")
        steered = bool(np.any(slots)) or bool(np.any(strengths))
        if not steered:
            self._reset(0)
            return
        per_token_slot = np.repeat(np.asarray(slots, dtype=np.int32), counts, axis=0)
        per_token_strength = np.repeat(np.asarray(strengths, dtype=np.float32), counts, axis=0)
        self._copy(self.map_index, per_token_slot)
        self._copy(self.strength, per_token_strength)
        self._reset(n)
        self._written = n

    def _reset(self, start: int) -> None:
        if self._written > start:
            self.strength[start : self._written].zero_()
            self.map_index[start : self._written].zero_()
        self._written = min(self._written, start)

    def _copy(self, dst: Tensor, values: np.ndarray) -> None:
        src = torch.from_numpy(values)
        if self.device.type == "cuda":
            # Stream-ordered after the previous step's kernels; the pinned staging buffer comes from
            # the caching host allocator, which keeps it alive until the copy has run.
            src = src.pin_memory()
            dst[: src.shape[0]].copy_(src, non_blocking=True)
        else:
            dst[: src.shape[0]].copy_(src)
