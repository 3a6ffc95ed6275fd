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
    # the cohort benchmark's arms, each with the command of its committed report
    "evidence": ["bench_evidence.py", "--seeds", "0", "1", "2", "3", "4", "--ks", "5", "10", "25", "50", "--steps", "88",
                 "--mae-epochs", "20", "--workers", "2", "--max-minutes", "95", "--phases", "main"],
    "evidence_candidates": ["bench_evidence.py", "--phases", "candidates", "--seeds", "0", "1", "2", "3", "4", "--ks",
                            "10", "25", "--steps", "88", "--mae-epochs", "20", "--workers", "2", "--max-minutes", "100"],
    "evidence_mae": ["bench_evidence.py", "--seeds", "0", "1", "2", "3", "4", "--ks", "10", "25", "--steps", "88",
                     "--mae-epochs", "20", "--workers", "2", "--max-minutes", "38", "--phases", "mae",
                     "--mae-ks", "10", "25", "--mae-selectors", "uniform", "K-cover"],
    "evidence_mae_default": ["bench_evidence.py", "--seeds", "0", "1", "2", "3", "4", "--steps", "88", "--mae-epochs",
                             "100", "--workers", "2", "--max-minutes", "40", "--phases", "mae", "--mae-ks", "10", "25",
                             "--mae-selectors", "uniform", "K-cover", "--name", "evidence_mae_default",
                             "--preregistration", "mae_default"],
    "evidence_hunt": ["bench_evidence.py", "--seeds", "0", "1", "2", "3", "4", "--ks", "25", "--steps", "88",
                      "--mae-epochs", "20", "--workers", "2", "--max-minutes", "80", "--phases", "hunt"],
    "evidence_transfer": ["bench_transfer.py", "--phases", "diag", "arms", "--seeds", "0", "1", "2", "3", "4", "--ks",
                          "10", "25", "--arms", "scratch", "MAE", "MAE + LLRD", "MAE + freeze", "--workers", "2",
                          "--mae-threads", "1", "--max-minutes", "48"],
    "evidence_transfer_coarse": ["bench_transfer_coarse.py", "--seeds", "0", "1", "2", "3", "4", "--ks", "25", "10",
                                 "--ablate-seeds", "0", "1", "--workers", "2", "--max-minutes", "55"],
    # time budgets: on a quiet machine (they measure wall time against the budget)
    "budget": ["bench_budget.py", "--data", "sample", "vesselnn", "--budgets", "5min"],
    "budget_15min": ["bench_budget.py", "--data", "vesselnn", "--budgets", "15min", "--name", "budget_15min"],
    "monitor": ["bench_monitor.py", "--budget-min", "30", "--workers", "2"],
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
