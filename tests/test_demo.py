"""The demo (make demo) runs the whole loop on the bundled sample and writes its figures."""

import pytest

from biodatacentric.demo import run_demo

pytestmark = pytest.mark.slow


def test_quick_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    results = run_demo(out=out, quick=True)
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
