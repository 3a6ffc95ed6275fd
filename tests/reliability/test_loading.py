"""Loading a model folder never runs code from it, and a damaged or edited folder gets an error
that names the file (issue 19, part A).

Each case copies a freshly saved folder, damages it one way, loads it, and checks the exception
type, that the message names the culprit, and that no file of the folder changed.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import biodatacentric as bdc
from biodatacentric import BioEstimator, KCoverSelector, MAEPretrainer, Patches, make_vessels
from biodatacentric.base import BaseSelector, register_estimator, registered_estimators
from biodatacentric.nn import build_module

from .conftest import untouched

MARKER_NAME = "PWNED"


# ---------------------------------------------------------------------- saved folders
@pytest.fixture(scope="module")
def saved_selector(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "sharedmodel"
    KCoverSelector(n_select=2, n_neighbors=None, random_state=0).fit(np.eye(4)).save(folder)
    return folder


@pytest.fixture(scope="module")
def saved_mae(tmp_path_factory) -> Path:
    img = np.stack([make_vessels((64, 64), random_state=s)[0] for s in range(2)])
    patches = Patches.from_arrays(img, axes="ZYX", patch_shape=(32, 32))
    folder = tmp_path_factory.mktemp("saved") / "mae"
    MAEPretrainer(preset="tiny", img_size=32, max_epochs=1, batch_size=8, n_components=None, precision="fp32",
                  device="cpu", random_state=0, progress=False).fit(patches).save(folder)
    return folder


def _copy(folder: Path, tmp_path: Path, name: str | None = None) -> Path:
    dest = tmp_path / (name or folder.name)
    shutil.copytree(folder, dest)
    return dest


def _edit_config(folder: Path, edit) -> None:
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    edit(cfg)
    cfg_path.write_text(json.dumps(cfg))


class _WritesAFile:
    """Unpickling this object would create ``path`` (a stand-in for any code an attacker runs)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "ran"))


# ---------------------------------------------------------------------- code never runs
def test_planted_module_in_the_model_folder_never_runs(saved_selector, tmp_path, monkeypatch):
    """The reproduction of issue 19: payload.py next to config.json, class renamed to it."""
    model = _copy(saved_selector, tmp_path)
    (model / "payload.py").write_text(f"open({str(tmp_path / MARKER_NAME)!r}, 'w').write('ran')\n"
                                      "class X: pass\n")
    (model / "__init__.py").write_text("")
    _edit_config(model, lambda c: c.update({"class": "sharedmodel.payload.X"}))
    monkeypatch.chdir(tmp_path)             # the folder is importable as a package from here
    monkeypatch.syspath_prepend(str(tmp_path))
    with untouched(tmp_path), pytest.raises(ValueError) as err:
        KCoverSelector.load("sharedmodel")
    msg = str(err.value)
    assert "config.json" in msg and "'sharedmodel.payload.X'" in msg and "register_estimator" in msg
    assert not (tmp_path / MARKER_NAME).exists()
    assert "sharedmodel.payload" not in sys.modules and "sharedmodel" not in sys.modules


@pytest.mark.parametrize("name", ["os.system", "subprocess.Popen", "builtins.eval",
                                  "biodatacentric.base.BioEstimator", "KCoverSelector"])
def test_tampered_class_name_is_refused_without_import(saved_selector, tmp_path, name):
    model = _copy(saved_selector, tmp_path)
    _edit_config(model, lambda c: c.update({"class": name}))
    with untouched(model), pytest.raises(ValueError, match="not a registered biodatacentric estimator") as err:
        BioEstimator.load(model)
    assert str(model / "config.json") in str(err.value) and repr(name) in str(err.value)


def test_class_of_another_registered_estimator_is_refused(saved_selector, tmp_path):
    model = _copy(saved_selector, tmp_path)
    _edit_config(model, lambda c: c.update({"class": "biodatacentric.assess.selectors.KCenterSelector"}))
    with untouched(model), pytest.raises(TypeError, match=r"holds a KCenterSelector, not a KCoverSelector"):
        KCoverSelector.load(model)


def test_pickle_planted_in_the_weights_never_runs(saved_mae, tmp_path):
    model = _copy(saved_mae, tmp_path)
    weights = model / "weights" / "module_.pt"
    marker = tmp_path / MARKER_NAME
    torch.save({"w": _WritesAFile(str(marker))}, weights)
    with untouched(model), pytest.raises(ValueError, match="refuses to load") as err:
        MAEPretrainer.load(model)
    assert str(weights) in str(err.value)
    assert not marker.exists()


