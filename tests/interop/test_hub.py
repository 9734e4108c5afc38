"""Maps on the Hugging Face Hub, offline only: a local folder laid out like a Hub repository, the
``HF_HUB_OFFLINE`` cache for ``load_maps("owner/name")``, and ``push_to_hub`` against an ``HfApi``
whose two network calls write into a local folder instead. Never the network."""

from __future__ import annotations

import shutil

import pytest
import torch

import act_fast as af
from act_fast.interop import hub as act_hub
from act_fast.maps import AffineMap, SteeringMaps

huggingface_hub = pytest.importorskip("huggingface_hub", reason="huggingface_hub is not installed (it is in the dev extra)")
from huggingface_hub import constants  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE and an empty cache of this test's own: nothing can reach the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    return tmp_path / "hub-cache"


def _maps() -> SteeringMaps:
    return SteeringMaps(
        {"model.layers.0.post_attention_layernorm": AffineMap(torch.rand(8) + 0.5, torch.randn(8), -torch.ones(8), torch.ones(8)),
         "model.layers.1": AffineMap(torch.ones(8), torch.randn(8))},
        method="linear_act", support="q_all", pooling="mean", model_type="llama", model_fingerprint="ab" * 32,
    )


def _same(a: SteeringMaps, b: SteeringMaps) -> None:
    assert a.metadata() == b.metadata()
    for site in a:
        for name, t in a[site].tensors().items():
            assert torch.equal(t, b[site].tensors()[name])


def _cache(cache, repo_id: str, folder) -> None:
    """``folder``'s files as huggingface_hub caches a download of ``repo_id`` at ``main``."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    shutil.copytree(folder, root / "snapshots" / COMMIT)


def test_folder_layout_and_model_card(tmp_path):
    maps = _maps()
    folder = act_hub.save_folder(maps, tmp_path / "repo")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "maps.safetensors"]
    _same(af.load_maps(folder), maps)
    card = huggingface_hub.ModelCard.load(folder / "README.md")
    assert card.data.library_name == "act_fast" and "act_fast" in card.data.tags
    for expected in ("linear_act", "q_all", "llama", "ab" * 32, "model.layers.0.post_attention_layernorm", "model.layers.1"):
        assert expected in card.text


def test_load_by_repo_id_from_the_offline_cache(tmp_path, offline):
    maps = _maps()
    _cache(offline, "org/name", act_hub.save_folder(maps, tmp_path / "repo"))
    _same(af.load_maps("org/name"), maps)
    assert af.load_maps("org/name", device="cpu")["model.layers.1"].bias.device.type == "cpu"


def test_repo_missing_from_the_offline_cache():
    with pytest.raises(FileNotFoundError, match="org/missing: no such file, and no Hub repository 'org/missing'.*HF_HUB_OFFLINE=True"):
        af.load_maps("org/missing")


def test_a_local_path_wins_over_a_repo_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    maps = _maps()
    act_hub.save_folder(maps, tmp_path / "org" / "name")
    _same(af.load_maps("org/name"), maps)


class LocalHfApi(huggingface_hub.HfApi):
    """An HfApi whose repository creation and upload write into a local folder (the "remote")."""

    def __init__(self, remote):
        super().__init__(token=False)
        self.remote = remote
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        (self.remote / repo_id).mkdir(parents=True, exist_ok=True)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", repo_id, kwargs))
        shutil.copytree(folder_path, self.remote / repo_id, dirs_exist_ok=True)
        return "commit"


def test_push_to_hub_uploads_maps_and_card_then_loads_back(tmp_path, offline):
    maps = _maps()
    api = LocalHfApi(tmp_path / "remote")
    assert maps.push_to_hub("org/pushed", api=api, private=True) == "commit"
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][2]["exist_ok"] is True and api.calls[0][2]["private"] is True and api.calls[0][2]["repo_type"] == "model"
    pushed = tmp_path / "remote" / "org" / "pushed"
    assert sorted(p.name for p in pushed.iterdir()) == ["README.md", "maps.safetensors"]
    _cache(offline, "org/pushed", pushed)
    _same(af.load_maps("org/pushed"), maps)


def test_push_to_hub_offline_never_reaches_the_network():
    from huggingface_hub.errors import OfflineModeIsEnabled

    with pytest.raises(OfflineModeIsEnabled, match="offline mode is enabled"):
        _maps().push_to_hub("org/never")
