"""fit_lineas (LinEAS) on tiny models built from configs: gradient, training, sparsity, IO, effect."""

import pytest
import torch

import act_fast as af
from act_fast.estimators.lineas import LineasMaps, proximal_step, support_report, wasserstein2
from tolerances import assert_close

import tiny_models
from tiny_models import tiny_unet, unet_batches


def tiny_llama():
    # initializer_range 0.2 (not 0.02): attention and MLP outputs then have the scale of the normed
    # ones, so every site weighs in the loss as in a trained model.
    return tiny_models.tiny_llama(initializer_range=0.2)


def prompts(seed: int, vocab: tuple[int, int], n_batches: int = 1, batch: int = 32, T: int = 7):
    """Random prompts drawn from a vocabulary range (the two sides differ in distribution), with
    left and right padding in every batch."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(vocab[0], vocab[1], (batch, T), generator=g)
        mask = torch.ones(batch, T, dtype=torch.int64)
        mask[0, :3] = 0
        mask[1, 5:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


# A norm, an attention block (tuple output) and an MLP output.
SITES = ["model.layers.0.input_layernorm", "model.layers.0.self_attn", "model.layers.1.mlp"]
SOURCE, TARGET = (0, 50), (50, 100)


def pooled_rows(model, sites, batches, maps=None) -> dict[str, torch.Tensor]:
    """Mean-pooled outputs ``{site: [N, C]}`` (padding excluded), with ``maps`` applied at λ = 1."""
    handle = af.steer(model, maps, 1.0, mode="op") if maps else None
    try:
        stats = af.collect(model, batches, sites, progress=False, exact=True)
    finally:
        if handle is not None:
            handle.remove()
    return {s: stats[s].samples for s in sites}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: with two, the tiny matmuls run ~100x slower here under
    TRITON_INTERPRET=1 (thread-pool contention), making a training step 0.5 s instead of 5 ms."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


STEPS = 60


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = tiny_llama()
    src, tgt = prompts(1, SOURCE), prompts(2, TARGET)
    maps = af.fit_lineas(model, src, tgt, SITES, steps=STEPS, lr=3e-2, progress=False)
    return model, src, tgt, maps


def test_one_step_gradient_equals_pure_torch():
    model = tiny_llama()
    src = prompts(3, SOURCE, batch=8)
    tgt = prompts(4, TARGET, n_batches=2, batch=4)  # 8 target rows over two batches: no subsampling
    # One SGD step from the identity: w = 1 − lr ∂L/∂w, b = −lr ∂L/∂b (lr large so that w − 1 keeps
    # the gradient's precision).
    lr = 100.0
    maps = af.fit_lineas(model, src, tgt, SITES, steps=1, optimizer="sgd", lr=lr, progress=False)

    modules = dict(model.named_modules())
    params = {s: (torch.ones(32, requires_grad=True), torch.zeros(32, requires_grad=True)) for s in SITES}
    rows: dict[str, torch.Tensor] = {}

    def hook(site, steer, mask):
        def fn(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            if steer:
                w, b = params[site]
                out = out + 1.0 * (w * out + b - out)
            m = mask[:, :, None].to(out.dtype)
            rows.setdefault(site, []).append((out * m).sum(1) / m.sum(1))
            return (out,) + tuple(output[1:]) if isinstance(output, tuple) else out

        return fn

    def run(batches, steer):
        rows.clear()
        for batch in batches:
            handles = [modules[s].register_forward_hook(hook(s, steer, batch["attention_mask"])) for s in SITES]
            try:
                model(**batch)
            finally:
                for h in handles:
                    h.remove()
        return {s: torch.cat(v) for s, v in rows.items()}

    with torch.no_grad():
        target = run(tgt, steer=False)
    source = run(src, steer=True)
    loss = torch.stack([(source[s].sort(0).values - target[s].sort(0).values).square().mean(0).mean() for s in SITES]).mean()
    grads = torch.autograd.grad(loss, [t for s in SITES for t in params[s]])
    assert abs(maps.losses[0] - float(loss.detach())) <= 1e-6 * float(loss.detach())
    for i, site in enumerate(SITES):
        gw, gb = lr * grads[2 * i], lr * grads[2 * i + 1]
        assert gw.abs().max() > 1e-2 and gb.abs().max() > 1e-2  # the comparison below is not vacuous
        assert_close(1.0 - maps[site].weight, gw)
        assert_close(-maps[site].bias, gb)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_loss_falls_and_maps_are_lineas_maps(trained):
    model, _, _, maps = trained
    assert isinstance(maps, LineasMaps) and isinstance(maps, af.SteeringMaps)
    assert len(maps.losses) == STEPS
    assert maps.losses[-1] < 0.5 * maps.losses[0]
    assert list(maps) == SITES  # forward order
    assert maps.method == "lineas" and maps.support == "q_all" and maps.pooling == "mean" and maps.model_type == "llama"
    assert maps.report.sites_active == 3 and maps.report.channel_fraction == 1.0
    assert all(m.lo is None and m.weight.dtype == torch.float32 for m in maps.values())


def test_maps_move_pooled_source_toward_target(trained):
    model, src, tgt, maps = trained
    target = pooled_rows(model, SITES, tgt)
    before = pooled_rows(model, SITES, src)
    after = pooled_rows(model, SITES, src, maps)
    for site in SITES:
        w_before = wasserstein2(before[site], target[site]).mean()
        w_after = wasserstein2(after[site], target[site]).mean()
        assert w_after < 0.5 * w_before, (site, float(w_before), float(w_after))


def test_save_and_load(trained, tmp_path):
    _, _, _, maps = trained
    loaded = af.load_maps(maps.save(tmp_path / "lineas.safetensors"))
    assert list(loaded) == list(maps) and loaded.method == "lineas" and loaded.support == "q_all"
    assert loaded.model_fingerprint == maps.model_fingerprint
    for site in maps:
        assert torch.equal(loaded[site].weight, maps[site].weight) and torch.equal(loaded[site].bias, maps[site].bias)
        assert loaded[site].lo is None


def test_proximal_step_l1_then_group():
    w = torch.tensor([1.0, 1.05, 0.7, 1.2])
    b = torch.tensor([0.02, -0.5, 0.0, 0.3])
    proximal_step(w, b, lr=0.1, l1=1.0, group=0.0)  # τ = 0.1
    assert_close(w, torch.tensor([1.0, 1.0, 0.8, 1.1]))
    assert_close(b, torch.tensor([0.0, -0.4, 0.0, 0.2]))
    assert torch.equal(w[:2], torch.ones(2)) and torch.equal(b[[0, 2]], torch.zeros(2))  # exact identity
    # Group: τ = 0.1 · 1 · √4 = 0.2; ‖w − 1‖ = √0.05 ≈ 0.224 survives scaled, ‖b‖ = √0.2 too.
    w2, b2 = w.clone(), b.clone()
    proximal_step(w2, b2, lr=0.1, l1=0.0, group=1.0)
    assert_close(w2 - 1, (w - 1) * (1 - 0.2 / (w - 1).norm()))
    assert_close(b2, b * (1 - 0.2 / b.norm()))
    proximal_step(w, b, lr=0.1, l1=0.0, group=5.0)  # τ = 1 > both norms: the site is the identity
    assert torch.equal(w, torch.ones(4)) and torch.equal(b, torch.zeros(4))


def first_step_gradients(model, src, tgt) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{site: (∂L/∂w, ∂L/∂b)}`` at the identity (one SGD step at lr = 1 from w = 1, b = 0)."""
    maps = af.fit_lineas(model, src, tgt, SITES, steps=1, optimizer="sgd", lr=1.0, progress=False)
    return {s: (1 - maps[s].weight, -maps[s].bias) for s in SITES}


