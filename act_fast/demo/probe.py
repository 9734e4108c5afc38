"""A linear probe: L2-regularised logistic regression telling two topics' embeddings apart."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LinearProbe:
    """``p(positive | x) = sigmoid(x · weight + bias)``."""

    weight: Tensor
    bias: Tensor

    @classmethod
    def train(cls, negative: Tensor, positive: Tensor, l2: float = 1e-3, steps: int = 100) -> "LinearProbe":
        """Fits on ``negative [N, C]`` (label 0) and ``positive [M, C]`` (label 1) by full-batch
        L-BFGS from zero: deterministic, no seed needed."""
        x = torch.cat([negative, positive]).double()
        y = torch.cat([torch.zeros(len(negative)), torch.ones(len(positive))]).to(x)
        w = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device, requires_grad=True)
        b = torch.zeros((), dtype=x.dtype, device=x.device, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * w.square().sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        return cls(w.detach().float(), b.detach().float())

    def prob(self, x: Tensor) -> Tensor:
        """``p(positive)`` per row of ``x [N, C]``."""
        return torch.sigmoid(x.float() @ self.weight.to(x.device) + self.bias.to(x.device))
