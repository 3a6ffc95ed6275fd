"""The annotation round trip under careless or hostile use: a painted mask stays with its own
image, nothing a person wrote is overwritten, and every refusal names the culprit."""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings

import numpy as np
import pytest
import tifffile

from biodatacentric import Patches, make_vessels
from biodatacentric.data import _manifest
from biodatacentric.data.annotations import AnnotationFolderWarning, ManifestEditedError, annotation_status

from .conftest import untouched


def _stack(path, seed, shape=(2, 64, 64)):
    path.parent.mkdir(parents=True, exist_ok=True)
    img, mask = make_vessels(shape, dtype="uint16", random_state=seed)
    tifffile.imwrite(path, img, photometric="minisblack", metadata={"axes": "ZYX"})
    return path, img, mask


def _manifest_of(folder):
    return json.loads((folder / "manifest.json").read_text())


def _paint(folder, entry, value=1, shape=(32, 32)):
    (folder / "masks").mkdir(exist_ok=True)
    m = np.zeros(shape, np.uint8)
    m[: shape[0] // 2] = value
    tifffile.imwrite(folder / entry["mask"], m)
    return m


@pytest.fixture
def exported(tmp_path):
    """An export of 4 patches of one stack, with masks painted for all of them."""
    src, _, _ = _stack(tmp_path / "data" / "stack.tif", 0, shape=(1, 64, 64))
    p = Patches.from_tiff(src, axes="ZYX", patch_shape=(32, 32))
    out = tmp_path / "annot"
    p.export(out)
    for e in _manifest_of(out)["patches"]:
        _paint(out, e)
    return p, out


# ---------------------------------------------------------------- ids and collisions
def test_same_stem_in_two_folders_keeps_each_mask_with_its_own_image(tmp_path):
    d1, img1, _ = _stack(tmp_path / "day1" / "stack.tif", 1)
    d2, img2, _ = _stack(tmp_path / "day2" / "stack.tif", 2)
    out = tmp_path / "annot"
    p1 = Patches.from_tiff(d1, axes="ZYX", patch_shape=(32, 32))[[0]]
    p1.export(out)
    e1 = _manifest_of(out)["patches"][0]
    painted = _paint(out, e1)
    p2 = Patches.from_tiff(d2, axes="ZYX", patch_shape=(32, 32))[[0]]
    with untouched(out / "masks"), untouched(out / "images", allow_new=("*.tif",)):
        p2.export(out, on_existing="keep")
    entries = _manifest_of(out)["patches"]
    assert len(entries) == 2 and entries[0]["id"] != entries[1]["id"]
    assert entries[0]["id"].split("_z")[0].startswith("00000_stack-")
    with pytest.warns(AnnotationFolderWarning, match=re.escape(entries[1]["id"])):
        back = Patches.read_annotations(out)
    assert len(back) == 1
    assert back.provenance().source[0] == str(d1)
    np.testing.assert_array_equal(back.masks()[0], painted)
    np.testing.assert_array_equal(back.raw()[0], img1[0, :32, :32])


def test_reexport_of_changed_pixels_at_same_id_is_refused(tmp_path):
    out = tmp_path / "annot"
    a = Patches.from_arrays(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32), normalize="none")
    a.export(out)
    _paint(out, _manifest_of(out)["patches"][0])
    b = Patches.from_arrays(np.ones((32, 32), np.uint16), normalize="none")  # also named "array0"
    pid = _manifest_of(out)["patches"][0]["id"]
    with untouched(out):
        with pytest.raises(FileExistsError, match=re.escape(pid) + r".*array0.*array0.*has a mask.*new folder"):
            b.export(out, on_existing="keep")


def test_unlisted_image_with_other_pixels_is_not_replaced(tmp_path):
    src, _, _ = _stack(tmp_path / "s.tif", 0, shape=(1, 32, 32))
    out = tmp_path / "annot"
    Patches.from_tiff(src, axes="ZYX", patch_shape=(32, 32)).export(out)
    e = _manifest_of(out)["patches"][0]
    _paint(out, e)
    (out / "manifest.json").unlink()  # lost manifest; the file on disk now gets other pixels
    _stack(tmp_path / "s.tif", 5, shape=(1, 32, 32))
    with untouched(out):
        with pytest.raises(FileExistsError, match=re.escape(e["id"]) + r".*not listed in the manifest"):
            Patches.from_tiff(src, axes="ZYX", patch_shape=(32, 32)).export(out, on_existing="keep")


