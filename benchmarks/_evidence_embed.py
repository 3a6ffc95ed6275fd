"""The embedding-risk arm of the cohort report (``bench_evidence.py --phases embedseeds``).

K-cover on the main table's single MAE, on one MAE per seed (the risk a user takes, whose MAE has its
own randomness) and on the label-free pixel descriptor, against uniform and stratified random picks;
the pre-registered keep rule's verdict. Rows are ordinary training rows (kind ``"train"``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from _evidence_report import (Results, _write, fmt_paired, macro_table, mean, paired,   # loaded before this module
                              TITLE)


def report_embedseeds(run_dir: Path, rows: list[dict], st: dict, P: dict, command: str) -> Path:
    """evidence_embedseeds.md (or ``--name``): the pre-registration, the tables and the verdict."""
    info, a = st["info"], st["info"]["args"]
    arms = P["embed_arms"]
    seeded, desc = arms[3], arms[4]
    ks = sorted(a["ks"])
    res = Results(rows)
    skipped = [r for r in rows if r["skipped"]]
    L = [P["preregistrations"]["embedseeds"].strip(), "",
         f"Pool: {info['n_pool']} patches (128 x 128) of 10 stacks, evaluation slices as in the main run; seeds "
         f"{a['seeds']}, K {ks}; every segmenter `TransUNetSegmenter(preset={a['preset']!r})` defaults for "
         f"**{a['steps']} steps of batch {P['batch']}**; MAEs: `MAEPretrainer(preset={a['preset']!r})` defaults, "
         f"{a['mae_epochs']} epochs on the pool each (seed 0's took {info['t_mae'] / 60:.1f} min incl. embedding). "
         f"Workers {a['workers']} x {a['threads']} thread. Wall time **{info['wall'] / 60:.1f} min** (load average "
         f"at start {info['load_start'][0]:.1f}, at end {info['load_end'][0]:.1f}).",
         "" if not skipped else f"**Not run (wall-clock limit):** {len(skipped)} tasks.", "",
         "### Macro Dice over the 10 stacks (mean ± SE over seeds; worst seed in brackets)", "",
         *macro_table(res, arms, ks), "",
         "### Paired differences (macro Dice, mean ± SE over seeds, n)", "",
         "| K | " + " | ".join(f"{m} − uniform" for m in arms[2:]) + " | "
         + " | ".join(f"{m} − stratified" for m in arms[2:]) + f" | {desc} − {seeded} |",
         "|---|" + "---|" * (2 * len(arms[2:]) + 1)]
    for K in ks:
        cells = [fmt_paired(*paired(res.macro(m, K), res.macro(b, K)))
                 for b in ("uniform", "stratified") for m in arms[2:]]
        cells.append(fmt_paired(*paired(res.macro(desc, K), res.macro(seeded, K))))
        L.append(f"| {K} | " + " | ".join(cells) + " |")
    L += ["", "`*` = |difference| > 2 SE.", "",
          "Distinct cores over the seeds (one core per seed for a random method): "
          + "; ".join(f"K = {K}: " + ", ".join(
              f"{m} {len({tuple(sorted(st['sel'][(m, K, s, False)])) for s in a['seeds']})}" for m in arms)
              for K in ks), ""]
    # the keep rule, as pre-registered
    verdict, why = True, []
    for K in (10, 25):
        if K not in ks or not res.macro(desc, K):
            verdict = False
            why.append(f"K = {K} not measured")
            continue
        d_seed = paired(res.macro(desc, K), res.macro(seeded, K))[0]
        best = max(("uniform", "stratified"), key=lambda b: mean(res.macro(b, K)))
        d_best = paired(res.macro(desc, K), res.macro(best, K))[0]
        ok = d_seed >= 0 and d_best > 0
        verdict &= ok
        why.append(f"K = {K}: {desc} − {seeded} {d_seed:+.3f}, − {best} {d_best:+.3f} ({'passes' if ok else 'fails'})")
    L += ["### Keep rule", "", "; ".join(why) + ".", "",
          ("-> **passes**: the assess guide recommends the descriptor as the selection embedding." if verdict else
           "-> **fails**: the guide keeps the MAE embeddings for selection and reports these figures."), ""]
    name = a.get("name") or "evidence_embedseeds"
    return _write(name, TITLE + " -- K-cover's risk over embeddings", L, command, a["quick"], run_dir, st.get("note"))
