"""A device this machine lacks is refused with the CLI's message, not torch's internal assertion
(issue 21 item 11)."""

import pytest
import torch

import act_fast as af
from act_fast.ops.checks import check_device, device_problem

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")


@NO_CUDA
def test_maps_and_stats_files_refuse_cuda_without_cuda(tmp_path):
    maps = af.SteeringMaps({"a": af.AffineMap(torch.ones(3), torch.zeros(3))})
    path = maps.save(tmp_path / "m.safetensors")
    stats = af.save_stats({"a": af.ChannelStats(3).update(torch.randn(4, 3))}, tmp_path / "s.safetensors")
    for call, what in ((lambda: af.load_maps(path, device="cuda"), "load_maps"), (lambda: af.load_stats(stats, device="cuda"), "load_stats"),
                       (lambda: maps.to("cuda"), "SteeringMaps.to"), (lambda: maps["a"].to("cuda:0"), "AffineMap.to")):
        with pytest.raises(ValueError, match=rf"{what}: device 'cuda(:0)?': CUDA is not available \(.*torch .*\); use device='cpu'"):
            call()


def test_device_problem_names_the_cause():
    assert device_problem(None) is None and device_problem("cpu") is None
    assert device_problem("tpu9").startswith("not a torch device")
    with pytest.raises(ValueError, match="load_maps: device 'nope': not a torch device"):
        check_device("nope", "load_maps")
