"""The demo (make demo) runs the whole loop on the bundled sample and writes its figures."""

import pytest

from biodatacentric.demo import run_demo

pytestmark = pytest.mark.slow


def test_quick_demo_runs_end_to_end(tmp_path, monkeypatch):
    import hashlib
    import json
    import os

    import biodatacentric.demo as demo
    from biodatacentric._runs import SHIPPED_RUNS

    shipped = hashlib.sha256(SHIPPED_RUNS.read_bytes()).hexdigest()
    # the demo's settings, with an audit that flags (nearly) every patch as a near-duplicate: the
    # demo must then exclude nothing and say why; and the RCA must take the config's monitor settings
    used: dict = {}

    def config(*a, **k):
        cfg = real_config(*a, **k)
        cfg["audit"] = dict(duplicate_threshold=-1.0, exclude_checks=("duplicate", "blank"), n_clusters=4,
                            random_state=0)
        cfg["monitor"] = {**cfg["monitor"], "n_estimators": 7}
        used["cfg"] = cfg
        return cfg

    class SpyRCA(demo.RCAMonitor):
        def fit(self, *a, **k):
            used["rca_trees"] = self.n_estimators
            return super().fit(*a, **k)

    real_config = demo.demo_config
    monkeypatch.setattr(demo, "demo_config", config)
    monkeypatch.setattr(demo, "RCAMonitor", SpyRCA)
    out = tmp_path / "demo"
    results = run_demo(out=out, quick=True)
    assert used["rca_trees"] == 7                                   # the plan's / config's monitor applied
    assert results["audit_excluded"] == 0
    report_text = (out / "report.md").read_text()
    assert "NOT EXCLUDED: DatasetAuditor: exclude_ removes" in report_text and "duplicate: " in report_text
    # the run's record went to the user's runs file (tests: a throw-away file), not the shipped table
    assert results["runs_file"] == os.environ["BIODATACENTRIC_RUNS"]
    rec = [json.loads(line) for line in open(results["runs_file"], encoding="utf-8")][-1]
    assert rec["kind"] == "demo" and rec["quality"]["dice_m1"] == results["dice_m1"]
    assert rec["config"]["monitor"]["n_estimators"] == 7 and rec["measured"]["total"] > 0
    assert hashlib.sha256(SHIPPED_RUNS.read_bytes()).hexdigest() == shipped
    for name in ("report.md", "core_set_montage.png", "embedding_map.png", "critical_patches.png",
                 "m0_vs_m1.png", "quality_scatter.png", "mae_reconstruction.png"):
        assert (out / name).is_file(), name
    assert 0.0 <= results["dice_m0"] <= 1.0 and 0.0 <= results["dice_m1"] <= 1.0
    report = (out / "report.md").read_text()
    assert "SIMULATION" in report and "Stage 4" in report
    # stage 4: a QualityMonitor per model (a deliberately weak one, M0, M1) scores the held-out slices
    rows = results["monitor"]
    assert {r["model"] for r in rows} == {"weak (1 epoch)", "M0", "M1"}
    assert all(r["decision"] in ("pass", "review", "fail") and r["agreement"] is not None for r in rows)
    assert len(list((out / "annotation" / "validation" / "masks").glob("*.tif"))) == 12
    # the annotation folders went through the real export / read-back round trip
    assert (out / "annotation" / "core" / "manifest.json").is_file()
    assert len(list((out / "annotation" / "round1" / "masks").glob("*.tif"))) == 3
    # the demo keeps what a user wants afterwards: the models and the held-out prediction as TIFF
    import tifffile

    from biodatacentric import MAEPretrainer, TransUNetSegmenter

    for name in ("M0", "M1"):
        assert TransUNetSegmenter.load(out / "models" / name).patch_shape_ is not None
    MAEPretrainer.load(out / "models" / "mae")
    with tifffile.TiffFile(out / "heldout_prediction_M1.tif") as tf:
        assert tf.is_imagej and tf.series[0].axes == "ZYX"
    assert str(out / "heldout_prediction_M1.tif") in report
