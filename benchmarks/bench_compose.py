"""Composition (issue 22): a chain of S = 2 and 4 maps per row against one map per row, in the
compiled CPU kernels (csrc/), one intra-op thread, [4096, 4096], timed alternately in the same run.

Both sides move the same bytes: x read once and y written once; the maps ``[K, C]`` (K = 17,
slot 0 the identity; supports ``[-2, 2]``, or none in the ``-nosupport`` cases) are read from cache. Rows pick their maps as a
steering batch does: row r uses chain ``r mod 16`` (S maps, each with its own λ, ``[R, S]``
map_index and λ) against map ``r mod 16`` (one map, ``[R]`` map_index and λ), so consecutive rows
never share a chain: the worst case for the kernels' map loads.

| case | act_fast | peer | target |
| --- | --- | --- | --- |
| ``transport_out-chainS`` | ``affine_transport(x, w, b, λ[R,S], lo, hi, map_index=[R,S], out=o)`` | the same with ``[R]`` | ≤ 1.15× |
| ``rms_norm_transport-chainS`` | ``rms_norm_transport(x, nw, w, b, λ[R,S], lo, hi, map_index=[R,S])`` | the same with ``[R]`` | ≤ 1.15× |

Run (``TRITON_INTERPRET`` unset)::

    python -m pytest benchmarks/bench_compose.py --benchmark-only -p no:randomly \\
        --benchmark-json benchmarks/results/cpu-compose-<date>.json
"""

from __future__ import annotations

import pytest
import torch
from bench_cpu import cpu_backend, paired  # noqa: F401  (cpu_backend: one thread, compiled kernels)

import act_fast as af
from act_fast.ops import cpu_kernels

SHAPE = (4096, 4096)
MAPS = 17  # slot 0 the identity + 16 sets
CHAINS = 16
TARGET = 1.15
CASES = {
    f"{op}-{dt}-chain{S}{'' if support else '-nosupport'}": (op, dtype, S, support)
    for op in ("transport_out", "rms_norm_transport")
    for dt, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    for S in (2, 4)
    for support in (True, False)
}


def _calls(op: str, dtype: torch.dtype, S: int, support: bool = True):
    """``(chain call, one-map call)`` on the same ``[R, C]`` input (maps with supports ``[-2, 2]``,
    or none: LinEAS maps have none)."""
    g = torch.Generator().manual_seed(0)
    R, C = SHAPE
    x = torch.randn(R, C, generator=g).to(dtype)
    w = 1.0 + 0.1 * torch.randn(MAPS, C, generator=g)
    b = 0.1 * torch.randn(MAPS, C, generator=g)
    lo, hi = torch.full((MAPS, C), -2.0), torch.full((MAPS, C), 2.0)
    w[0], b[0] = 1.0, 0.0
    if not support:
        lo = hi = None
    nw = (1.0 + 0.1 * torch.randn(C, generator=g)).to(dtype)
    chain = ((torch.arange(R)[:, None] % CHAINS) * 5 + torch.arange(S)[None, :] * 3) % (MAPS - 1) + 1
    chain = chain.to(torch.int32)
    lam_chain = 0.5 + 0.5 * torch.rand(R, S, generator=g)
    one = (torch.arange(R, dtype=torch.int32) % CHAINS) + 1
    lam_one = lam_chain[:, 0].contiguous()
    if op == "transport_out":
        out_a, out_b = torch.empty_like(x), torch.empty_like(x)
        return (
            lambda: af.ops.affine_transport(x, w, b, lam_chain, lo, hi, map_index=chain, out=out_a),
            lambda: af.ops.affine_transport(x, w, b, lam_one, lo, hi, map_index=one, out=out_b),
        )
    return (
        lambda: af.ops.rms_norm_transport(x, nw, w, b, lam_chain, lo, hi, cast_before_scale=True, map_index=chain),
        lambda: af.ops.rms_norm_transport(x, nw, w, b, lam_one, lo, hi, cast_before_scale=True, map_index=one),
    )


@pytest.mark.parametrize("case", list(CASES))
def bench_chain_vs_one_map(case, cpu_backend, benchmark, capsys):  # noqa: F811
    op, dtype, S, support = CASES[case]
    benchmark.group = f"composition {SHAPE[0]}x{SHAPE[1]}, one thread, chain of S vs one map per row"
    ours, peer = _calls(op, dtype, S, support)
    rounds = 15
    benchmark.pedantic(ours, rounds=rounds, iterations=1, warmup_rounds=1)
    stats = paired(ours, peer, rounds)
    benchmark.extra_info.update(stats)
    benchmark.extra_info.update(
        {"peer": "one map per row", "chain": S, "support": support, "target": TARGET, "shape": list(SHAPE), "threads": torch.get_num_threads(),
         "kernels": cpu_kernels.status()}
    )
    verdict = "met" if stats["ratio_cpu"] <= TARGET else "MISSED"
    with capsys.disabled():
        print(
            f"\n{case:34s} ratio {stats['ratio_cpu']:.3f}× cpu time ({stats['ours_cpu_ms']:.3g} / {stats['peer_cpu_ms']:.3g} ms, "
            f"spread {stats['ours_cpu_spread']:.2f}/{stats['peer_cpu_spread']:.2f}), {stats['ratio_wall']:.3f}× wall  "
            f"target ≤ {TARGET}: {verdict}"
        )
