"""``act-fast demo --maps``: a second run reuses the maps of the first instead of fitting again."""

import pytest
import torch

import act_fast as af
from act_fast.demo import models as demo_models


@pytest.mark.slow
def test_demo_reuses_fitted_maps(act, tiny_model, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load(name, device):
        tok = AutoTokenizer.from_pretrained(tiny_model)
        return tok, AutoModelForCausalLM.from_pretrained(tiny_model).eval()

    monkeypatch.setattr(demo_models, "load_causal_lm", load)
    base = ("demo", "--model", "tiny", "--strengths", "0,1", "--gen-strengths", "1", "--max-new-tokens", 2, "--no-plot")
    rc, first, err = act(*base, "--out", tmp_path / "first")
    assert rc == 0, err
    assert "fit " in first.splitlines()[-1]  # the phases of the first run include the fit
    # Each phase says when it starts and ends on stderr, progress bars or not (a log shows where the run is).
    phases = [line for line in err.splitlines() if line.startswith("act-fast demo: ")]
    assert [p.split(":")[1].strip() for p in phases] == ["loading tiny on cpu", "fit", "fit", "probe", "steer", "steer"], phases
    assert phases[1].startswith("act-fast demo: fit: Linear-AcT on 2 sites") and "done in" in phases[2] and "done in" in phases[5]

    def refit(*args, **kwargs):
        raise AssertionError("the demo fitted again although --maps was given")

    monkeypatch.setattr(af, "fit", refit)
    rc, second, err = act(*base, "--out", tmp_path / "second", "--maps", tmp_path / "first" / "maps.safetensors")
    assert rc == 0, err
    assert f"maps from {tmp_path / 'first' / 'maps.safetensors'} (2 sites" in second and "no fit" in second
    assert "fit " not in second.splitlines()[-1]
    a, b = af.load_maps(tmp_path / "first" / "maps.safetensors"), af.load_maps(tmp_path / "second" / "maps.safetensors")
    assert all(torch.equal(a[s].weight, b[s].weight) and torch.equal(a[s].bias, b[s].bias) for s in a)
    table = lambda out: [line for line in out.splitlines() if line.strip().startswith(("0.00", "1.00"))]  # noqa: E731
    assert table(first) == table(second)  # same maps, same scores