def test_reexport_of_same_patches_reuses_entries(exported):
    p, out = exported
    with untouched(out / "masks"), untouched(out / "images"):
        p.export(out, masks=np.zeros((4, 32, 32), np.uint8), on_existing="keep")
    entries = _manifest_of(out)["patches"]
    assert len(entries) == 4 and {e["start_mask"] for e in entries} == {"kept existing"}


def test_old_scheme_folder_reads_back_and_reexport_reuses_it(tmp_path):
    """A folder written before ids carried a path tag and before the manifest had a checksum."""
    src, img, _ = _stack(tmp_path / "stack.tif", 3, shape=(1, 32, 64))
    p = Patches.from_tiff(src, axes="ZYX", patch_shape=(32, 32))
    out = tmp_path / "old"
    p.export(out)
    m = _manifest_of(out)
    for i, e in enumerate(m["patches"]):  # rewrite as the old export did
        old_id = f"{i:05d}_stack_z000_y00000_x{e['x']:05d}"
        os.replace(out / e["image"], out / "images" / f"{old_id}.tif")
        e.update(id=old_id, image=f"images/{old_id}.tif", mask=f"masks/{old_id}.tif")
        e.pop("check")
    m.pop("checksum")
    m["version"] = 1
    (out / "manifest.json").write_text(json.dumps(m, indent=1))
    painted = _paint(out, m["patches"][1])
    with untouched(out):
        with pytest.warns(UserWarning, match=r"manifest.json was written by an older .*cannot be detected"), \
                pytest.warns(AnnotationFolderWarning, match=r"1 of 2 .*skipped: 00000_stack_z000"):
            back = Patches.read_annotations(out)
    assert int(back.provenance().x[0]) == 32
    np.testing.assert_array_equal(back.masks()[0], painted)
    with untouched(out / "masks"), untouched(out / "images"):
        p.export(out, on_existing="keep")
    assert [e["id"] for e in _manifest_of(out)["patches"]] == [e["id"] for e in m["patches"]]


# ---------------------------------------------------------------- masks/ folder content
def test_fiji_mask_name_is_named_with_the_name_it_should_have(exported):
    _, out = exported
    e = _manifest_of(out)["patches"][1]
    tifffile.imwrite(out / "masks" / "Mask of 00001.tif", np.zeros((32, 32), np.uint8))
    with untouched(out):
        with pytest.warns(AnnotationFolderWarning,
                          match=r"Mask of 00001\.tif belongs to no exported patch.*save it as masks/"
                          + re.escape(e["id"]) + r"\.tif"):
            Patches.read_annotations(out)


def test_non_tiff_file_in_masks_is_named(exported):
    _, out = exported
    (out / "masks" / "notes.png").write_bytes(b"\x89PNG")
    with untouched(out):
        with pytest.warns(AnnotationFolderWarning, match=r"notes\.png belongs to no exported patch.*as a TIFF"):
            Patches.read_annotations(out)


def test_missing_masks_are_named(tmp_path):
    src, _, _ = _stack(tmp_path / "s.tif", 0, shape=(1, 64, 64))
    out = tmp_path / "annot"
    Patches.from_tiff(src, axes="ZYX", patch_shape=(32, 32)).export(out)
    entries = _manifest_of(out)["patches"]
    for e in entries[:3]:
        _paint(out, e)
    with untouched(out):
        with pytest.warns(AnnotationFolderWarning, match=r"1 of 4 .*skipped: " + re.escape(entries[3]["id"])):
            assert len(Patches.read_annotations(out)) == 3
        with pytest.raises(FileNotFoundError, match=r"1 of 4 .*no mask yet: " + re.escape(entries[3]["id"])):
            Patches.read_annotations(out, require_all=True)


def test_two_masks_for_one_patch(exported):
    _, out = exported
    e = _manifest_of(out)["patches"][0]
    tifffile.imwrite(out / "masks" / f"{e['id']}.tiff", np.zeros((32, 32), np.uint8))
    with untouched(out):
        with pytest.raises(ValueError, match=re.escape(e["id"]) + r" has two masks.*\.tif.*\.tiff"):
            Patches.read_annotations(out)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((32, 31), np.uint8), r"has shape \(32, 31\) but its image is \(32, 32\)"),
    (np.full((32, 32), 7, np.uint8), r"must be binary .*values 7"),
    ("garbage", r"cannot read mask"),
], ids=["wrong-shape", "non-binary", "corrupt"])
def test_bad_mask_in_masks_folder(exported, bad, message):
    _, out = exported
    e = _manifest_of(out)["patches"][2]
    path = out / e["mask"]
    if isinstance(bad, str):
        path.write_bytes(b"II*\x00" + b"\x01" * 40)
    else:
        tifffile.imwrite(path, bad)
    with untouched(out):
        with pytest.raises(ValueError, match=message) as info:
            Patches.read_annotations(out)
        assert e["id"] in str(info.value)


