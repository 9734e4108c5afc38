"""``collect`` on tiny models: pooling over real tokens, padding on either side, tuple and conv
outputs, hook removal, errors; and the no-host-sync contract of the collection path."""

import contextlib

import pytest
import torch
from tolerances import assert_close
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

import act_fast as af
from act_fast.ops import set_backend
from act_fast.stats.pooling import pool

LENGTHS = [5, 3, 1]


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=100
    )
    return LlamaForCausalLM(cfg).eval()


def padded_batch(side: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = max(LENGTHS)
    ids = torch.randint(1, 100, (len(LENGTHS), t), generator=g)
    mask = torch.zeros(len(LENGTHS), t, dtype=torch.int64)
    for i, n in enumerate(LENGTHS):
        if side == "right":
            mask[i, :n] = 1
        else:
            mask[i, t - n :] = 1
    return {"input_ids": ids, "attention_mask": mask}


def capture(model: nn.Module, names: list[str], batch: dict) -> dict[str, torch.Tensor]:
    """Raw outputs ``[B, T, C]`` of the named modules for one batch."""
    modules = dict(model.named_modules())
    out: dict[str, torch.Tensor] = {}
    handles = [
        modules[n].register_forward_hook(lambda m, a, o, n=n: out.__setitem__(n, (o[0] if isinstance(o, tuple) else o).detach()))
        for n in names
    ]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    return out


def manual_rows(h: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pooling written the slow, obvious way: one prompt at a time over its real positions."""
    rows = []
    for b in range(h.shape[0]):
        real = h[b][mask[b].bool()].float()
        if pooling == "none":
            rows.extend(real)
        else:
            rows.append({"mean": real.mean(0), "last": real[-1], "max": real.amax(0), "min": real.amin(0)}[pooling])
    return torch.stack(rows)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("pooling", ["mean", "last", "max", "min", "none"])
def test_pooling_over_real_tokens(llama, side, pooling):
    names = af.sites(llama) + af.sites(llama, "attn_out")  # attention modules return tuples
    batches = [padded_batch(side, 1), padded_batch(side, 2)]
    stats = af.collect(llama, batches, names, pooling=pooling, exact=True, progress=False)
    assert list(stats) == names
    for name in names:
        expected = torch.cat([manual_rows(capture(llama, [name], b)[name], b["attention_mask"], pooling) for b in batches])
        got = stats[name].samples
        assert got.shape == expected.shape
        if pooling == "mean":
            assert_close(got, expected)
        else:
            assert torch.equal(got, expected)
        assert torch.equal(stats[name].count, torch.full((32,), expected.shape[0], dtype=torch.int64))


def test_right_padding_changes_nothing(llama):
    """Causal model, right padding: statistics equal those of the prompts run one by one."""
    batch = padded_batch("right", 3)
    padded = af.collect(llama, [batch], af.sites(llama), exact=True, progress=False)
    single = [{"input_ids": batch["input_ids"][i : i + 1, :n]} for i, n in enumerate(LENGTHS)]
    alone = af.collect(llama, single, af.sites(llama), exact=True, progress=False)
    for name in padded:
        assert_close(padded[name].samples, alone[name].samples)
        assert_close(padded[name].mean.float(), alone[name].mean.float())


def test_streaming_mode_matches_exact_mode(llama):
    batches = [padded_batch("left", 4)]
    streaming = af.collect(llama, batches, af.sites(llama), pooling="none", progress=False)
    exact = af.collect(llama, batches, af.sites(llama), pooling="none", exact=True, progress=False)
    for name in streaming:
        assert torch.equal(streaming[name].histogram, exact[name].histogram)
        assert int(streaming[name].count[0]) == sum(LENGTHS)


@pytest.mark.parametrize("pooling", ["mean", "max", "none"])
def test_conv_outputs_pooled_over_space(pooling):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh())
    x = torch.randn(2, 3, 6, 5)
    stats = af.collect(model, [{"input": x}], ["0"], pooling=pooling, exact=True, progress=False)
    out = model[0](x).detach()
    expected = {
        "mean": out.mean((2, 3)),
        "max": out.amax((2, 3)),
        "none": out.permute(0, 2, 3, 1).reshape(-1, 4),
    }[pooling]
    assert_close(stats["0"].samples, expected)


class TokenModel(nn.Module):
    """Accepts an attention mask like an HF model and ignores it."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)

    def forward(self, input, attention_mask=None):
        return self.proj(input)


class Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def test_hooks_removed_when_forward_raises():
    model = nn.Sequential(nn.Linear(4, 4), Boom())
    with pytest.raises(RuntimeError, match="boom"):
        af.collect(model, [{"input": torch.randn(2, 4)}], ["0"], progress=False)
    assert not model[0]._forward_hooks


def test_progress_bar(capsys):
    model = nn.Sequential(nn.Linear(4, 3))
    af.collect(model, [{"input": torch.randn(2, 4)}] * 3, ["0"], progress=True)
    assert "collect" in capsys.readouterr().err


def test_collect_errors(llama):
    batch = padded_batch("right", 0)
    with pytest.raises(ValueError, match=r"unknown site 'model.layers.0.input_layernorn'.*did you mean"):
        af.collect(llama, [batch], ["model.layers.0.input_layernorn"], progress=False)
    with pytest.raises(ValueError, match="pooling must be one of"):
        af.collect(llama, [batch], af.sites(llama), pooling="median", progress=False)
    with pytest.raises(ValueError, match="unknown site preset 'nope'"):
        af.sites(llama, "nope")
    with pytest.raises(TypeError, match="dict of model inputs"):
        af.collect(llama, [batch["input_ids"]], af.sites(llama), progress=False)
    with pytest.raises(ValueError, match="no batches"):
        af.collect(llama, [], af.sites(llama), progress=False)
    short_mask = batch["attention_mask"][:, :3]
    with pytest.raises(ValueError, match=r"site 'proj': output of shape \[3, 5, 3\] does not line up with attention_mask \[3, 3\]"):
        af.collect(TokenModel(), [{"input": torch.randn(3, 5, 4), "attention_mask": short_mask}], ["proj"], progress=False)


@contextlib.contextmanager
def no_host_sync():
    """Makes every Python-level device-to-host read raise."""
    names = ["item", "tolist", "__bool__", "__int__", "__float__"]
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def forbid(self, *args, **kwargs):
        raise AssertionError("host synchronisation inside collection")

    try:
        for n in names:
            setattr(torch.Tensor, n, forbid)
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch.Tensor, n, fn)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("pooling", ["mean", "last", "max", "min", "none"])
def test_pool_and_update_never_read_device_values(backend, pooling):
    tokens = torch.randn(3, 5, 7, dtype=torch.bfloat16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    stats = af.ChannelStats(7)
    previous = set_backend(backend)
    try:
        with no_host_sync():
            rows, row_mask = pool(tokens, mask, pooling)
            stats.update(rows, row_mask)
    finally:
        set_backend(previous)
    assert int(stats.count[0]) == (6 if pooling == "none" else 2)


def test_site_presets(llama):
    layers = [f"model.layers.{i}" for i in range(2)]
    assert af.sites(llama) == [f"{l}.post_attention_layernorm" for l in layers]
    assert af.sites(llama, "layernorm") == [f"{l}.{n}" for l in layers for n in ("input_layernorm", "post_attention_layernorm")]
    assert af.sites(llama, "o_proj") == [f"{l}.self_attn.o_proj" for l in layers]
    assert af.sites(llama, "attn_out") == [f"{l}.self_attn" for l in layers]
    assert af.sites(llama, "mlp_out") == [f"{l}.mlp" for l in layers]
    with pytest.raises(ValueError, match="no site presets for Linear"):
        af.sites(nn.Linear(2, 2))


def test_stop_early_skips_the_layers_after_the_last_site():
    model = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1, vocab_size=50)).eval()
    calls = []
    model.model.layers[2].register_forward_hook(lambda m, a, o: calls.append("layer 2"))
    batches = [{"input_ids": torch.randint(0, 50, (2, 5)), "attention_mask": torch.ones(2, 5, dtype=torch.int64)}] * 2
    site = "model.layers.1.post_attention_layernorm"
    full = af.collect(model, batches, [site], progress=False)[site]
    assert calls == ["layer 2", "layer 2"]
    early = af.collect(model, batches, [site], progress=False, stop_early=True)[site]
    assert calls == ["layer 2", "layer 2"]  # no further call: the forward stopped at the site
    assert torch.equal(early.mean, full.mean) and torch.equal(early.histogram, full.histogram)