def test_group_sparsity_makes_whole_sites_identity():
    model = tiny_llama()
    src, tgt = prompts(1, SOURCE), prompts(2, TARGET)
    # With SGD the proximal step is ISTA: a site stays the identity while the RMS of its gradient
    # (per group, w and b) is below `group`. Pick `group` between the sites' gradient RMS.
    grads = first_step_gradients(model, src, tgt)
    rms = torch.stack([torch.stack([gw.norm(), gb.norm()]).max() / 32**0.5 for gw, gb in grads.values()])
    group = float((rms.min() * rms.max()).sqrt())
    maps = af.fit_lineas(model, src, tgt, SITES, steps=10, optimizer="sgd", lr=3.0, group=group, progress=False)
    assert 0 < maps.report.sites_active < 3, str(maps.report)
    for site, r in zip(SITES, rms):
        m = maps[site]
        if r <= group:
            assert torch.equal(m.weight, torch.ones(32)) and torch.equal(m.bias, torch.zeros(32)), site
        assert maps.report.per_site[site] in (0.0, 1.0)  # whole sites, not single channels
    assert maps.losses[-1] < maps.losses[0]
    # Adam: steps are about lr per channel, so group >= 1 holds every site at the identity.
    maps = af.fit_lineas(model, src, tgt, SITES, steps=10, lr=1e-2, group=10.0, progress=False)
    assert maps.report.sites_active == 0 and maps.report.channels_active == 0
    for m in maps.values():
        assert torch.equal(m.weight, torch.ones(32)) and torch.equal(m.bias, torch.zeros(32))


