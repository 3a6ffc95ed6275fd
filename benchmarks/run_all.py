"""Run every benchmark, then collect RESULTS.md (long: a few hours on a quiet 2-core machine; each
script trains what it needs, e.g. the benchmark MAE, in its own run, so a fresh clone with the data
under ``BIODATACENTRIC_DATA`` reproduces every file of ``results/``).

    python benchmarks/run_all.py [--skip loop scale]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from _common import HERE

COMMANDS = {
    "evidence": ["bench_evidence.py"],
    "patches": ["bench_patches.py"],
    "mae": ["bench_mae.py"],
    "kcover": ["bench_kcover.py"],
    "segment": ["bench_segment.py"],
    "hunt": ["bench_hunt.py"],
    "hunt_target": ["bench_hunt.py", "--protocol", "target"],
    "hunt_redraw": ["bench_hunt.py", "--redraw", "10"],
    "hunt_target_redraw": ["bench_hunt.py", "--protocol", "target", "--redraw", "10"],
    "rca": ["bench_rca.py"],
    "rca_own": ["bench_rca.py", "--own-references", "6"],
    "rank": ["bench_rank.py", "--steps", "30", "--test-every", "10", "--n-sample", "8", "--n-views", "2",
             "--threads", "1"],
    # the settings of the committed results/loop.md (seeds in 3 child processes, every 4th test slice)
    "loop": ["bench_loop.py", "--test-slice-step", "4", "--workers", "3"],
    "scale": ["bench_scale.py"],
    "scale_estimates": ["scale_estimates.py"],  # after scale and kcover, whose numbers it extrapolates
    "dask": ["bench_dask.py"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip", nargs="*", default=[])
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    for name, cmd in COMMANDS.items():
        if name in args.skip or (args.only is not None and name not in args.only):
            continue
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        subprocess.run([sys.executable, str(HERE / cmd[0]), *cmd[1:]], check=True, cwd=HERE.parent)
    subprocess.run([sys.executable, str(HERE / "collect_results.py")], check=True)


if __name__ == "__main__":
    main()
