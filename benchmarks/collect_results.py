"""Assemble benchmarks/RESULTS.md from the per-benchmark files in benchmarks/results/.

Each benchmark script writes its own measured numbers to results/<name>.md (with the date,
machine and command); this script only concatenates them in a fixed order.

    python benchmarks/collect_results.py
"""

from __future__ import annotations

import datetime as _dt
import re

from _common import HERE, RESULTS, machine

ORDER = ["evidence", "evidence_candidates", "evidence_mae", "evidence_transfer", "evidence_transfer_coarse", "evidence_mae_default",
         "evidence_hunt",
         "budget", "budget_15min", "patches", "mae",
         "kcover", "faiss", "segment", "hunt", "hunt_target", "hunt_redraw", "hunt_target_redraw", "rca", "rca_own",
         "rca_history", "loop", "scale", "scale_estimates", "dask"]


def main() -> None:
    files = sorted(RESULTS.glob("*.md"), key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else 99, p.stem))
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = (f"# Benchmark results\n\nAssembled {stamp} from `benchmarks/results/*.md` by "
            f"`python benchmarks/collect_results.py`. Each section states when, on what machine and with "
            f"which command its numbers were measured (this machine: {machine()}). Timings on shared "
            "machines are noisy: comparisons are made side by side in one run and reported as ratios "
            "and medians. `make bench` re-runs everything.\n")
    # figure links in results/<name>.md are relative to results/. RESULTS.md sits one folder up
    # and is also included by docs/benchmarks.md, so the link goes through ../benchmarks/, which
    # resolves to the same file from benchmarks/ (on GitHub) and from docs/ (Sphinx)
    parts = [re.sub(r"\]\(([\w.-]+\.png)\)", r"](../benchmarks/results/\1)", p.read_text(encoding="utf-8").strip())
             for p in files]
    (HERE / "RESULTS.md").write_text(head + "\n" + "\n\n---\n\n".join(parts) + "\n", encoding="utf-8")
    print(f"wrote {HERE / 'RESULTS.md'} from {len(files)} result files")


if __name__ == "__main__":
    main()
