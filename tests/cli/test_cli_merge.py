"""``act-fast merge``: statistics files collected apart, one file (issue 23 item 1)."""

import pytest
import torch

import act_fast as af
from act_fast.cli import main
from act_fast.stats.io import stats_metadata


def job(x: torch.Tensor, first: int) -> dict[str, af.ChannelStats]:
    """Two sites, calibrated by the job's own first batch of ``first`` rows."""
    out = {}
    for site, scale in (("a", 1.0), ("b", 1e3)):
        s = af.ChannelStats(x.shape[1]).update(x[:first] * scale)
        out[site] = s.update(x[first:] * scale)
    return out


def write(tmp_path, name, stats, **meta):
    path = tmp_path / name
    af.save_stats(stats, path, metadata={"pooling": "mean", "model_type": "llama", "model_fingerprint": "f" * 64, **meta})
    return path


def test_merge_files_of_different_calibrations(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 5, generator=g) + torch.tensor([0.0, 1e4, -3.0, 0.0, 50.0])
    paths = [write(tmp_path, f"{i}.safetensors", job(part, first)) for i, (part, first) in enumerate(zip(x.split(1000), (1, 300, 20)))]
    out = tmp_path / "all.safetensors"
    assert main(["merge", *map(str, paths), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3,000 rows from 3 files" in printed and "re-bucketed" in printed
    merged = af.load_stats(out)
    direct = job(x[:1000], 1)
    for p, (part, first) in zip(paths[1:], zip(x.split(1000)[1:], (300, 20))):
        for site, s in job(part, first).items():
            direct[site].merge(s)
    for site in ("a", "b"):
        assert torch.equal(merged[site].count, direct[site].count) and torch.equal(merged[site].histogram, direct[site].histogram)
        assert torch.equal(merged[site].min, direct[site].min) and merged[site].rows_seen == 3000
    meta = stats_metadata(out)
    assert meta["model_fingerprint"] == "f" * 64 and meta["metadata"]["pooling"] == "mean"
    assert [s["rows"] for s in meta["metadata"]["merged_from"]] == [1000, 1000, 1000]
    # The order of the files changes nothing beyond the bound; here both orders end on one calibration.
    swapped = tmp_path / "swapped.safetensors"
    assert main(["merge", *map(str, reversed(paths)), "--out", str(swapped)]) == 0
    other = af.load_stats(swapped)
    for site in ("a", "b"):
        assert torch.equal(other[site].calibration[0], merged[site].calibration[0])
        truth = merged[site].quantile(0.5)
        gap = (other[site].quantile(0.5) - truth).abs()
        assert torch.all(gap <= merged[site].quantile_error_bound(truth) + other[site].quantile_error_bound(truth))


def test_merge_refuses_mismatches(tmp_path, capsys):
    x = torch.randn(40, 3)
    a = write(tmp_path, "a.safetensors", job(x, 10))
    cases = [
        (write(tmp_path, "pool.safetensors", job(x, 10), pooling="last"), "different pooling"),
        (write(tmp_path, "model.safetensors", job(x, 10), model_fingerprint="e" * 64), "different models"),
        (write(tmp_path, "sites.safetensors", {"a": job(x, 10)["a"]}), "different sites"),
        (write(tmp_path, "chan.safetensors", job(torch.randn(40, 4), 10)), "channel counts differ"),
    ]
    for path, message in cases:
        assert main(["merge", str(a), str(path), "--out", str(tmp_path / "o.safetensors")]) == 2
        assert message in capsys.readouterr().err
    assert main(["merge", str(a), str(a), "--out", str(tmp_path / "o.safetensors")]) == 2
    assert "given twice" in capsys.readouterr().err
    assert main(["merge", str(a), "--out", str(tmp_path / "o.safetensors")]) == 2
    assert main(["merge", str(a), str(cases[0][0]), "--out", str(a)]) == 2
    assert "one of the inputs" in capsys.readouterr().err
