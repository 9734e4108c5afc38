"""Which output channels of a site each tensor-parallel rank computes.

Under ``tensor_parallel_size = T > 1`` vLLM splits column-parallel linears by output channel and
does not gather them: rank ``r`` of ``ColumnParallelLinear`` computes the ``r``-th contiguous
``1/T`` of the output; ``MergedColumnParallelLinear`` (``gate_up_proj``) the ``r``-th ``1/T`` of
each of its merged outputs; ``QKVParallelLinear`` (``qkv_proj``) its query heads, then the key and
value heads of KV group ``r // replicas`` (KV heads are replicated when ``T`` exceeds their count).
A map is fitted on the whole output, laid out as at ``tensor_parallel_size=1`` (transformers'
``q_proj, k_proj, v_proj`` / ``gate_proj, up_proj`` outputs concatenated), so each rank steers its
channels with the same channels of the map.

Refused under T > 1, naming the reason: column-parallel subclasses whose layout act_fast does not
know, and vLLM's ``Attention`` (each rank outputs its own heads only).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


class ShardError(ValueError):
    """A site whose output is split across tensor-parallel ranks in a way act_fast cannot steer."""


@dataclass(frozen=True)
class Shard:
    """``channels``: width of the whole output (the map's width); ``ranges``: the ``[start, stop)``
    ranges of whole-output channels this rank computes, in the order of its output."""

    channels: int
    ranges: tuple[tuple[int, int], ...]

    @property
    def width(self) -> int:
        return sum(stop - start for start, stop in self.ranges)


def _qkv(module: nn.Module, rank: int) -> Shard:
    hs, vhs = module.head_size, module.v_head_size
    q_width, k_width = module.total_num_heads * hs, module.total_num_kv_heads * hs
    q = rank * module.num_heads * hs
    group = rank // module.num_kv_head_replicas  # vLLM's weight loader: tp_rank // num_kv_head_replicas
    k = q_width + group * module.num_kv_heads * hs
    v = q_width + k_width + group * module.num_kv_heads * vhs
    ranges = ((q, q + module.num_heads * hs), (k, k + module.num_kv_heads * hs), (v, v + module.num_kv_heads * vhs))
    return Shard(q_width + k_width + module.total_num_kv_heads * vhs, ranges)


def _merged(module: nn.Module, rank: int, tp: int) -> Shard:
    ranges, offset = [], 0
    for size in module.output_sizes:
        part = size // tp
        ranges.append((offset + rank * part, offset + (rank + 1) * part))
        offset += size
    return Shard(offset, tuple(ranges))


def rank_shard(module: nn.Module) -> Shard | None:
    """This rank's channels of ``module``'s output, or None when every rank computes all of them.

    Raises:
        ShardError: the module's output is split across ranks in a way act_fast cannot steer (the
            message says why and what to steer instead).
    """
    from vllm.model_executor.layers.attention.attention import Attention
    from vllm.model_executor.layers.linear import ColumnParallelLinear, MergedColumnParallelLinear, QKVParallelLinear

    if isinstance(module, ColumnParallelLinear):
        tp, rank = module.tp_size, module.tp_rank
        if tp == 1 or module.gather_output:
            return None
        kind = type(module)
        if kind is QKVParallelLinear:
            return _qkv(module, rank)
        if kind is MergedColumnParallelLinear:
            return _merged(module, rank, tp)
        if kind is ColumnParallelLinear:
            part = module.output_size_per_partition
            return Shard(module.output_size, ((rank * part, (rank + 1) * part),))
        raise ShardError(
            f"vLLM's {kind.__name__} splits its output channels across the {tp} tensor-parallel ranks in a layout act_fast "
            "does not know; steer it with tensor_parallel_size=1"
        )
    if isinstance(module, Attention):
        from vllm.distributed import get_tensor_model_parallel_world_size

        tp = get_tensor_model_parallel_world_size()
        if tp > 1:
            raise ShardError(
                f"vLLM's Attention outputs only this rank's {module.num_heads} heads under tensor_parallel_size={tp} (the heads "
                "are gathered by o_proj's all-reduce); steer qkv_proj or o_proj instead, or use tensor_parallel_size=1"
            )
    return None
