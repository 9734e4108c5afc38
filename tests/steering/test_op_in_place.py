"""Op mode writes the transport into the module's output in place only when that is safe: never
when the output's storage is an input, a parameter or a buffer of the steered module (leaf or
with submodules), nor a view; the steered output is the same either way."""

import pytest
import torch
from torch import nn

import act_fast as af

C = 8


def _maps(site: str) -> af.SteeringMaps:
    g = torch.Generator().manual_seed(0)
    return af.SteeringMaps({site: af.AffineMap(1.0 + 0.3 * torch.rand(C, generator=g), torch.randn(C, generator=g))})


class ReturnsBuffer(nn.Module):
    """A leaf that returns its own buffer (e.g. a cached embedding)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("table", torch.randn(2, C))
        self.register_parameter("unused", None)  # a None entry in _parameters

    def forward(self, x):
        return self.table


class ReturnsChildParameter(nn.Module):
    """A module with a submodule, returning the submodule's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(C, C, bias=False)

    def forward(self, x):
        return self.inner.weight


class ReturnsView(nn.Module):
    def forward(self, x):
        return (2 * x)[:, :C]


class Holder(nn.Module):
    def __init__(self, site: nn.Module) -> None:
        super().__init__()
        self.site = site

    def forward(self, x):
        return self.site(x)


def _expected(out: torch.Tensor, amap: af.AffineMap) -> torch.Tensor:
    return af.ops.affine_transport(out, amap.weight, amap.bias, 1.0)


@pytest.mark.parametrize("site", [nn.Identity(), ReturnsBuffer(), ReturnsChildParameter(), ReturnsView()], ids=lambda m: type(m).__name__)
def test_op_mode_never_overwrites_what_the_module_holds(site):
    torch.manual_seed(0)
    model = Holder(site).requires_grad_(False)
    x = torch.randn(C, 2 * C if isinstance(site, ReturnsView) else C)
    x_before = x.clone()
    held = {k: v.clone() for k, v in [*site.named_parameters(), *site.named_buffers()]}
    with torch.no_grad():
        plain = model(x).clone()
        maps = _maps("site")
        with af.steer(model, maps, 1.0, mode="op"):
            for _ in range(2):  # a second call would see a first in-place write
                y = model(x)
                assert torch.equal(y, _expected(plain, maps["site"]))
    assert torch.equal(x, x_before)
    for k, v in [*site.named_parameters(), *site.named_buffers()]:
        assert torch.equal(v, held[k]), f"{k} was overwritten"


def test_op_mode_writes_a_fresh_output_in_place():
    """The safe case still takes the in-place path: the steered output is the module's own tensor."""
    torch.manual_seed(0)
    lin = nn.Linear(C, C)
    model = Holder(lin).requires_grad_(False)
    x = torch.randn(3, C)
    seen = {}
    lin.register_forward_hook(lambda m, a, out: seen.update(ptr=out.data_ptr()))  # runs before steering's hook
    with torch.no_grad(), af.steer(model, _maps("site"), 1.0, mode="op"):
        y = model(x)
    assert y.data_ptr() == seen["ptr"]