def test_l1_sparsity_makes_single_channels_identity():
    model = tiny_llama()
    src, tgt = prompts(1, SOURCE), prompts(2, TARGET)
    grads = first_step_gradients(model, src, tgt)
    l1 = float(torch.cat([torch.maximum(gw.abs(), gb.abs()) for gw, gb in grads.values()]).median())
    maps = af.fit_lineas(model, src, tgt, SITES, steps=10, optimizer="sgd", lr=3.0, l1=l1, progress=False)
    report = maps.report
    assert 0 < report.channels_active < report.channels_total, str(report)
    identity = [(m.weight == 1) & (m.bias == 0) for m in maps.values()]
    assert sum(int(i.sum()) for i in identity) == report.channels_total - report.channels_active
    assert sum(0 < float(i.float().mean()) < 1 for i in identity) >= 2  # sites that are partly identity
    assert support_report(maps) == report
    assert maps.losses[-1] < maps.losses[0]


def test_divergence_is_reported():
    model = tiny_llama()
    with pytest.raises(ValueError, match="diverged at step .*lower lr"):
        af.fit_lineas(model, prompts(1, SOURCE), prompts(2, TARGET), SITES, steps=30, optimizer="sgd", lr=100.0, progress=False)
    assert all(p.requires_grad for p in model.parameters())


def test_unet_sites():
    unet = tiny_unet()
    g = torch.Generator().manual_seed(0)

    def batches(shift):
        return unet_batches(g, shift, batch=16, n_batches=1)

    sites = ["down_blocks.0.resnets.0", "mid_block.resnets.0"]
    src, tgt = batches(1.0), batches(0.0)
    maps = af.fit_lineas(unet, src, tgt, sites, steps=15, lr=2e-2, progress=False)
    assert maps.channels() == {"down_blocks.0.resnets.0": 8, "mid_block.resnets.0": 16}
    assert maps.losses[-1] < 0.5 * maps.losses[0]
    assert maps.report.sites_active == 2
    target, before, after = (pooled_rows(unet, sites, b, m) for b, m in ((tgt, None), (src, None), (src, maps)))
    for site in sites:
        assert wasserstein2(after[site], target[site]).mean() < wasserstein2(before[site], target[site]).mean()


def test_wasserstein2_subsamples_the_larger_side():
    a = torch.arange(10.0)[:, None]
    b = torch.full((4, 1), 3.0)
    g = torch.Generator().manual_seed(0)
    d = wasserstein2(a, b, g)
    assert d.shape == (1,) and float(d) > 0
    assert torch.equal(wasserstein2(b, b), torch.zeros(1))
    with pytest.raises(ValueError, match="needs samples on both sides"):
        wasserstein2(a[:0], b)


def test_bad_arguments():
    model = tiny_llama()
    src, tgt = prompts(1, SOURCE, batch=4), prompts(2, TARGET, batch=4)
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'"):
        af.fit_lineas(model, src, tgt, SITES, optimizer="lbfgs")
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        af.fit_lineas(model, src, tgt, SITES, steps=0)
    with pytest.raises(ValueError, match="l1 must be a finite number >= 0"):
        af.fit_lineas(model, src, tgt, SITES, l1=-1.0)
    with pytest.raises(ValueError, match="group must be a finite number >= 0"):
        af.fit_lineas(model, src, tgt, SITES, group=-0.1)
    with pytest.raises(ValueError, match="lr must be"):
        af.fit_lineas(model, src, tgt, SITES, lr=0.0)
    with pytest.raises(ValueError, match="needs batches on both sides"):
        af.fit_lineas(model, [], tgt, SITES)
    with pytest.raises(ValueError, match="unknown site 'model.layers.7.mlp'"):
        af.fit_lineas(model, src, tgt, ["model.layers.7.mlp"], progress=False)
    assert all(p.requires_grad for p in model.parameters())


def test_token_pooling_drops_padding_and_subsamples():
    model = tiny_llama()
    src, tgt = prompts(1, SOURCE, batch=8), prompts(2, TARGET, batch=6)  # 51 vs 37 real tokens
    maps = af.fit_lineas(model, src, tgt, SITES, steps=20, lr=3e-2, pooling="none", progress=False)
    assert maps.pooling == "none" and maps.losses[-1] < maps.losses[0]