@pytest.mark.parametrize("bad", [np.zeros((16, 32), np.uint8), np.full((32, 32), 3, np.uint8)],
                         ids=["wrong-shape", "non-binary"])
def test_annotation_status_checks_masks(tmp_path, bad):
    out = tmp_path / "annot"
    Patches.from_arrays(np.zeros((32, 64), np.uint8), normalize="none", patch_shape=(32, 32)).export(
        out, masks=np.zeros((2, 32, 32), np.uint8))
    e = _manifest_of(out)["patches"][1]
    tifffile.imwrite(out / e["mask"], bad)
    with untouched(out):
        with pytest.raises(ValueError, match=r"mask .*" + re.escape(e["id"]) + r"\.tif (has shape|must be binary)"):
            annotation_status(out)


# ---------------------------------------------------------------- the manifest protects itself
def _edit(entry_or_manifest, field):
    if field == "normalization":
        entry_or_manifest["normalization"]["offset"] += 100.0
    elif field == "source":
        entry_or_manifest["source"] = "/elsewhere/other.tif"
    elif field == "sha256":
        entry_or_manifest["sha256"] = "0" * 64
    elif field == "mask":
        entry_or_manifest["mask"] = "masks/someone_else.tif"
    else:
        entry_or_manifest[field] += 1


@pytest.mark.parametrize("field", ["normalization", "source", "z", "y", "x", "sha256", "mask"])
def test_edited_manifest_field_is_named_and_not_blamed_on_the_image(exported, field):
    _, out = exported
    m = _manifest_of(out)
    _edit(m["patches"][1], field)
    (out / "manifest.json").write_text(json.dumps(m, indent=1))
    with untouched(out):
        with pytest.raises(ManifestEditedError,
                           match=r"manifest\.json was edited after export.*" + re.escape(m["patches"][1]["id"])
                           + r"'?: " + field):
            Patches.read_annotations(out)
        with pytest.raises(ManifestEditedError, match=field):
            annotation_status(out)


@pytest.mark.parametrize("edit", ["patch_shape", "drop-entry", "copy-entry", "no-checksum-field"])
def test_edited_manifest_structure_is_detected(exported, edit):
    _, out = exported
    m = _manifest_of(out)
    if edit == "patch_shape":
        m["patch_shape"] = [16, 16]
    elif edit == "drop-entry":
        m["patches"].pop(0)
    elif edit == "copy-entry":
        m["patches"].append(dict(m["patches"][0]))
    else:
        m["patches"][0].pop("check")
    (out / "manifest.json").write_text(json.dumps(m, indent=1))
    with untouched(out):
        with pytest.raises(ManifestEditedError, match=r"manifest\.json was edited after export"):
            Patches.read_annotations(out)


def test_changed_image_is_blamed_on_the_image(exported):
    _, out = exported
    e = _manifest_of(out)["patches"][0]
    arr = tifffile.imread(out / e["image"])
    tifffile.imwrite(out / e["image"], arr + 1)
    with untouched(out):
        with pytest.raises(ValueError, match=re.escape(e["id"]) + r"\.tif was changed after export.*manifest, "
                                              r"which is intact") as info:
            Patches.read_annotations(out)
        assert not isinstance(info.value, ManifestEditedError)


def test_export_into_folder_with_edited_manifest_is_refused(exported):
    p, out = exported
    m = _manifest_of(out)
    m["patches"][0]["z"] = 5
    (out / "manifest.json").write_text(json.dumps(m, indent=1))
    with untouched(out):
        with pytest.raises(ManifestEditedError, match=r"_x00000': z\. "):
            p.export(out, on_existing="keep")


def test_manifest_invalid_json(exported):
    _, out = exported
    (out / "manifest.json").write_text("{ not json")
    with untouched(out):
        with pytest.raises(ValueError, match=r"manifest\.json is not valid JSON"):
            Patches.read_annotations(out)


def test_unverifiable_manifest_warns_once(exported):
    _, out = exported
    m = _manifest_of(out)
    m.pop("checksum")
    (out / "manifest.json").write_text(json.dumps(m))
    _manifest._warned_unverified.discard(str((out / "manifest.json").resolve()))
    with untouched(out):
        with pytest.warns(UserWarning, match="cannot be detected"):
            Patches.read_annotations(out)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            Patches.read_annotations(out)


# ---------------------------------------------------------------- bad export / read targets
def test_export_of_empty_patches(tmp_path):
    p = Patches.from_arrays(np.zeros((32, 32), np.uint8), normalize="none")[[]]
    with untouched(tmp_path):
        with pytest.raises(ValueError, match=r"nothing to export to .*empty"):
            p.export(tmp_path / "annot")
    assert not (tmp_path / "annot").exists()


