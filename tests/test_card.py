"""Model cards: built by fit / fine_tune, saved as plain JSON, read back, exported to bioimage.io."""

from __future__ import annotations

import json

import numpy as np
import pytest

from biodatacentric import Patches, TransUNetSegmenter, make_vessels
from biodatacentric.data._descriptor import DESCRIPTOR, describe, drift, summarise
from biodatacentric.segment import ModelCard
from biodatacentric.segment._card import CARD_FILE


@pytest.fixture(scope="module")
def fitted():
    img, mask = make_vessels((4, 64, 64), random_state=0)
    p = Patches.from_arrays(img, axes="ZYX", patch_shape=(32, 32), masks=mask)
    seg = TransUNetSegmenter(preset="tiny", feature_size=4, max_epochs=2, precision="fp32", random_state=0,
                             progress=False).fit(p, validation=p[:4])
    seg.fine_tune(p[:3], replay=p, n_replay=5, max_epochs=1)
    return seg, p


def test_card_describes_training(fitted):
    seg, p = fitted
    card = seg.card_
    assert card.model["patch_shape"] == [32, 32] and card.model["preset"] == "tiny"
    assert card.training_data["n_patches"] == len(p)
    fp = card.training_data["fingerprint"]
    assert fp["n_patches"] == len(p) and 0 < fp["mask_share"] < 1
    emb = card.training_data["embedding"]
    assert emb["embedder"] == DESCRIPTOR and emb["n"] == len(p)
    # the stored summary is the descriptor summary of the training patches themselves
    assert np.allclose(emb["mean"], summarise(describe(p.images()))["mean"])
    assert [r["kind"] for r in card.rounds] == ["core", "critical"]
    assert card.rounds[0]["n_patches"] == 16 and card.rounds[1]["n_patches"] == 3
    assert card.rounds[1]["n_replay_per_epoch"] == 5 and card.rounds[1]["replay_pool"] == 16
    assert card.rounds[0]["epochs"] == 2 and card.rounds[1]["epochs"] == 1
    assert card.validation["n_patches"] == 4
    assert card.validation["dice"] == pytest.approx(seg.history_["val_dice"][seg.best_epoch_])
    assert card.resources["train_seconds"] > 0 and card.resources["peak_memory_mb"] > 0
    text = str(card)
    assert "round 1 (critical)" in text and "validation Dice" in text


def test_card_saved_as_json_and_loaded(fitted, tmp_path):
    seg, p = fitted
    folder = seg.save(tmp_path / "m")
    raw = json.loads((folder / CARD_FILE).read_text())
    assert raw["format"].startswith("biodatacentric-model-card")
    assert "card_" not in json.loads((folder / "config.json").read_text())["fitted"]
    again = TransUNetSegmenter.load(folder)
    assert again.card_.to_dict() == seg.card_.to_dict()
    assert ModelCard.load(folder).rounds == seg.card_.rounds
    np.testing.assert_allclose(again.predict_proba(p[:2]), seg.predict_proba(p[:2]), atol=1e-6)


def test_card_records_monitor(fitted):
    seg, p = fitted
    from biodatacentric.monitor import QualityMonitor

    mon = QualityMonitor(seg, n_samples=2, n_tiles=2, n_corruptions=1, n_estimators=5, random_state=0).fit(p)
    card = ModelCard.from_dict(seg.card_.to_dict())
    card.record_monitor(mon)
    assert card.monitor["n_references"] == len(p)
    assert card.monitor["halfwidth"] == pytest.approx(mon.halfwidth_)
    assert card.monitor["calibration_mae"] >= 0
    with pytest.raises(ValueError, match="fitted QualityMonitor"):
        card.record_monitor(QualityMonitor(seg))


def test_damaged_card_is_refused(fitted, tmp_path):
    seg, _ = fitted
    folder = seg.save(tmp_path / "m")
    (folder / CARD_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="model_card.json is not valid JSON"):
        TransUNetSegmenter.load(folder)
    (folder / CARD_FILE).write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a biodatacentric model card"):
        ModelCard.load(folder)


def test_descriptor_drift_separates_unlike_data():
    img, _ = make_vessels((16, 64, 64), random_state=0)
    s = summarise(describe(img))
    alike = drift(s, describe(make_vessels((8, 64, 64), random_state=1)[0]))
    noise = np.random.default_rng(0).random((8, 64, 64)).astype(np.float32)
    assert alike < 10.0 < drift(s, describe(noise))
    with pytest.raises(ValueError, match="features"):
        drift(s, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="cannot be compared"):
        drift({**s, "embedder": "mae"}, describe(img))


def test_bioimageio_export_carries_the_card(fitted, tmp_path):
    seg, _ = fitted
    from biodatacentric.integrations.bioimageio import export_bioimageio, from_bioimageio

    folder = export_bioimageio(seg, tmp_path / "pkg")
    readme = (folder / "README.md").read_text()
    assert "Model card (biodatacentric)" in readme and "round 1 (critical)" in readme
    back = from_bioimageio(TransUNetSegmenter, folder)
    assert back.card_.to_dict() == seg.card_.to_dict()