def test_pickle_planted_in_arrays_npz_is_refused(saved_selector, tmp_path):
    model = _copy(saved_selector, tmp_path)
    marker = tmp_path / MARKER_NAME
    np.savez(model / "arrays.npz", selected_indices_=np.array([_WritesAFile(str(marker))], dtype=object))
    with untouched(model), pytest.raises(ValueError, match="arrays.npz") as err:
        KCoverSelector.load(model)
    assert "pickled" in str(err.value)
    assert not marker.exists()


def test_build_module_is_registry_only():
    with pytest.raises(ValueError, match="unknown module class 'os.system'"):
        build_module("os.system", {})
    with pytest.raises(ValueError, match="unknown module class"):
        build_module("biodatacentric.nn.vit.ViTEncoder", {})   # registry names, never dotted paths


def test_every_public_estimator_is_registered():
    names = registered_estimators()
    for cls in (bdc.MAEPretrainer, bdc.KCoverSelector, bdc.KCenterSelector, bdc.RandomSelector,
                bdc.DatasetAuditor, bdc.TransUNetSegmenter, bdc.MCDropoutHunter, bdc.RCAMonitor,
                bdc.EmbeddingDrift):
        assert names[f"{cls.__module__}.{cls.__qualname__}"] is cls


# ---------------------------------------------------------------------- extensions
class EveryOther(BaseSelector):
    def __init__(self, n_select=2, random_state=None):
        self.n_select = n_select
        self.random_state = random_state

    def _select(self, X, n_select, exclude, seed):
        return np.flatnonzero(~exclude)[::2][:n_select]


def test_unregistered_extension_loads_only_through_its_own_class(tmp_path):
    folder = EveryOther().fit(np.eye(6)).save(tmp_path / "ext")
    assert EveryOther.load(folder).selected_indices_.tolist() == [0, 2]  # the caller names the class
    with untouched(tmp_path), pytest.raises(ValueError, match="register_estimator") as err:
        BioEstimator.load(folder)
    assert "EveryOther" in str(err.value) and "config.json" in str(err.value)
    register_estimator(EveryOther)
    assert type(BioEstimator.load(folder)) is EveryOther


def test_library_estimators_cannot_be_replaced_in_the_registry():
    impostor = type("KCoverSelector", (EveryOther,), {"__module__": "biodatacentric.assess.selectors"})
    with pytest.raises(ValueError, match="is a biodatacentric estimator"):
        register_estimator(impostor)
    with pytest.raises(TypeError, match="BioEstimator subclass"):
        register_estimator(dict)


# ---------------------------------------------------------------------- damaged folders
def test_invalid_json_names_the_file_and_line(saved_selector, tmp_path):
    model = _copy(saved_selector, tmp_path)
    text = (model / "config.json").read_text().splitlines()
    text[3] = text[3] + ",,"
    (model / "config.json").write_text("\n".join(text))
    with untouched(model), pytest.raises(ValueError, match=r"config.json is not valid JSON: .* line 4") as err:
        KCoverSelector.load(model)
    assert str(model) in str(err.value)


@pytest.mark.parametrize("edit, culprit", [
    (lambda c: c.pop("params"), "'params'"),
    (lambda c: c.update({"fitted": [1, 2]}), "'fitted'"),
    (lambda c: c.update({"format": "something-else"}), "was not written by biodatacentric"),
    (lambda c: c["params"].update({"n_select": "2"}), "n_select must be a positive integer"),
    (lambda c: c["params"].update({"colour": "red"}), "saved parameters do not fit KCoverSelector"),
    (lambda c: c["fitted"].update({"__class__": "x"}), "'__class__' is not a fitted attribute name"),
    (lambda c: c["fitted"].update({"fit": 1}), "'fit' is not a fitted attribute name"),
], ids=["no-params", "fitted-not-dict", "foreign-format", "param-type", "unknown-param", "dunder-attr",
        "method-attr"])
def test_edited_config_is_refused_naming_the_file(saved_selector, tmp_path, edit, culprit):
    model = _copy(saved_selector, tmp_path)
    _edit_config(model, edit)
    with untouched(model), pytest.raises(ValueError, match=culprit) as err:
        KCoverSelector.load(model)
    assert "config.json" in str(err.value)


def test_config_that_is_not_an_object(saved_selector, tmp_path):
    model = _copy(saved_selector, tmp_path)
    (model / "config.json").write_text("[1, 2, 3]")
    with untouched(model), pytest.raises(ValueError, match=r"config.json was not written by biodatacentric"):
        KCoverSelector.load(model)


