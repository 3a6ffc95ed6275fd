"""The command line runs the whole loop on the bundled sample from files to files, as a shell
script would, with a simulated person painting the masks between the stages."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

import biodatacentric as bdc
from biodatacentric.cli import main


def _paint(folder, stack_masks):
    """Stand-in for the person: write each exported patch's true mask as masks/<id>.tif."""
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "masks").mkdir(exist_ok=True)
    for entry in manifest["patches"]:
        z, y, x = entry["z"], entry["y"], entry["x"]
        h, w = entry.get("shape", (64, 64))[-2:]
        tifffile.imwrite(folder / entry["mask"], stack_masks[z, y:y + h, x:x + w].astype(np.uint8))


def test_version_and_plain_help():
    res = subprocess.run([sys.executable, "-m", "biodatacentric", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == f"biodatacentric {bdc.__version__}"
    res = subprocess.run([sys.executable, "-m", "biodatacentric", "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    for command in ("pretrain", "select", "segment", "hunt", "predict", "monitor", "fingerprint", "demo"):
        assert command in res.stdout
    assert "``" not in res.stdout and ":class:" not in res.stdout     # plain text, no reST


def test_user_errors_are_one_line_without_traceback(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "missing.tif"), "--model", str(tmp_path), "--out", "x.tif"]) != 0
    err = capsys.readouterr().err
    assert "error:" in err and "is not a saved model folder" in err and "Traceback" not in err
    sample = bdc.load_sample()
    assert main(["monitor", str(sample.image_path), "--predictions", str(sample.mask_path), str(sample.mask_path),
                 "--references", str(tmp_path), "--out", "r.csv"]) == 2
    assert "1 images but 2 --predictions" in capsys.readouterr().err
    assert main(["monitor", str(sample.image_path), "--predictions", str(sample.mask_path),
                 "--references", str(tmp_path), "--out", "r.txt"]) == 2     # refused before any work
    assert "must end in .csv or .json" in capsys.readouterr().err


@pytest.mark.slow
def test_whole_loop_through_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BIODATACENTRIC_PROGRESS", "0")
    sample = bdc.load_sample()
    image = str(sample.image_path)
    truth = (sample.mask > 0).astype(np.uint8)
    run = lambda *argv: main([str(a) for a in argv])  # noqa: E731

    assert run("fingerprint", image, "--patch", 64, "--out", "fp.json") == 0
    assert json.loads((tmp_path / "fp.json").read_text())["n_sources"] == 1

    assert run("pretrain", image, "--out", "mae", "--patch", 64, "--epochs", 1, "--preset", "tiny",
               "--embeddings", "emb.npy") == 0
    assert (tmp_path / "mae" / "config.json").is_file() and np.load("emb.npy").ndim == 2

    # the audit never excludes more than half without being told: a duplicate threshold that joins
    # every patch makes select refuse, name the check, its share and the options, and export nothing
    capsys.readouterr()
    assert run("select", image, "--mae", "mae", "--k", 4, "--out", "refused", "--duplicate-threshold", -1) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: DatasetAuditor: exclude_ removes") and "duplicate: " in err
    assert "--max-excluded" in err and "--audit-exclude blank saturated blurry" in err
    assert not (tmp_path / "refused").exists()
    assert run("select", image, "--mae", "mae", "--k", 1, "--out", "accepted", "--duplicate-threshold", -1,
               "--max-excluded", 1) == 0                              # told: goes on, and says why
    out = capsys.readouterr().out
    assert "because --max-excluded 1 allows it" in out and "duplicate: " in out
    assert len(list((tmp_path / "accepted" / "images").glob("*.tif"))) == 1    # the one patch left
    assert run("select", image, "--mae", "mae", "--k", 2, "--out", "kept", "--duplicate-threshold", -1,
               "--audit-exclude", "blank", "saturated", "blurry") == 0   # near-duplicates kept in
    assert "excluded checks: blank saturated blurry" in capsys.readouterr().out
    with pytest.raises(SystemExit):                                   # argparse: usage error, status 2
        run("select", image, "--mae", "mae", "--k", 2, "--out", "x", "--max-excluded", 2)
    assert "not a fraction between 0 and 1" in capsys.readouterr().err

    assert run("select", image, "--mae", "mae", "--k", 4, "--out", "core") == 0
    assert len(list((tmp_path / "core" / "images").glob("*.tif"))) == 4
    _paint(tmp_path / "core", truth)

    assert run("segment", "core", "--mae", "mae", "--preset", "tiny", "--epochs", 1, "--out", "M0") == 0
    assert run("hunt", image, "--model", "M0", "--n", 2, "--samples", 3, "--exclude", "core",
               "--out", "round1") == 0
    core_ids = {p.name for p in (tmp_path / "core" / "images").glob("*.tif")}
    hunted = {p.name for p in (tmp_path / "round1" / "images").glob("*.tif")}
    assert len(hunted) == 2 and not (hunted & core_ids)          # already-annotated patches not offered
    assert len(list((tmp_path / "round1" / "masks").glob("*.tif"))) == 2   # the model's masks to correct
    for m in (tmp_path / "round1" / "masks").glob("*.tif"):
        m.unlink()                                              # the person replaces them
    _paint(tmp_path / "round1", truth)

    assert run("segment", "round1", "--fine-tune", "M0", "--replay", "core", "--epochs", 1, "--out", "M1") == 0
    assert run("predict", image, "--model", "M1", "--out", "pred.tif") == 0
    pred = tifffile.imread(tmp_path / "pred.tif")
    assert pred.shape == sample.image.shape and set(np.unique(pred)) <= {0, 1}
    with tifffile.TiffFile(tmp_path / "pred.tif") as tf:
        assert tf.is_imagej and tf.series[0].axes == "ZYX"
    assert run("predict", image, "--model", "M1", "--out", "pred.tif") == 2     # never replaced silently

    assert run("monitor", image, "--predictions", "pred.tif", "--references", "core", "round1",
               "--out", "quality.csv") == 0
    lines = (tmp_path / "quality.csv").read_text().splitlines()
    assert lines[0] == "image,prediction,estimated_dice,passed" and len(lines) == 2
    assert 0.0 <= float(lines[1].split(",")[2]) <= 1.0
