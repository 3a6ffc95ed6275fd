"""bioimage.io export / import of a fitted segmenter (extra: bioimageio, i.e. bioimageio.spec)."""

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("bioimageio.spec")

from biodatacentric import Patches, TransUNetSegmenter, make_vessels  # noqa: E402
from biodatacentric.integrations.bioimageio import _scale_range, validate_bioimageio  # noqa: E402


@pytest.fixture(scope="module")
def fitted():
    img, mask = make_vessels((2, 64, 64), random_state=0)
    p = Patches.from_arrays([img], masks=[mask], axes="ZYX", patch_shape=(32, 32))
    seg = TransUNetSegmenter(preset="tiny", max_epochs=2, random_state=0, progress=False)
    seg.fit(p[:5], validation=p[5:])
    seg.fine_tune(p[5:7], max_epochs=1)
    return seg, p


@pytest.fixture(scope="module")
def package(fitted, tmp_path_factory):
    seg, p = fitted
    return seg.export_bioimageio(tmp_path_factory.mktemp("bio") / "model", training_data=p[:5],
                                 authors=["A. Tester"])


def test_package_is_valid_and_documents_its_training(fitted, package):
    seg, _ = fitted
    descr = validate_bioimageio(package)
    assert descr.validation_summary.status in ("passed", "valid-format")
    assert sorted(f.name for f in package.iterdir()) == ["README.md", "rdf.yaml", "test_input.npy",
                                                          "test_output.npy", "weights.pt", "weights.torchscript"]
    rdf = yaml.safe_load((package / "rdf.yaml").read_text())
    assert rdf["format_version"].startswith("0.5")
    assert rdf["weights"]["pytorch_state_dict"]["architecture"]["import_from"] == "biodatacentric.nn.transunet"
    card = (package / "README.md").read_text()
    assert "5 patches of [32, 32] pixels" in card and "1 fine-tuning round(s)" in card
    assert "round 0: 2 new patches" in card
    dice = rdf["config"]["biodatacentric"]["validation_dice"]
    assert dice == pytest.approx(seg.history_["val_dice"][seg.best_epoch_])  # fine_tune was not validated
    assert f"{dice:.4f}" in card


def test_test_tensors_match_both_weight_formats(package):
    x = np.load(package / "test_input.npy")
    y = np.load(package / "test_output.npy")
    assert x.shape == (1, 1, 32, 32) and y.shape == (1, 2, 32, 32)
    ts = torch.jit.load(str(package / "weights.torchscript"))  # our own file, in the test only
    with torch.no_grad():
        # float32 logits of magnitude ~10 (the coarse head's logits are added to the output):
        # the traced graph may order the sums differently, so allow float32 rounding in relative terms
        np.testing.assert_allclose(ts(torch.from_numpy(_scale_range(x))).numpy(), y, rtol=1e-5, atol=1e-5)


def test_import_predicts_like_the_original(fitted, package):
    seg, p = fitted
    back = TransUNetSegmenter.from_bioimageio(package)
    np.testing.assert_allclose(back.predict_proba(p[:3]), seg.predict_proba(p[:3]), atol=1e-6)
    assert back.patch_shape_ == (32, 32) and len(back.fine_tune_history_) == 1


def test_import_refuses_other_architectures_and_changed_weights(package, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(package, bad)
    rdf = yaml.safe_load((bad / "rdf.yaml").read_text())
    rdf["weights"]["pytorch_state_dict"]["architecture"]["import_from"] = "payload"
    (bad / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    with pytest.raises(ValueError, match="only biodatacentric.nn.transunet:TransUNet"):
        TransUNetSegmenter.from_bioimageio(bad)
    shutil.rmtree(bad)
    shutil.copytree(package, bad)
    with open(bad / "weights.pt", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="does not match the sha256"):
        TransUNetSegmenter.from_bioimageio(bad)
    with pytest.raises(FileExistsError, match="never replaces"):
        TransUNetSegmenter.from_bioimageio(package).export_bioimageio(bad)
