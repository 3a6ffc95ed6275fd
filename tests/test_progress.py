"""Long work shows signs of life: a bar on a terminal, log lines with elapsed time and ETA
elsewhere (a cluster job, a notebook's subprocess), nothing when switched off."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = """
import time
from biodatacentric._utils import progress
for _ in progress(range(5), desc="pretend epochs", log_every=0.0):
    time.sleep(0.01)
"""


def _run(env_value):
    env = {k: v for k, v in os.environ.items() if k != "BIODATACENTRIC_PROGRESS"}
    if env_value is not None:
        env["BIODATACENTRIC_PROGRESS"] = env_value
    res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stderr.splitlines()


@pytest.mark.parametrize("env_value", [None, "1", "log"])
def test_log_lines_when_stderr_is_not_a_terminal(env_value):
    lines = [ln for ln in _run(env_value) if ln.startswith("[biodatacentric]")]
    assert len(lines) == 5                      # log_every=0: one line per item
    assert lines[0].startswith("[biodatacentric] pretend epochs: 1/5 (20%), elapsed ")
    assert all("ETA" in ln for ln in lines)
    assert lines[-1].startswith("[biodatacentric] pretend epochs: 5/5 (100%)")
    assert lines[-1].endswith("ETA 0.0s")


def test_nothing_when_switched_off():
    assert not [ln for ln in _run("0") if "pretend epochs" in ln]


def test_rate_limited_log_lines(capsys):
    from biodatacentric._utils import progress

    assert list(progress(range(50), desc="quiet", enabled=True, log_every=3600)) == list(range(50))
    lines = capsys.readouterr().err.splitlines()
    # the first item (the ETA is known early) and the last; nothing in between within an hour
    assert [ln.split(",")[0] for ln in lines] == ["[biodatacentric] quiet: 1/50 (2%)",
                                                  "[biodatacentric] quiet: 50/50 (100%)"]


def test_unknown_length_reports_counts(capsys):
    from biodatacentric._utils import progress

    assert sum(progress(iter(range(3)), desc="stream", enabled=True, log_every=0)) == 3
    assert capsys.readouterr().err.splitlines()[-1].startswith("[biodatacentric] stream: 3 done, elapsed ")
