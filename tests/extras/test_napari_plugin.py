"""The napari plugin's contributions, headless (extra: napari; tested through npe2 without Qt)."""

import importlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

npe2 = pytest.importorskip("npe2")

import biodatacentric  # noqa: E402
from biodatacentric import Patches, make_vessels  # noqa: E402
from biodatacentric.data import read_annotations  # noqa: E402
from biodatacentric.integrations import napari as plugin  # noqa: E402

MANIFEST = Path(biodatacentric.__file__).parent / "integrations" / "napari.yaml"


def test_manifest_is_valid_and_points_at_real_functions():
    mf = npe2.PluginManifest.from_file(MANIFEST)
    assert mf.name == "biodatacentric"
    for cmd in mf.contributions.commands:
        mod, name = cmd.python_name.split(":")
        assert callable(getattr(importlib.import_module(mod), name))
    assert {r.command for r in mf.contributions.readers} == {"biodatacentric.get_reader"}
    assert [w.layer_types for w in mf.contributions.writers] == [["labels"]]


def test_manifest_is_found_through_the_entry_point():
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="napari.manifest") if e.name == "biodatacentric"]
    mf = npe2.PluginManifest.from_distribution("biodatacentric")
    assert ep.value.endswith("napari.yaml") and mf.name == "biodatacentric"


@pytest.fixture
def folder(tmp_path):
    image, mask = make_vessels((64, 64), dtype="uint8", random_state=0)
    return Patches.from_arrays(image, masks=mask, patch_shape=(32, 32)).export(tmp_path / "round1"), mask


def test_reader_gives_patches_with_provenance_and_labels(folder, tmp_path):
    folder, _ = folder
    assert plugin.get_reader(str(tmp_path)) is None and plugin.get_reader("x.tif") is None
    reader = plugin.get_reader(str(folder))
    (img, meta, kind), (lab, lmeta, lkind) = reader(str(folder))
    assert (kind, lkind) == ("image", "labels") and img.shape == lab.shape == (4, 32, 32)
    prov = meta["metadata"]["patches"]
    assert [(p["y"], p["x"]) for p in prov] == [(0, 0), (0, 32), (32, 0), (32, 32)]
    assert prov[0]["source"] == "array0" and not any(p["has_mask"] for p in prov)


def test_writer_saves_painted_slices_and_never_overwrites(folder):
    folder, mask = folder
    _, (lab, meta, _) = plugin.read_folder(folder)
    lab[1] = mask[:32, 32:] * 3          # napari labels may hold any positive value
    written = plugin.write_masks(str(folder), lab, meta)
    assert [Path(p).name for p in written] == [f"{meta['metadata']['patches'][1]['id']}.tif"]
    assert plugin.write_masks(str(folder), lab, meta) == []          # identical: skipped
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = read_annotations(folder)
    np.testing.assert_array_equal(back.masks()[0], (mask[:32, 32:] > 0).astype(np.uint8))
    before = Path(written[0]).read_bytes()
    lab[1] = 0
    lab[2, :4, :4] = 1
    with pytest.raises(FileExistsError, match="never overwritten.*nothing was written"):
        plugin.write_masks(str(folder), lab, meta)
    assert Path(written[0]).read_bytes() == before
    assert not (folder / "masks" / f"{meta['metadata']['patches'][2]['id']}.tif").exists()
    with pytest.raises(ValueError, match="3 slices but"):
        plugin.write_masks(str(folder), lab[:3], meta)


class _Dims:
    def __init__(self):
        self.step = None

    def set_current_step(self, axis, value):
        self.step = (axis, value)


class _Layer:
    def __init__(self, data):
        self.data = data


class _Viewer:  # the two attributes of napari.Viewer the walker uses
    def __init__(self, data):
        self.dims = _Dims()
        self.layers = {"masks": _Layer(data)}


def test_round_walker_walks_and_saves_empty_masks(folder):
    folder, _ = folder
    _, (lab, _, _) = plugin.read_folder(folder)
    viewer = _Viewer(lab)
    walker = plugin.RoundWalker(viewer, folder)
    assert walker.previous() == 0 and walker.next() == 1 and viewer.dims.step == (0, 1)
    assert walker.go(99) == 3
    (path,) = walker.save()                                  # empty: "no vessel here"
    assert tifffile.imread(path).max() == 0
    assert walker.status() == "patch 4 of 4; 1 masks saved"
