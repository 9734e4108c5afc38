"""This rank's channels of a tensor-parallel site (act_fast.vllm.shards) on vLLM's own linear classes,
given the attributes vLLM sets under tensor parallelism; the engine test (test_tensor_parallel.py)
checks the layouts against a real tensor_parallel_size=2 engine."""

from __future__ import annotations

import pytest
from torch import nn

from engine_support import require_vllm

require_vllm()

from act_fast.vllm.shards import ShardError, rank_shard  # noqa: E402


def _layer(cls: type, **attrs) -> nn.Module:
    """An instance of vLLM's ``cls`` carrying only the attributes the layout depends on (the real
    constructor needs an initialised tensor-parallel group)."""
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    for name, value in attrs.items():
        setattr(module, name, value)
    return module


def _qkv(rank: int, tp: int, heads: int, kv_heads: int, head_size: int = 8):
    from vllm.model_executor.layers.linear import QKVParallelLinear

    replicas = max(1, tp // kv_heads)
    return _layer(
        QKVParallelLinear, tp_size=tp, tp_rank=rank, gather_output=False, head_size=head_size, v_head_size=head_size,
        total_num_heads=heads, total_num_kv_heads=kv_heads, num_heads=heads // tp, num_kv_heads=max(1, kv_heads // tp),
        num_kv_head_replicas=replicas,
    )


def test_qkv_rank_gets_its_query_heads_and_its_kv_group():
    # 4 query heads, 2 KV heads of 8: whole output [q 0:32 | k 32:48 | v 48:64]
    assert rank_shard(_qkv(1, 2, 4, 2)).ranges == ((16, 32), (40, 48), (56, 64))
    # tp 4 > 2 KV heads: each KV head is replicated on 2 ranks; rank 3 has query head 3 and KV group 1
    shard = rank_shard(_qkv(3, 4, 4, 2))
    assert shard.channels == 64 and shard.ranges == ((24, 32), (40, 48), (56, 64)) and shard.width == 24
    assert rank_shard(_qkv(2, 4, 4, 2)).ranges == ((16, 24), (40, 48), (56, 64))


def test_merged_and_plain_column_parallel():
    from vllm.model_executor.layers.linear import ColumnParallelLinear, MergedColumnParallelLinear

    gate_up = _layer(MergedColumnParallelLinear, tp_size=2, tp_rank=1, gather_output=False, output_sizes=[128, 128])
    assert rank_shard(gate_up).ranges == ((64, 128), (192, 256)) and rank_shard(gate_up).channels == 256
    plain = _layer(ColumnParallelLinear, tp_size=2, tp_rank=1, gather_output=False, output_size=96, output_size_per_partition=48)
    assert rank_shard(plain).ranges == ((48, 96),)


def test_unsplit_outputs_have_no_shard():
    from vllm.model_executor.layers.linear import ColumnParallelLinear

    assert rank_shard(_qkv(0, 1, 4, 2)) is None  # tensor_parallel_size=1
    gathered = _layer(ColumnParallelLinear, tp_size=2, tp_rank=0, gather_output=True, output_size=96, output_size_per_partition=48)
    assert rank_shard(gathered) is None
    assert rank_shard(nn.Linear(4, 4)) is None


def test_unknown_column_parallel_layout_is_refused():
    from vllm.model_executor.layers.linear import ColumnParallelLinear

    class PackedProjection(ColumnParallelLinear):
        pass

    module = _layer(PackedProjection, tp_size=2, tp_rank=0, gather_output=False, output_size=96, output_size_per_partition=48)
    with pytest.raises(ShardError, match="PackedProjection splits its output channels across the 2 tensor-parallel ranks"):
        rank_shard(module)


def test_attention_output_is_refused_under_tensor_parallelism(monkeypatch):
    import vllm.distributed
    from vllm.model_executor.layers.attention.attention import Attention

    attention = _layer(Attention, num_heads=1, head_size=32)
    monkeypatch.setattr(vllm.distributed, "get_tensor_model_parallel_world_size", lambda: 2)
    with pytest.raises(ShardError, match="only this rank's 1 heads under tensor_parallel_size=2"):
        rank_shard(attention)
    monkeypatch.setattr(vllm.distributed, "get_tensor_model_parallel_world_size", lambda: 1)
    assert rank_shard(attention) is None
