"""The example scripts run end to end (stages 0-4) on the bundled sample with --quick, from any folder.

The scripts are what a user copies first, so they are run as a user would: one process each,
in order, sharing a work folder (each stage reads what the previous one wrote). The dataset's
masks stand in for the person (``--simulate``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="examples/ not present (installed package)")
def test_examples_run_in_order_on_the_bundled_sample(tmp_path):
    # run from an unrelated folder, with the defaults a user gets (bundled sample) and --quick
    common = ["--work", str(tmp_path / "work"), "--quick"]
    steps = [("01_patches.py", []), ("02_pretrain.py", []), ("03_assess.py", []),
             ("04_segment.py", ["--simulate"]), ("05_hunt.py", ["--simulate"]), ("06_monitor.py", ["--simulate"])]
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    outputs = {}
    for script, extra in steps:
        res = subprocess.run([sys.executable, str(EXAMPLES / script), *common, *extra], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"{script} failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
        outputs[script] = res.stdout
    work = tmp_path / "work"
    assert (work / "mae" / "config.json").is_file() and (work / "embeddings.npy").is_file()
    assert len(list((work / "annotation" / "core" / "images").glob("*.tif"))) == 8
    assert (work / "M0" / "config.json").is_file() and (work / "M1" / "config.json").is_file()
    out = outputs["06_monitor.py"]
    assert "QualityMonitor calibrated on" in out and "estimated Dice" in out and "true Dice" in out
    assert len(list((work / "annotation" / "validation" / "masks").glob("*.tif"))) == 12


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="examples/ not present (installed package)")
def test_examples_say_what_is_wrong_with_data(tmp_path):
    res = subprocess.run([sys.executable, str(EXAMPLES / "01_patches.py"), "--data", str(tmp_path)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "has no images/ folder" in res.stderr