def test_export_path_is_a_file(tmp_path):
    target = tmp_path / "annot.tif"
    target.write_bytes(b"a user's file")
    p = Patches.from_arrays(np.zeros((32, 32), np.uint8), normalize="none")
    with untouched(tmp_path):
        with pytest.raises(NotADirectoryError, match=r"annot\.tif is a file"):
            p.export(target)


def test_export_images_subfolder_is_a_file(tmp_path):
    (tmp_path / "annot").mkdir()
    (tmp_path / "annot" / "images").write_text("not a folder")
    p = Patches.from_arrays(np.zeros((32, 32), np.uint8), normalize="none")
    with untouched(tmp_path):
        with pytest.raises(NotADirectoryError, match=r"annot.images is a file"):
            p.export(tmp_path / "annot")


def test_read_annotations_path_is_a_file(tmp_path):
    f = tmp_path / "manifest.json"
    f.write_text("{}")
    with untouched(tmp_path):
        with pytest.raises(NotADirectoryError, match=r"manifest\.json is a file, not an annotation folder"):
            Patches.read_annotations(f)


def test_export_into_unwritable_folder(tmp_path, monkeypatch):
    p = Patches.from_arrays(np.zeros((32, 32), np.uint8), normalize="none")
    out = tmp_path / "annot"

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with untouched(tmp_path):
        with pytest.raises(PermissionError, match=r"cannot write into .*annot .*Permission denied.*nothing was written"):
            p.export(out)
    assert not (out / "manifest.json").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere")
def test_export_into_read_only_folder(tmp_path):
    out = tmp_path / "annot"
    out.mkdir()
    out.chmod(0o555)
    try:
        with untouched(tmp_path):
            with pytest.raises(PermissionError, match=r"cannot write into .*annot"):
                Patches.from_arrays(np.zeros((32, 32), np.uint8), normalize="none").export(out)
    finally:
        out.chmod(0o755)


def test_export_keep_with_other_patch_shape(exported):
    _, out = exported
    q = Patches.from_arrays(np.zeros((16, 16), np.uint8), normalize="none")
    with untouched(out):
        with pytest.raises(ValueError, match=r"patches of shape \(32, 32\) but these are \(16, 16\)"):
            q.export(out, on_existing="keep")


def test_truncated_exported_image(exported):
    _, out = exported
    e = _manifest_of(out)["patches"][3]
    data = (out / e["image"]).read_bytes()
    (out / e["image"]).write_bytes(data[:200])
    with untouched(out):
        with pytest.raises(ValueError, match=re.escape(e["id"]) + r"\.tif.*(corrupt|truncated|changed)"):
            Patches.read_annotations(out)


def test_manifest_without_patches(tmp_path):
    out = tmp_path / "annot"
    Patches.from_arrays(np.zeros((32, 32), np.uint8), normalize="none").export(out)
    m = _manifest_of(out)
    m["patches"], m["n_patches"] = [], 0
    _manifest.write_manifest(out / "manifest.json", m)
    with untouched(out):
        with pytest.raises(ValueError, match=r"manifest\.json lists no patches"):
            Patches.read_annotations(out)


def test_reexport_over_an_image_changed_by_hand_is_refused(exported):
    p, out = exported
    e = _manifest_of(out)["patches"][2]
    arr = tifffile.imread(out / e["image"])
    tifffile.imwrite(out / e["image"], arr // 2)
    with untouched(out):
        with pytest.raises(FileExistsError, match=re.escape(e["id"]) + r" \(.*was changed after export"):
            p.export(out, on_existing="keep")


def test_mask_saved_during_export_is_not_overwritten(tmp_path, monkeypatch):
    """The existence check and the write are one step: a mask saved between them is kept."""
    from biodatacentric.data import annotations

    p = Patches.from_arrays(np.zeros((32, 32), np.uint8), normalize="none")
    out = tmp_path / "annot"
    pid = annotations._patch_id(0, "array0", 0, 0, 0)
    (out / "masks").mkdir(parents=True)
    painted = np.ones((32, 32), np.uint8)
    tifffile.imwrite(out / "masks" / f"{pid}.tif", painted)
    monkeypatch.setattr(annotations, "_find_mask", lambda directory, entry: None)  # the check saw no mask
    with untouched(out / "masks"):
        p.export(out, masks=np.zeros((1, 32, 32), np.uint8), on_existing="keep")
    assert _manifest_of(out)["patches"][0]["start_mask"] == "kept existing"
