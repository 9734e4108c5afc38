"""Two gloo ranks on CPU, each over half the data, calibrated together (rank 0's first batch,
broadcast): the all-reduced state equals one process calibrated on that batch over all of the
data (histograms and counts bit-identical, moments to float64 rounding). Ranks that calibrate
apart are refused by all_reduce."""

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import act_fast as af


def data() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1001, 5, generator=g)
    x[:, 0] = 1e4 + 1e-2 * x[:, 0]
    x[:, 1] = x[:, 1].exp()
    x[17, 2], x[600, 3], x[900, 4] = math.nan, math.inf, -math.inf
    return x


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CHUNK = 97


def rank_part(x: torch.Tensor, rank: int) -> torch.Tensor:
    half = x.shape[0] // 2
    return x[:half] if rank == 0 else x[half:]


def _worker(rank: int, world: int, port: int, out_dir: str, exact: bool, calibrate: bool) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        chunks = rank_part(data(), rank).split(CHUNK)
        stats = af.ChannelStats(5, exact=exact)
        if calibrate:
            stats.calibrate(chunks[0], group=dist.group.WORLD, src=0)
        for chunk in chunks:
            stats.update(chunk)
        try:
            stats.all_reduce()
        except ValueError as e:
            (open(os.path.join(out_dir, f"rank{rank}.err"), "w")).write(str(e))
            return
        torch.save(stats.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("exact", [False, True])
def test_all_reduce_equals_single_process(exact, tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), exact, True), nprocs=2, join=True)
    x = data()
    single = af.ChannelStats(5, exact=exact).calibrate(rank_part(x, 0)[:CHUNK]).update(x)
    for rank in range(2):
        reduced = af.ChannelStats.from_state_dict(torch.load(tmp_path / f"rank{rank}.pt"))
        assert torch.equal(reduced.histogram, single.histogram)
        for name in ("count", "nan_count", "pos_inf_count", "neg_inf_count", "min", "max"):
            assert torch.equal(getattr(reduced, name), getattr(single, name)), name
        assert reduced.rows_seen == single.rows_seen
        std = single.var().sqrt()
        assert torch.all((reduced.mean - single.mean).abs() <= 1e-9 * std)
        # Chunked float64 Chan merges round differently from one pass (~1e-11 on the 1e4 channel).
        torch.testing.assert_close(reduced.var(), single.var(), rtol=1e-10, atol=0)
        if exact:
            torch.testing.assert_close(reduced.samples, single.samples, rtol=0, atol=0, equal_nan=True)
        assert reduced.calibrated
        for got, want in zip(reduced.calibration, single.calibration):
            assert torch.equal(got, want)


@pytest.mark.slow
def test_all_reduce_refuses_ranks_calibrated_apart(tmp_path):
    """Without calibrate(group=...), each rank calibrates on its own first batch: the collective
    check in all_reduce refuses on every rank (none hangs) and says what to do."""
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), False, False), nprocs=2, join=True)
    for rank in range(2):
        assert not (tmp_path / f"rank{rank}.pt").exists()
        message = (tmp_path / f"rank{rank}.err").read_text()
        assert "ranks hold different histogram calibrations" in message
        assert "calibrate(x, group=group)" in message


def _batches() -> list[dict]:
    g = torch.Generator().manual_seed(11)
    batches = []
    for i in range(6):
        mask = torch.ones(3, 7, dtype=torch.int64)
        mask[i % 3, : 1 + i % 4] = 0  # left padding of varying length
        batches.append({"input_ids": torch.randint(3, 100, (3, 7), generator=g), "attention_mask": mask})
    return batches


def _collect_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """Rank r collects batches r, r + W, … (interleaved shards) with collect(group=...), then all_reduce."""
    from tiny_models import tiny_llama

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = tiny_llama()
        stats = af.collect(model, _batches()[rank::world], "layernorm", pooling="none", group=dist.group.WORLD, progress=False)
        for s in stats.values():
            s.all_reduce()
        torch.save({site: s.state_dict() for site, s in stats.items()}, os.path.join(out_dir, f"collect{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_collect_with_a_group_merges_exactly(tmp_path):
    """Two ranks collecting interleaved shards with collect(group=...) and all_reduce give the
    histograms and counts of one process collecting every batch (rank 0's first batch is the global
    first batch, so both calibrate on it)."""
    from tiny_models import tiny_llama

    mp.spawn(_collect_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    single = af.collect(tiny_llama(), _batches(), "layernorm", pooling="none", progress=False)
    for rank in range(2):
        reduced = torch.load(tmp_path / f"collect{rank}.pt")
        assert list(reduced) == list(single)
        for site, sd in reduced.items():
            got = af.ChannelStats.from_state_dict(sd)
            assert torch.equal(got.histogram, single[site].histogram), site
            assert torch.equal(got.count, single[site].count)
            assert got.rows_seen == single[site].rows_seen


def _pending_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """Both ranks calibrate channels 0-1 on the same first batch; channel 2 has no finite value on
    rank 0, so it stays uncalibrated there."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x = data()[:200, :3].clone()
        if rank == 0:
            x[:, 2] = math.nan
        stats = af.ChannelStats(3).update(x)
        stats.all_reduce()
        torch.save(stats.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_adopts_a_channel_calibrated_on_another_rank_only(tmp_path):
    mp.spawn(_pending_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    for key in ("centre", "exp_offset", "calibrated_channels", "hist", "count"):
        assert torch.equal(states[0][key], states[1][key]), key
    reduced = af.ChannelStats.from_state_dict(states[0])
    assert reduced.calibrated and int(reduced.count[2]) == int(torch.isfinite(data()[:200, 2]).sum())
    assert torch.equal(reduced.calibration[0][2:], af.ChannelStats(1).update(data()[:200, 2:3]).calibration[0])