def test_path_that_is_a_file(saved_selector, tmp_path):
    f = tmp_path / "model.json"
    f.write_text("{}")
    with untouched(tmp_path), pytest.raises(NotADirectoryError, match=r"model.json is a file, not a save folder"):
        KCoverSelector.load(f)


def test_missing_folder_and_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist"):
        KCoverSelector.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("mine")
    with untouched(tmp_path), pytest.raises(FileNotFoundError, match=r"empty is not a biodatacentric save folder"):
        KCoverSelector.load(tmp_path / "empty")


def test_missing_weights_file(saved_mae, tmp_path):
    model = _copy(saved_mae, tmp_path)
    (model / "weights" / "module_.pt").unlink()
    with untouched(model), pytest.raises(FileNotFoundError, match=r"module_.pt is missing") as err:
        MAEPretrainer.load(model)
    assert "copy the whole save folder" in str(err.value)


def test_truncated_weights_file(saved_mae, tmp_path):
    model = _copy(saved_mae, tmp_path)
    w = model / "weights" / "module_.pt"
    w.write_bytes(w.read_bytes()[:200])
    with untouched(model), pytest.raises(ValueError, match="corrupt") as err:
        MAEPretrainer.load(model)
    assert str(w) in str(err.value)


def test_corrupt_arrays_npz(saved_selector, tmp_path):
    model = _copy(saved_selector, tmp_path)
    (model / "arrays.npz").write_bytes(b"PK\x03\x04 not really a zip file")
    with untouched(model), pytest.raises(ValueError, match=r"arrays.npz .*corrupt"):
        KCoverSelector.load(model)


@pytest.mark.parametrize("edit, culprit", [
    (lambda m: m["config"].update({"embed_dim": 64}), r"shape mismatch.*encoder.patch_embed.proj.weight"),
    (lambda m: m["config"].update({"depth": 3}), r"tensors missing from the weights .*encoder.blocks.2"),
    (lambda m: m["config"].update({"decoder_depth": 0}), r"unexpected tensors .*decoder_blocks.0"),
], ids=["wider", "deeper", "shallower-decoder"])
def test_config_edited_to_another_architecture(saved_mae, tmp_path, edit, culprit):
    model = _copy(saved_mae, tmp_path)
    _edit_config(model, lambda c: edit(c["modules"]["module_"]))
    with untouched(model), pytest.raises(ValueError, match=culprit) as err:
        MAEPretrainer.load(model)
    msg = str(err.value)
    assert str(model / "weights" / "module_.pt") in msg and "do not belong together" in msg
    assert str(model / "config.json") in msg


@pytest.mark.parametrize("edit, culprit", [
    (lambda m: m.update({"class": "os.system"}), "unknown module class 'os.system'"),
    (lambda m: m["config"].update({"colour": 1}), "cannot build module module_"),
    (lambda m: m.update({"config": "embed_dim=64"}), "must hold a 'class' name and a 'config' dict"),
], ids=["module-class", "module-kwarg", "module-config-type"])
def test_edited_module_spec(saved_mae, tmp_path, edit, culprit):
    model = _copy(saved_mae, tmp_path)
    _edit_config(model, lambda c: edit(c["modules"]["module_"]))
    with untouched(model), pytest.raises(ValueError, match=culprit) as err:
        MAEPretrainer.load(model)
    assert "config.json" in str(err.value)


def test_module_name_cannot_leave_the_folder(saved_mae, tmp_path):
    model = _copy(saved_mae, tmp_path)
    outside = tmp_path / "evil.pt"
    shutil.copy(model / "weights" / "module_.pt", outside)
    _edit_config(model, lambda c: c.update({"modules": {"../../evil": c["modules"]["module_"]}}))
    with untouched(tmp_path), pytest.raises(ValueError, match=r"'../../evil' is not a fitted attribute name"):
        MAEPretrainer.load(model)


def test_intact_folders_still_load(saved_selector, saved_mae):
    """The checks do not refuse what save() writes."""
    with untouched(saved_selector.parent), untouched(saved_mae.parent):
        assert KCoverSelector.load(saved_selector).selected_indices_.shape == (2,)
        assert type(BioEstimator.load(saved_mae)) is MAEPretrainer


def test_encoder_folder_with_invalid_json_names_the_file(saved_mae, tmp_path):
    """A save folder passed as a segmenter's encoder= is read with the same care."""
    from biodatacentric.segment.segmenter import resolve_encoder

    model = _copy(saved_mae, tmp_path)
    (model / "config.json").write_text('{"modules": {,}}')
    with untouched(model), pytest.raises(ValueError, match=r"config.json is not valid JSON: .*line 1"):
        resolve_encoder(str(model))
