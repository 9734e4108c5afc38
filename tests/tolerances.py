"""The one tolerance table of the test suite: kernel vs reference, per output dtype.

Kernel and reference both compute in float32 (float64 for float64 input) in the same order;
they may differ by FMA contraction, reduction order and the final rounding to the output dtype.
So bf16/fp16 allow about one unit in the last place of the output dtype (2^-8 and 2^-11
relative), float32 allows reduction-order error over a few thousand terms, float64 likewise.
"""

import torch

TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float64: {"atol": 1e-10, "rtol": 1e-10},
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.bfloat16: {"atol": 1e-2, "rtol": 1.6e-2},
    torch.float16: {"atol": 1e-3, "rtol": 1e-3},
}

FLOAT_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ALL_DTYPES = FLOAT_DTYPES + [torch.float64]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, **kwargs) -> None:
    """``torch.testing.assert_close`` with the table's tolerance for ``expected.dtype``."""
    tol = TOLERANCES[expected.dtype]
    torch.testing.assert_close(actual, expected, atol=tol["atol"], rtol=tol["rtol"], **kwargs)
