"""import_reference_maps on the files the AcT reference implementation writes.

The files come from :mod:`reference_act` (the reference's hooks re-written: fit, ``state_dict()``
after ``_post_load``, ``torch.save``); the imported maps, applied by act_fast, are compared with the
reference hook's forward on the same output.

Exactness: act_fast evaluates ``x + λ(w·x + b − x)``, the hooks ``λ·T(x) + (1 − λ)·x`` (Linear),
``λ·(r·(x − μ1) + μ2) + (1 − λ)·x`` (Gaussian), ``(1 − λ)·x + λ·α·x`` (AURA): the same values with
other roundings, so transported elements are compared with the float32/bfloat16 tolerance of
tests/tolerances.py. Where the arithmetic is the same, ``torch.equal``: every element the reference
leaves untouched (outside the support, channels outside the std mask, λ = 0 except Linear-OT on
4-D outputs, whose hook computes ``(x − m) + m``), the imported weights (Linear ``w1``, AURA
``alpha``, Gaussian ``std2 / std1``), and the support decisions at the float32 neighbours of the
float64 bounds.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import act_fast as af
from act_fast.estimators import fit_map, import_reference_maps
from act_fast.estimators.reference_import import LAYOUTS
from act_fast.maps import AffineMap
import reference_act as ref
from tolerances import assert_close

C = 6
N = 96  # samples per side (the reference's Linear-OT needs as many source as target samples)
MASKED = 2  # a channel with ~0 std on both sides: outside the Gaussian/Mean std mask
HOOK_METHODS = {"linear_ot": None, "gaussian_ot": None, "mean_ot": "mean_act", "aura": None}
SUPPORTS = ["q_all", "q_0_100", "q_5_95", "q_40_60"]
CASES = [(hook, s) for hook in HOOK_METHODS for s in (SUPPORTS if hook != "aura" else ["q_all"])]
POOL_SPATIAL = {"linear_ot": True, "gaussian_ot": False, "mean_ot": False, "aura": False}
STRENGTHS = [0.0, 0.5, 1.0]


def activations(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled responses ``[2N, C]`` and labels (True: source), as the reference's fit gets them:
    per-channel means and spreads, a near-constant channel, outliers, an AURA-neutral channel."""
    g = torch.Generator().manual_seed(seed)
    mean_s, sd_s = torch.tensor([0.0, 2.0, 0.5, -1.0, 3.0, 1.0]), torch.tensor([1.0, 0.5, 0.0, 2.0, 1.5, 1.0])
    mean_t, sd_t = torch.tensor([1.5, 1.0, 0.7, -3.0, 3.5, 1.0]), torch.tensor([0.5, 1.5, 0.0, 1.0, 1.0, 1.0])
    src = mean_s + sd_s * torch.randn(N, C, generator=g)
    tgt = mean_t + sd_t * torch.randn(N, C, generator=g)
    src[:, MASKED] += 1e-7 * torch.randn(N, generator=g)  # std ~1e-7 ≤ std_eps
    tgt[:, MASKED] += 1e-7 * torch.randn(N, generator=g)
    src[:3, 0] = torch.tensor([25.0, -30.0, 40.0])  # outliers
    tgt[:2, 4] = torch.tensor([-20.0, 35.0])
    return torch.cat([src, tgt]), torch.cat([torch.ones(N), torch.zeros(N)]).bool()


def sample_outputs(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    """Module outputs around both distributions (and outliers): some inside each support, some outside."""
    g = torch.Generator().manual_seed(seed)
    center = torch.tensor([0.5, 1.5, 0.6, -2.0, 3.2, 1.0])
    spread = torch.tensor([2.0, 1.5, 0.2, 2.5, 2.0, 1.0])
    if len(shape) == 4:  # [B, C, H, W]: per-plane offsets (the spatial means) plus pixel noise
        planes = center[:, None, None] + spread[:, None, None] * torch.randn(shape[0], C, 1, 1, generator=g)
        x = planes + 0.3 * torch.randn(shape, generator=g)
    else:
        x = center + spread * torch.randn(shape, generator=g)
        x.view(-1, C)[0, 0] = 60.0
    return x.to(dtype)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], tuple[ref.InterventionHook, Path]]:
    """(hook name, support) → (fitted hook, its .statedict file), as learn_intervention.py writes them."""
    z, labels = activations(0)
    folder = tmp_path_factory.mktemp("reference_states")
    out = {}
    for name, support in CASES:
        params = {} if name == "aura" else {"quantiles_src": support}
        out[name, support] = ref.learn_and_save(name, f"model.layers.{len(out)}.mlp:0", z, labels, folder / support, **params)
    return out


def import_file(name: str, path: Path, **kwargs) -> AffineMap:
    site = path.name.removesuffix(".statedict")
    maps = import_reference_maps({site: path}, method=HOOK_METHODS[name], **kwargs)
    return maps[site.split(":")[0]]


def reference_output(hook: ref.InterventionHook, x: torch.Tensor, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The hook's output on ``x`` (as a forward hook would return it) and where its map applied."""
    hook.strength = strength
    y = hook(None, None, x.clone())
    return y, hook.last_inside.reshape(x.shape)


def check_against_reference(out: torch.Tensor, expected: torch.Tensor, x: torch.Tensor, inside: torch.Tensor, exact: bool) -> None:
    assert torch.equal(expected[~inside], x[~inside])  # the helper leaves the outside alone
    assert torch.equal(out[~inside], x[~inside]), "act_fast moved elements the reference leaves alone"
    if exact:
        assert torch.equal(out, expected)
    else:
        assert_close(out, expected)


class TestReferenceFiles:
    """What the reference's files hold (the layouts act_fast reads)."""

    @pytest.mark.parametrize("name,support", CASES)
    def test_key_sets_and_shapes(self, fitted, name, support):
        hook, path = fitted[name, support]
        sd = torch.load(path, weights_only=True)
        assert type(sd).__name__ == "OrderedDict" and hasattr(sd, "_metadata")  # nn.Module.state_dict()
        layout = {"linear_ot": "linear_act", "aura": "aura"}.get(name, "gaussian_act")
        assert set(sd) == LAYOUTS[layout]
        if name == "aura":
            assert sd["auroc"].shape == (C,) and sd["auroc"].dtype == torch.float32
            return
        saved = sd["quantiles_src"]
        if support == "q_all":
            assert saved == [-1e6, 1e6]
        elif name == "linear_ot":
            assert [v.shape for v in saved] == [(1, C)] * 2 and saved[0].dtype == torch.float32
            assert sd["net.w1"].shape == sd["net.b1"].shape == (1, C)
        else:
            assert [v.shape for v in saved] == [(1, C - 1)] * 2 and saved[0].dtype == torch.float64  # masked
        assert list(sd["quantiles_dict_src"]) == list(ref.compute_quantiles(torch.zeros(2, C)))

    def test_mean_ot_files_look_like_gaussian_ones(self, fitted):
        a = torch.load(fitted["gaussian_ot", "q_all"][1], weights_only=True)
        b = torch.load(fitted["mean_ot", "q_all"][1], weights_only=True)
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in ("mu1", "mu2", "std1", "std2"))

    def test_auroc_is_the_pairwise_probability(self):
        z, labels = activations(3)
        z[:, 1] = torch.round(z[:, 1])  # ties
        s, t = z[labels].double(), z[~labels].double()
        pairwise = ((s[:, None, :] > t[None, :, :]).double() + 0.5 * (s[:, None, :] == t[None, :, :]).double()).mean((0, 1))
        np.testing.assert_allclose(ref.auroc(z.numpy(), labels.numpy()), pairwise.numpy(), rtol=1e-12)

    def test_auroc_matches_sklearn(self):
        metrics = pytest.importorskip("sklearn.metrics", reason="sklearn is not an act_fast dependency; the pairwise test covers the definition")
        z, labels = activations(4)
        z[:, 1] = torch.round(z[:, 1])
        expected = metrics.roc_auc_score(labels.numpy()[:, None].repeat(C, 1), z.numpy(), average=None)
        np.testing.assert_allclose(ref.auroc(z.numpy(), labels.numpy()), expected, rtol=1e-12)

    def test_reference_fits_are_act_fast_fits(self, fitted):
        """The helper's Linear/Gaussian fits are the closed forms act_fast computes (away from the
        near-constant channel, where the reference's 1e-8 noise term decides Linear-OT's slope)."""
        z, labels = activations(0)
        keep = torch.arange(C) != MASKED
        for name, method in (("linear_ot", "linear_act"), ("gaussian_ot", "gaussian_act")):
            imported = import_file(name, fitted[name, "q_all"][1])
            own = fit_map(z[labels], z[~labels], method=method, support="q_all")
            torch.testing.assert_close(imported.weight[keep], own.weight[keep], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(imported.bias[keep], own.bias[keep], rtol=1e-5, atol=1e-5)


class TestImportedMapsEqualTheHooks:
    @pytest.mark.parametrize("name,support", CASES)
    def test_weights_and_support_names(self, fitted, name, support):
        hook, path = fitted[name, support]
        maps = import_reference_maps({path.name.removesuffix(".statedict"): path}, method=HOOK_METHODS[name])
        assert maps.support == support and maps.method == (HOOK_METHODS[name] or {"linear_ot": "linear_act", "gaussian_ot": "gaussian_act", "aura": "aura"}[name])
        m = next(iter(maps.values()))
        if name == "linear_ot":
            assert torch.equal(m.weight, hook.net.w1.detach()[0]) and torch.equal(m.bias, hook.net.b1.detach()[0])
        elif name == "aura":
            assert torch.equal(m.weight, hook.alpha) and not m.bias.any()
        else:
            expected_w = torch.ones(C) if name == "mean_ot" else torch.ones(C).masked_scatter(hook.mask, hook.std1_2_m)
            assert torch.equal(m.weight, expected_w)  # float64 quotient rounded once = the float32 quotient
            assert m.weight[MASKED] == 1 and m.bias[MASKED] == 0 and not hook.mask[MASKED]
        assert (m.lo is None) == (support == "q_all")
        if m.lo is not None:
            q_lo, q_hi = hook.quantiles_dict_src[support]
            assert torch.equal(m.lo.double() <= q_lo.double(), torch.ones(C, dtype=torch.bool))
            assert torch.equal(m.hi.double() >= q_hi.double(), torch.ones(C, dtype=torch.bool))

    @pytest.mark.parametrize("strength", STRENGTHS)
    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    @pytest.mark.parametrize("shape", [(3, 7, C), (20, C), (2, C, 3, 5)], ids=["BTC", "BC", "BCHW"])
    @pytest.mark.parametrize("name,support", CASES)
    def test_apply_equals_hook_forward(self, fitted, name, support, shape, dtype, strength):
        hook, path = fitted[name, support]
        m = import_file(name, path)
        x = sample_outputs(shape, dtype)
        expected, inside = reference_output(hook, x, strength)
        if len(shape) == 4:
            out = m.apply(x, strength, channel_dim=1, pool_spatial=POOL_SPATIAL[name])
        else:
            out = m.apply(x, strength)
        exact = strength == 0 and not (name == "linear_ot" and len(shape) == 4)
        check_against_reference(out, expected, x, inside, exact)
        if support != "q_all" and strength > 0:  # the test data exercise both sides of the support
            assert inside.any() and (~inside).any()

    @pytest.mark.parametrize("support", ["q_0_100", "q_40_60", "q_all"])
    @pytest.mark.parametrize("name", ["linear_ot", "gaussian_ot", "mean_ot"])
    def test_support_argument_is_the_hooks_quantiles_src(self, fitted, name, support):
        """support=name equals the reference loading the file with that quantiles_src."""
        _, path = fitted[name, "q_5_95"]
        loaded = ref.HOOKS[name]("site", quantiles_src=support)
        loaded.load_state_dict(torch.load(path, weights_only=True))
        m = import_file(name, path, support=support)
        x = sample_outputs((4, 5, C), torch.float32)
        for strength in STRENGTHS:
            expected, inside = reference_output(loaded, x, strength)
            check_against_reference(m.apply(x, strength), expected, x, inside, exact=strength == 0)

    @pytest.mark.parametrize("name", ["linear_ot", "gaussian_ot"])
    def test_support_name_in_quantiles_src(self, fitted, name):
        """A file saved before _post_load holds the name; it is looked up in quantiles_dict_src."""
        hook, path = fitted[name, "q_5_95"]
        sd = torch.load(path, weights_only=True)
        sd["quantiles_src"] = "q_5_95"
        by_name = import_reference_maps({"s": sd}, method=HOOK_METHODS[name])
        by_bounds = import_file(name, path)
        assert by_name.support == "q_5_95"
        assert torch.equal(by_name["s"].lo, by_bounds.lo) and torch.equal(by_name["s"].hi, by_bounds.hi)

    def test_masked_bounds_that_match_no_entry_are_expanded(self, fitted):
        """[1, C_kept] bounds of no known name: kept channels get them, the masked one is identity."""
        hook, path = fitted["gaussian_ot", "q_5_95"]
        sd = torch.load(path, weights_only=True)
        sd["quantiles_src"] = [v * 0.5 for v in sd["quantiles_src"]]  # halved: no entry has these
        maps = import_reference_maps({"s": sd})
        assert maps.support == "saved_bounds"
        m, keep = maps["s"], hook.mask
        assert bool((m.lo[keep].double() <= sd["quantiles_src"][0][0]).all() and (m.hi[keep].double() >= sd["quantiles_src"][1][0]).all())
        assert -m.lo[MASKED] == m.hi[MASKED] == torch.finfo(torch.float32).max
        assert m.weight[MASKED] == 1 and m.bias[MASKED] == 0
        hook = copy.deepcopy(hook)  # the hook with those bounds (the fixture's stays as fitted)
        hook.quantiles_src = sd["quantiles_src"]
        x = sample_outputs((4, 5, C), torch.float32)
        for strength in STRENGTHS:
            expected, inside = reference_output(hook, x, strength)
            check_against_reference(m.apply(x, strength), expected, x, inside, exact=strength == 0)

    @pytest.mark.parametrize("name", ["linear_ot", "gaussian_ot"])
    def test_support_decisions_at_the_float32_neighbours_of_the_bounds(self, fitted, name):
        """Values at and next to each bound: the same strict decisions as the hook's comparison
        (float64 bounds against float32 values for Gaussian-OT, float32 for Linear-OT)."""
        hook, path = fitted[name, "q_5_95"]
        m = import_file(name, path)
        lo64, hi64 = (v.double() for v in hook.quantiles_dict_src["q_5_95"])
        up, down = torch.tensor(float("inf")), torch.tensor(-float("inf"))
        probes = []
        for b in (lo64, hi64):
            nearest = b.float()
            probes += [nearest, torch.nextafter(nearest, up), torch.nextafter(nearest, down)]
        x = torch.stack(probes)[None]  # [1, 6, C]
        expected, inside = reference_output(hook, x, 1.0)
        check_against_reference(m.apply(x, 1.0), expected, x, inside, exact=False)
        assert torch.equal(m.apply(x, 1.0) != x, inside), "a value inside the support was not transported"
        if name == "gaussian_ot":  # the probes do hit float64 bounds that round to the nearest float32 upwards
            assert bool((lo64.float().double() > lo64)[hook.mask].any())

    def test_q_all_sentinel_is_read_as_no_support(self, fitted):
        """The reference's q_all bounds [-1e6, 1e6] become no support (foldable maps); the only
        difference is at |x| ≥ 1e6, where the hook leaves x alone."""
        hook, path = fitted["linear_ot", "q_all"]
        m = import_file("linear_ot", path)
        assert m.lo is None
        x = torch.full((1, 1, C), 2e6)
        expected, _ = reference_output(hook, x, 1.0)
        assert torch.equal(expected, x) and not torch.equal(m.apply(x, 1.0), x)


class _Tiny(nn.Module):
    def __init__(self, conv: bool) -> None:
        super().__init__()
        self.proj = nn.Conv2d(4, C, 1) if conv else nn.Linear(4, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


@pytest.mark.parametrize("conv", [False, True], ids=["linear_BTC", "conv_BCHW"])
@pytest.mark.parametrize("name,support", [(h, s) for h in HOOK_METHODS for s in (["q_all", "q_5_95"] if h != "aura" else ["q_all"])])
def test_steer_equals_the_reference_hook_on_a_module(tmp_path, name, support, conv):
    """act_fast.steer with the imported maps gives the hooked module's outputs (fold, fused or op)."""
    torch.manual_seed(0)
    model = _Tiny(conv)
    src_in, tgt_in = torch.randn(N, 4), torch.randn(N, 4) * 1.5 + 1.0
    with torch.no_grad():  # fit on the module's own pooled outputs
        z = torch.cat([model.proj(src_in[:, :, None, None])[:, :, 0, 0] if conv else model.proj(src_in),
                       model.proj(tgt_in[:, :, None, None])[:, :, 0, 0] if conv else model.proj(tgt_in)])
    labels = torch.cat([torch.ones(N), torch.zeros(N)]).bool()
    params = {} if name == "aura" else {"quantiles_src": support}
    hook, path = ref.learn_and_save(name, "proj:0", z, labels, tmp_path, **params)
    maps = import_reference_maps({"proj:0": path}, method=HOOK_METHODS[name])
    x = torch.randn(2, 4, 3, 5) * 1.2 + 0.5 if conv else torch.randn(3, 7, 4) * 1.2 + 0.5
    for strength in STRENGTHS:
        hook.strength = strength
        handle = model.proj.register_forward_hook(hook)
        with torch.no_grad():
            expected = model(x)
        handle.remove()
        with af.steer(model, maps, strength=strength, pool_spatial=POOL_SPATIAL[name]), torch.no_grad():
            out = model(x)
        if strength == 0 and not (conv and name == "linear_ot"):
            assert torch.equal(out, expected)
        else:
            assert_close(out, expected)
        with torch.no_grad():
            assert torch.equal(model(x), model.proj(x))  # removed


class TestErrors:
    """Malformed files: a short message naming the file, the key and the shapes, never a tensor."""

    @staticmethod
    def message(tmp_path: Path, sd: dict, **kwargs) -> str:
        path = tmp_path / "model.layers.0.mlp:0.statedict"
        torch.save(sd, path)
        with pytest.raises(ValueError) as err:
            import_reference_maps({"model.layers.0.mlp:0": path}, **kwargs)
        text = str(err.value)
        assert str(path) in text and "tensor(" not in text and len(text) < 500, text
        return text

    @pytest.fixture
    def linear_sd(self, fitted):
        return dict(torch.load(fitted["linear_ot", "q_5_95"][1], weights_only=True))

    @pytest.fixture
    def gaussian_sd(self, fitted):
        return dict(torch.load(fitted["gaussian_ot", "q_5_95"][1], weights_only=True))

    def test_wrong_key_set(self, tmp_path, linear_sd):
        sd = {k: v for k, v in linear_sd.items() if k != "quantiles_src"}
        assert "missing ['quantiles_src']" in self.message(tmp_path, sd)
        assert "unexpected ['net.A']" in self.message(tmp_path, {**linear_sd, "net.A": torch.ones(C, C)})
        assert "not a state dict of an AcT reference hook" in self.message(tmp_path, {"something": torch.ones(3)})

    def test_support_name_missing_from_quantiles_dict_src(self, tmp_path, linear_sd):
        text = self.message(tmp_path, {**linear_sd, "quantiles_src": "q_3_97"})
        assert "'q_3_97'" in text and "q_5_95" in text
        assert "'q_7_93'" in self.message(tmp_path, linear_sd, support="q_7_93")

    def test_wrong_shapes(self, tmp_path, linear_sd, gaussian_sd):
        text = self.message(tmp_path, {**linear_sd, "net.b1": torch.zeros(1, C + 1)})
        assert f"net.w1 [{C}]" in text and f"net.b1 [{C + 1}]" in text
        assert "[2, 6]" in self.message(tmp_path, {**linear_sd, "net.w1": torch.ones(2, C)})
        bad = [v[:, :3] for v in gaussian_sd["quantiles_src"]]
        text = self.message(tmp_path, {**gaussian_sd, "quantiles_src": bad})
        assert "[1, 3]" in text and f"[1, {C - 1}]" in text and f"[1, {C}]" in text
        table = dict(gaussian_sd["quantiles_dict_src"])
        table["q_5_95"] = [torch.zeros(C + 2), torch.ones(C + 2)]
        assert "tensor [8] float32" in self.message(tmp_path, {**gaussian_sd, "quantiles_dict_src": table})
        table["q_5_95"] = [torch.zeros(2, C // 2), torch.ones(2, C // 2)]
        assert "tensor [2, 3] float32" in self.message(tmp_path, {**gaussian_sd, "quantiles_dict_src": table})
        assert "quantiles_src must be" in self.message(tmp_path, {**gaussian_sd, "quantiles_src": [1.0, 2.0, 3.0]})

    def test_std_eps_other_than_the_fits(self, tmp_path, gaussian_sd):
        # a larger std_eps masks more channels than the saved [1, C_kept] bounds were cut for
        assert f"[1, {C - 1}]" in self.message(tmp_path, gaussian_sd, std_eps=1.2)

    def test_non_finite_maps_and_wrong_methods(self, tmp_path, linear_sd, gaussian_sd):
        w1 = linear_sd["net.w1"].clone()
        w1[0, 1] = float("nan")
        assert "weight holds NaN" in self.message(tmp_path, {**linear_sd, "net.w1": w1})
        assert "holds a gaussian_act layout" in self.message(tmp_path, gaussian_sd, method="linear_act")
        assert "AURA files have no support" in self.message(tmp_path, {"auroc": torch.full((C,), 0.7)}, support="q_5_95")

    def test_unreadable_and_unsafe_files(self, tmp_path):
        (tmp_path / "model.layers.0.mlp:0.statedict").write_bytes(b"not a torch file")
        with pytest.raises(ValueError, match="weights_only=True"):
            import_reference_maps({"model.layers.0.mlp:0": tmp_path / "model.layers.0.mlp:0.statedict"})
        torch.save({"auroc": torch.ones(C), "payload": Path("/")}, tmp_path / "evil.statedict")  # a pickled object
        with pytest.raises(ValueError, match="evil.statedict.*weights_only=True"):
            import_reference_maps({"s": tmp_path / "evil.statedict"})
        with pytest.raises(FileNotFoundError, match="missing.statedict"):
            import_reference_maps({"s": tmp_path / "missing.statedict"})

    def test_site_names(self, fitted):
        path = fitted["aura", "q_all"][1]
        assert list(import_reference_maps({"a.b:0": path, "a.c": path})) == ["a.b", "a.c"]
        with pytest.raises(ValueError, match="first output"):
            import_reference_maps({"transformer.transformer_blocks.0:1": path})
        with pytest.raises(ValueError, match="second map for module 'a.b'"):
            import_reference_maps({"a.b:0": path, "a.b": path})
        with pytest.raises(ValueError, match="method must be"):
            import_reference_maps({"a": path}, method="linear")


class TestHandMadeDicts:
    """Hand-computed expectations on dicts with the reference's key sets (moved from test_closed_form)."""

    def test_formulas(self):
        q = {"q_0_100": [torch.tensor([-1.0, -2.0, -3.0, -4.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])]}
        mu1, mu2 = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.0, 1.0, -1.0, 2.0])
        std1, std2 = torch.tensor([1.0, 2.0, 0.0, 4.0]), torch.tensor([2.0, 1.0, 1.0, 4.0])
        gauss = {"mu1": mu1, "mu2": mu2, "std1": std1, "std2": std2, "quantiles_dict_src": q, "quantiles_src": "q_0_100"}
        g = import_reference_maps({"h": gauss})["h"]
        assert g.weight.tolist() == [2.0, 0.5, 1.0, 1.0]
        assert g.bias.tolist() == [-2.0, 0.0, 0.0, -2.0]  # mu2 − w·mu1; the std-masked channel is identity
        assert g.lo.tolist() == [-1.0, -2.0, -3.0, -4.0] and g.hi.tolist() == [1.0, 2.0, 3.0, 4.0]
        mean = import_reference_maps({"h": gauss}, method="mean_act")["h"]
        assert mean.weight.tolist() == [1.0] * 4 and mean.bias.tolist() == [-1.0, -1.0, 0.0, -2.0]
        aura = import_reference_maps({"h": {"auroc": torch.tensor([0.9, 0.5, 0.2, 0.75])}})
        assert aura["h"].weight.tolist() == pytest.approx([0.2, 1.0, 1.0, 0.5]) and aura.support == "q_all"
        lin = {"net.w1": torch.full((1, 3), 2.0), "net.b1": torch.ones(1, 3), "quantiles_dict_src": {}, "quantiles_src": [-1e6, 1e6]}
        m = import_reference_maps({"s": lin})["s"]
        assert isinstance(m, AffineMap) and m.lo is None
        x = torch.randn(2, 3)
        torch.testing.assert_close(m.apply(x), 2.0 * x + 1.0)

    def test_std_mask_compares_in_the_stored_dtype(self):
        """The hook tests ``std > std_eps`` in float32: float32(0.1) > 0.1 is False there (True in
        float64), so that channel stays identity, as in the reference hook."""
        std = torch.tensor([0.1, 0.2, 0.1], dtype=torch.float32)
        sd = {"mu1": torch.zeros(3), "mu2": torch.ones(3), "std1": std, "std2": torch.full((3,), 0.5),
              "quantiles_dict_src": {}, "quantiles_src": [-1e6, 1e6]}
        hook = ref.GaussianOTHook("s", std_eps=0.1)
        hook.load_state_dict(sd)
        m = import_reference_maps({"s": sd}, std_eps=0.1)["s"]
        assert hook.mask.tolist() == [False, True, False]
        assert m.weight.tolist() == [1.0, 2.5, 1.0] and m.bias.tolist() == [0.0, 1.0, 0.0]
