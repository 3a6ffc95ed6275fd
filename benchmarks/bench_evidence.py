"""The cohort benchmark of issue 20: does K-cover selection beat what a user would do instead?

Protocol (transductive, the paper's setting). The pool is every 128 x 128 patch of the pool
slices of all 9 vesselnn_2pm stacks and the tubenet_octa volume (10 conditions). Slices are
interleaved with one unused slice between a pool slice and an evaluation slice:
``z % 4 == 0`` pool, ``z % 4 == 2`` evaluation, odd slices unused. The selectors see the pool
without labels (embeddings of the library's default pipeline: ``MAEPretrainer()`` defaults
except the stated training budget, mean-pooled tokens, PCA, L2-normalised); the "person"
labels the picks with the stack's masks. A segmenter (library defaults except the stated
step budget, the same for every method) is trained on the picks and evaluated on the
evaluation slices of every stack: Dice per stack, their macro mean (each condition once),
the worst stack, pooled Dice.

Methods: uniform random; foreground-aware random (random among patches whose Otsu-above
fraction, a label-free proxy, is >= 5 %); per-stack stratified random; k-center
(``KCenterSelector`` defaults); **K-cover = the library's default use**:
``KCoverSelector(n_select=K, random_state=seed)`` with its defaults (``whiten=True``) fitted with
``groups=`` the stack of each pool patch. Each with and without the default ``DatasetAuditor``'s
exclusions (the same exclusions for all). Budgets K and full supervision, several seeds; a seed
fixes both the selection (random methods) and the training seed, so differences are paired.

Arms after the main table, in priority order: audit exclusions; MAE-initialised vs scratch
(K-cover and uniform random); hunting (M1 = M0 + 3 hunted vs M0 + 3 uniform / foreground-
aware random, M0 = the K-cover K=25 core, on fresh random sub-pools, Spearman(score, M0 patch
error)). ``--phases candidates`` is the pre-registered run that made whiten + groups the default:
it compares ``K-cover raw`` (``whiten=False``, no groups: the default before it) with its
``+g`` / ``+w`` / ``+wg`` variants; those raw variants exist for that phase only.

Training runs in worker processes (one torch thread each); a wall-clock limit skips the
tasks not started in time and the report says which.

    python benchmarks/bench_evidence.py [--quick] [--seeds 0 1 2 3 4] [--ks 5 10 25 50]
        [--steps 88] [--mae-epochs 20] [--workers 2] [--max-minutes 62] [--phases main ...]

A run with the main arm writes benchmarks/results/evidence.md and evidence_*.png; a run of other
arms alone writes evidence_<arms>.md (``--phases candidates``: evidence_candidates.md and its
figure). Only the arms that ran get tables. Each run's files (rows.jsonl: one row per task;
state.json, emb.npy: selections, audit flags, settings) go to benchmarks/_out/evidence/<kind of
run>/ (git-ignored, written fresh by every run); the report (``_evidence_report.py``) is rendered
from them. ``--report-from RUN_DIR`` re-renders the report of that one run from its own files
(after a crash in the report or a change of layout), and nothing else: runs are never combined.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, OUT, machine  # noqa: E402
from _evidence_report import dice_from_counts, render  # noqa: E402

RAW = OUT / "evidence"
PATCH = 128
BATCH = 8
FG_MIN_FRACTION = 0.05          # foreground-aware random: Otsu-above fraction of a candidate
METHODS = ["uniform", "fg-random", "stratified", "k-center", "K-cover"]
RANDOM_BASELINES = ["uniform", "fg-random", "stratified"]
# --phases candidates (pre-registered; the text is _evidence_report.PREREGISTRATION): raw K-cover variants
RAW_KC = "K-cover raw"   # KCoverSelector(whiten=False) without groups: the default before that run
CANDIDATES = ["uniform", "stratified", RAW_KC, "K-cover+g", "K-cover+w", "K-cover+wg"]
# --phases hunt (pre-registered; HUNT_PREREGISTRATION): the hunter's sampling source, old default first
HUNT_OLD, HUNT_NEW = "MC dropout, top-q BALD", "dihedral, pairwise Dice"
HUNT_CONFIGS = {HUNT_OLD: {"transforms": "none", "aggregate": "top_q"},          # MCDropoutHunter(**config)
                HUNT_NEW: {"transforms": "dihedral", "aggregate": "pairwise_dice"}}
HUNT_GROUPS = ["burgess2014", "poon2015", "santos2015"]   # acquisition groups of the new-stacks check
HUNT_PREREGISTRATION = """\
**Pre-registration of the hunter's default (written into `bench_evidence.py` before the run; nothing below
was changed after it).**

*Diagnosis:* `TransUNetSegmenter` defaults to `decoder_dropout=0.0`, `mlp_dropout=0.1`, so MC dropout samples
only the transformer, and the decoder barely uses the transformer's features (zeroing them leaves Dice
unchanged). Pilot before this run (scratch script, not part of it: small preset, 88 steps on 25 uniform pool
patches, 20 samples over 150 other pool patches, one pool): MC dropout's samples barely differ (mean per-pixel
std of p_fg 0.0007, 0.2 % of the pixels ever change label, scores 2e-5 to 9e-5); with the 8 dihedral transforms
they differ (std 0.044, 10 % of the pixels change label). On that pool Spearman(score, M0 patch error) was
0.47 for the old default (MC dropout, BALD, top 1 % of pixels), 0.21 for dihedral transforms with the same
score, and 0.59 for dihedral transforms scored by 1 - mean pairwise Dice of the samples' masks.

*Hypothesis:* with samples that actually vary (`transforms="dihedral"`: sample t sees the patch under dihedral
transform t % 8, output transformed back, combined with the dropout masks), a score of *structure* -- how
much the samples' masks disagree as objects, `aggregate="pairwise_dice"` -- ranks the candidates by M0's
patch error better than the old default, and its picks teach M1 at least as much.

*Fixed before the run:* 5 fresh pools (seeds 0-4; 150 candidates each drawn with `default_rng(1000 + r)` from
the pool minus the core, as in the previous run), M0 = the K-cover K = 25 core trained with the pool's seed,
20 samples, `random_state` = the seed, 3 picks with `diversity="one_per_slice"`, fine-tuning as before. Both
configurations score the same candidates with the same M0; each one's M1 is fine-tuned from the same M0 state.

*Keep rule:* `MCDropoutHunter(transforms="dihedral", aggregate="pairwise_dice")` becomes the default only if
(1) the paired mean over the 5 pools of Spearman(score, M0 patch error) with it minus with the old default is
> 0 and > 2 SE, and (2) M1's macro Dice with it is not lower than with the old default by more than 2 SE
(paired difference >= -2 SE). Otherwise the old default (`transforms="none"`, `aggregate="top_q"`) stays, and
`transforms` is an option.

*Reported, not part of the rule:* the spread of the samples (RMS per-pixel std of p_fg, share of votes off
the modal label), the picks' M0 error and true foreground, M1 vs M0 + 3 uniform / fg-random for each
configuration; the Spearman of every measure/aggregate score of both sampling sources (exploratory: none of
them can become the default in this run); and the new-stacks check: M0 trained (seed 0, same step budget) on
the pool patches of two vesselnn acquisition groups, 150 pool patches of the held-out group
(`default_rng(2000 + g)`) scored by both configurations, Spearman per held-out group.
"""
MAE_DEFAULT_PREREGISTRATION = """\
**Pre-registration of the pretraining arm at the MAE's default length (written into `bench_evidence.py` before
the run; nothing below was changed after it).**

*Why:* every earlier pretraining arm pretrained for 20 epochs to save time, but `MAEPretrainer`'s default is
`max_epochs=100`. With the old decoder the ViT was ignored, so no pretraining could matter; since
`coarse_head="fuse"` (the default) the segmenter uses its ViT (replacing its features costs 0.035 Dice), yet a
20-epoch MAE still gave nothing (`evidence_transfer_coarse.md`: +0.003 ± 0.006 at K = 25, -0.004 ± 0.004 at
K = 10). A 20-epoch MAE on 703 patches moves the ViT's weights by about 1 %.

*Hypothesis:* the MAE at its default length (100 epochs on the pool, library defaults otherwise) transfers:
MAE-initialised minus scratch >= +0.02 macro Dice at K = 10 or 25 (the goal of issue 20).

*Fixed before the run:* seeds 0-4; K = 10 and 25; uniform and K-cover picks (K-cover on this MAE's embeddings,
library defaults, `groups=` the stacks); every segmenter the library default (`coarse_head="fuse"`) for 88
steps of batch 8; for each seed the MAE and scratch arms train on the same picks with the same training seed.

*Keep rule:* if MAE minus scratch is >= +0.02 and > 2 SE for both selectors at K = 10 or at K = 25, the guides
and the README recommend pretraining the segmenter's encoder (100 epochs); otherwise they keep saying that
pretraining did not help the segmenter at these budgets, now with both lengths (20 and 100 epochs) measured.
Nothing else depends on this run.
"""
# --phases embedseeds (pre-registered; EMBEDSEEDS_PREREGISTRATION): K-cover's risk over embeddings, and a
# label-free pixel descriptor as the selection embedding
KC_SEEDED, KC_DESC = "K-cover, MAE per seed", "K-cover, descriptor"
EMBED_ARMS = ["uniform", "stratified", "K-cover", KC_SEEDED, KC_DESC]
EMBEDSEEDS_PREREGISTRATION = """\
**Pre-registration of the embedding-risk arm (written into `bench_evidence.py` before the run; nothing below was
changed after it).**

*Why:* `KCoverSelector` returns one core per embedding, whatever its `random_state`, so the main table's five
seeds for K-cover measure training noise only: every seed used the same 20-epoch MAE (`random_state=0`). The MAE
arm at the default length (`evidence_mae_default.md`) gave K-cover a core 0.034 ± 0.004 Dice worse at K = 10 than
the main table's. A user gets one embedding, drawn by the MAE's own randomness; the risk they take includes it.

*Arms* (scratch segmenters, library defaults, 88 steps; seeds 0-4; K = the run's `--ks`): uniform and stratified
random (as in the main table); `K-cover` (the main table's use: the seed-0 MAE for every seed); **K-cover, MAE per
seed** (the MAE trained with `random_state=seed`, same length, library defaults; K-cover with its defaults and
`groups=` the stacks on that MAE's embeddings: the risk a user takes); **K-cover, descriptor** (K-cover with the
same settings on the 20 label-free pixel features of `biodatacentric.data._descriptor.describe`, z-scored over the
pool: intensity percentiles, spectral bands, gradient and ridge strength at 3 scales; no MAE, deterministic).

*Reported:* macro Dice per arm and K (mean ± SE, worst seed), paired differences against uniform and
stratified random, the number of distinct cores over the seeds.

*Keep rule:* the descriptor is recommended in the assess guide as the selection embedding (and a follow-up
makes it the pipeline's default) only if, at both K = 10 and K = 25, its paired difference against **K-cover, MAE
per seed** is >= 0 in mean, and against the better of uniform and stratified random (by mean at that K) it is
> 0. Otherwise the guide keeps the MAE embeddings and reports these figures. **K-cover, MAE per seed** against
the random baselines is the figure the README's "does it help?" quotes from then on, whatever it shows.
"""
PREREGISTRATIONS = {"mae_default": MAE_DEFAULT_PREREGISTRATION, "embedseeds": EMBEDSEEDS_PREREGISTRATION}   # --preregistration NAME: printed in the report
PROTOCOL = {"methods": METHODS, "random_baselines": RANDOM_BASELINES, "candidates": CANDIDATES, "raw_kc": RAW_KC,
            "batch": BATCH, "fg_min_fraction": FG_MIN_FRACTION, "hunt_configs": HUNT_CONFIGS,
            "hunt_old": HUNT_OLD, "hunt_new": HUNT_NEW,
            "hunt_preregistration": HUNT_PREREGISTRATION, "preregistrations": PREREGISTRATIONS,
            "embed_arms": EMBED_ARMS}   # what the report needs to know


# ---------------------------------------------------------------------- data (main + workers)
def stack_files() -> tuple[list[str], list[str], list[str]]:
    ves = DATA / "vesselnn_2pm"
    octa = DATA / "tubenet_octa"
    if not (ves / "images").is_dir() or not (octa / "images").is_dir():
        sys.exit(f"vesselnn_2pm and tubenet_octa not found under {DATA}; set BIODATACENTRIC_DATA")
    imgs = sorted(str(p) for p in (ves / "images").glob("*.tif")) + sorted(str(p) for p in (octa / "images").glob("*.tif"))
    masks = [str(Path(p).parent.parent / "masks" / Path(p).name) for p in imgs]
    names = [Path(p).stem for p in imgs]
    return imgs, masks, names


class Cohort:
    """All patches of the 10 stacks; pool / evaluation split by slice; evaluation truth."""

    def __init__(self, eval_stride: int = 1) -> None:
        from biodatacentric import Patches

        self.files, self.mask_files, self.names = stack_files()
        self.all = Patches.from_tiff(self.files, axes="ZYX", patch_shape=(PATCH, PATCH), masks=self.mask_files)
        ix = self.all.index
        self.pool_idx = np.flatnonzero(ix["z"] % 4 == 0)
        ev = (ix["z"] % 4 == 2) & ((ix["z"] // 4) % eval_stride == 0)
        self.eval_idx = np.flatnonzero(ev)
        self.pool = self.all[self.pool_idx]
        self.evalp = self.all[self.eval_idx]
        self.pool_source = ix["source"][self.pool_idx].astype(int)
        self.pool_z = ix["z"][self.pool_idx].astype(int)
        self.n_stacks = len(self.names)
        self._eval_index = ix[self.eval_idx]
        self._truth = None

    def eval_truth(self) -> dict:
        """Per (source, z) full slice mask canvases of the evaluation slices (pixels covered by tiles)."""
        if self._truth is None:
            self._truth = self.assemble(self.evalp.masks())
        return self._truth

    def assemble(self, tiles: np.ndarray) -> dict:
        out: dict = {}
        for t, (s, z, y, x) in zip(tiles, self._eval_index):
            s, z, y, x = int(s), int(z), int(y), int(x)
            if (s, z) not in out:
                h, w = self.all._sources[s].shape[1:]
                out[(s, z)] = np.zeros((h, w), np.uint8)
            out[(s, z)][y:y + PATCH, x:x + PATCH] = t
        return out

    def dice_counts(self, pred_tiles: np.ndarray) -> np.ndarray:
        """(n_stacks, 3): true positives, predicted positives, true positives + false negatives."""
        pred = self.assemble(pred_tiles)
        truth = self.eval_truth()
        c = np.zeros((self.n_stacks, 3), np.int64)
        for key, t in truth.items():
            p = pred[key].astype(bool)
            tb = t.astype(bool)
            c[key[0]] += [int((p & tb).sum()), int(p.sum()), int(tb.sum())]
        return c


# ---------------------------------------------------------------------- worker side
_W: dict = {}


def _worker_init(eval_stride: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    os.environ["BIODATACENTRIC_PROGRESS"] = "0"
    _W["cohort"] = Cohort(eval_stride)


def _encoder(mae_path: str | None):
    if mae_path is None:
        return None
    import torch

    from biodatacentric.nn.vit import ViTEncoder

    blob = torch.load(mae_path, weights_only=True)
    enc = ViTEncoder(**blob["config"])
    enc.load_state_dict(blob["state"])
    return enc


def _train(cfg: dict, idx: np.ndarray, seed: int, mae_path: str | None):
    from biodatacentric import TransUNetSegmenter

    co = _W["cohort"]
    epochs = max(1, math.ceil(cfg["steps"] / math.ceil(len(idx) / BATCH)))
    seg = TransUNetSegmenter(preset=cfg["preset"], encoder=_encoder(mae_path), img_size=PATCH, max_epochs=epochs,
                             batch_size=BATCH, random_state=seed, progress=False)
    return seg.fit(co.pool[np.asarray(idx)])


def _evaluate(seg) -> list:
    co = _W["cohort"]
    return co.dice_counts(seg.predict(co.evalp)).tolist()


def run_task(task: dict) -> dict:
    """One unit of work in a worker; skipped (not run) when started after the deadline."""
    if time.time() > task["deadline"]:
        return {**task, "skipped": True}
    t0 = time.perf_counter()
    cfg = task["cfg"]
    out = {k: v for k, v in task.items() if k not in ("idx", "cfg")}
    if task["kind"] == "train":
        seg = _train(cfg, task["idx"], task["seed"], task.get("mae_path"))
        out["counts"] = _evaluate(seg)
    elif task["kind"] == "hunt":
        out.update(_hunt(task, cfg))
    elif task["kind"] == "hunt_new":
        out.update(_hunt_new(task, cfg))
    out["seconds"] = time.perf_counter() - t0
    out["skipped"] = False
    return out


def _patch_error(m0, cp) -> tuple[np.ndarray, np.ndarray]:
    """M0's error per patch (1 - Dice; 1 when it predicts foreground on an empty patch) and the
    true foreground masks."""
    truth = cp.masks().astype(bool)
    p = m0.predict(cp).astype(bool)
    inter = (p & truth).sum((1, 2))
    den = p.sum((1, 2)) + truth.sum((1, 2))
    return 1.0 - np.where(den > 0, 2 * inter / np.maximum(den, 1), 1.0), truth


def _hunt_sources(m0, cp, seed: int, samples: int, err: np.ndarray) -> tuple[dict, dict]:
    """Score the candidates with every hunter configuration of HUNT_CONFIGS (same M0, same seed).

    Returns the fitted hunters and, per configuration, the Spearman of its score with M0's
    error, the spread of its samples, and (exploratory) the Spearman of every measure/aggregate
    score of the same samples (from one more seeded pass, ``score_table``)."""
    from scipy.stats import spearmanr

    from biodatacentric.hunt import MCDropoutHunter

    hunters, out = {}, {}
    for name, config in HUNT_CONFIGS.items():
        t0 = time.perf_counter()
        h = MCDropoutHunter(m0, n_samples=samples, random_state=seed, progress=False, **config).fit(cp)
        t_fit = time.perf_counter() - t0
        tab = h.score_table(cp, aggregates=["top_q", "mean", "pairwise_dice"])
        same = tab["masks/pairwise_dice" if config["aggregate"] == "pairwise_dice" else "mutual_information/top_q"]
        hunters[name] = h
        out[name] = {"spearman": float(spearmanr(h.scores_, err).statistic),
                     "table_spearman": {k: float(spearmanr(v, err).statistic) for k, v in tab.items()},
                     # mean over pixels of 2 Var_t(p_fg) -> RMS per-pixel std of p_fg
                     "pixel_std": float(np.sqrt(tab["variance/mean"].mean() / 2)),
                     # share of (sample, pixel) votes that differ from the pixel's modal label
                     "vote_flip": float(tab["variation_ratio/mean"].mean()),
                     "score_range": [float(h.scores_.min()), float(np.median(h.scores_)), float(h.scores_.max())],
                     "distinct_scores": int(len(np.unique(h.scores_))),
                     "table_matches_fit": bool(np.allclose(same, h.scores_, rtol=1e-5)),
                     "seconds_fit": t_fit}
    return hunters, out


def _hunt(task: dict, cfg: dict) -> dict:
    """One fresh pool: M0 on the core, every sampling source scores the same candidates, and one
    M1 per source plus the two random baselines, all fine-tuned from the same M0 state."""
    import copy

    co = _W["cohort"]
    core = np.asarray(task["idx"])
    seed = task["seed"]
    m0 = _train(cfg, core, seed, None)
    res = {"M0": _evaluate(m0)}
    cands = np.asarray(task["candidates"])
    cp = co.pool[cands]
    err, truth = _patch_error(m0, cp)
    hunters, res["sources"] = _hunt_sources(m0, cp, seed, cfg["hunt_samples"], err)
    picks = {f"M1 ({name})": cands[h.select(3, diversity="one_per_slice")] for name, h in hunters.items()}
    picks.update({"M0 + 3 uniform": np.asarray(task["uniform3"]), "M0 + 3 fg-random": np.asarray(task["fg3"])})
    res["n_candidates"] = len(cands)
    res["candidate_mean_error"] = float(err.mean())
    res["pick_error"] = {}
    res["pick_fg"] = {}
    state = copy.deepcopy(m0.module_.state_dict())
    for name, pk in picks.items():
        m0.module_.load_state_dict(state)
        m0.fine_tune(co.pool[pk], replay=co.pool[core], n_replay=7, max_epochs=cfg["ft_epochs"])
        res[name] = _evaluate(m0)
        pos = np.searchsorted(cands, pk)            # every pick comes from the (sorted) candidates
        res["pick_error"][name] = [float(err[i]) for i in pos]
        res["pick_fg"][name] = [float(truth[i].mean()) for i in pos]
    return {"hunt": res}


def _hunt_new(task: dict, cfg: dict) -> dict:
    """New stacks: M0 trained on the pool patches of the other acquisition groups' stacks; every
    sampling source scores candidates from the held-out group's pool; Spearman with M0's error."""
    co = _W["cohort"]
    m0 = _train(cfg, np.asarray(task["idx"]), task["seed"], None)
    cp = co.pool[np.asarray(task["candidates"])]
    err, truth = _patch_error(m0, cp)
    _, sources = _hunt_sources(m0, cp, task["seed"], cfg["hunt_samples"], err)
    return {"hunt_new": {"group": task["group"], "sources": sources, "mean_error": float(err.mean()),
                         "n_candidates": len(cp), "n_train": len(task["idx"])}}


# ---------------------------------------------------------------------- selection (main process)
def otsu_candidates(cohort: Cohort) -> tuple[np.ndarray, np.ndarray]:
    """Label-free foreground proxy: per stack Otsu threshold over its pool pixels; the fraction of
    each patch above it. Returns (fraction per pool patch, candidate mask)."""
    from skimage.filters import threshold_otsu

    imgs = cohort.pool.images()
    frac = np.zeros(len(imgs))
    for s in range(cohort.n_stacks):
        sel = np.flatnonzero(cohort.pool_source == s)
        if not len(sel):
            continue
        thr = threshold_otsu(imgs[sel].ravel())
        frac[sel] = (imgs[sel] > thr).mean(axis=(1, 2))
    return frac, frac >= FG_MIN_FRACTION


def select(method: str, K: int, seed: int, emb: np.ndarray, cohort: Cohort, fg: np.ndarray,
           exclude: np.ndarray) -> np.ndarray:
    from biodatacentric import KCenterSelector, KCoverSelector, RandomSelector

    allowed = ~exclude
    rng = np.random.default_rng(seed)
    if method == "uniform":
        return RandomSelector(n_select=K, random_state=seed).fit(emb, exclude=exclude).selected_indices_
    if method == "fg-random":
        cand = np.flatnonzero(fg & allowed)
        if len(cand) < K:   # too few proxy-foreground patches: fill from the rest at random
            rest = rng.permutation(np.setdiff1d(np.flatnonzero(allowed), cand))
            return np.concatenate([cand, rest[:K - len(cand)]])
        return rng.choice(cand, K, replace=False)
    if method == "stratified":
        stacks = rng.permutation(cohort.n_stacks)
        orders = {s: list(rng.permutation(np.flatnonzero((cohort.pool_source == s) & allowed))) for s in stacks}
        picks: list[int] = []
        while len(picks) < K:
            for s in stacks:
                if orders[s] and len(picks) < K:
                    picks.append(int(orders[s].pop()))
        return np.asarray(picks)
    if method == "k-center":
        return KCenterSelector(n_select=K, random_state=seed).fit(emb, exclude=exclude).selected_indices_
    # "K-cover" is the library's default use: KCoverSelector defaults (whiten=True) with one group
    # per stack. The raw variants (whiten=False unless "+w"; groups only with "+g") exist for the
    # pre-registered candidates phase only, which must keep reproducing: "K-cover raw" = raw cosine
    # without groups, the default before that run; "K-cover+wg" spells out today's default.
    if method == "K-cover":
        sel = KCoverSelector(n_select=K, random_state=seed)
        return sel.fit(emb, exclude=exclude, groups=cohort.pool_source).selected_indices_
    if method == RAW_KC or method.startswith("K-cover+"):
        opts = method.partition("+")[2]
        sel = KCoverSelector(n_select=K, whiten="w" in opts, random_state=seed)
        return sel.fit(emb, exclude=exclude, groups=cohort.pool_source if "g" in opts else None).selected_indices_
    raise ValueError(method)


# ---------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 seeds, K 5 10, tiny budgets")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--ks", type=int, nargs="+", default=[5, 10, 25, 50])
    ap.add_argument("--steps", type=int, default=88, help="optimisation steps (batch 8) of every segmenter")
    ap.add_argument("--preset", default="small", help="segmenter and MAE preset (library default: small)")
    ap.add_argument("--mae-epochs", type=int, default=20, help="MAE pretraining epochs on the pool")
    ap.add_argument("--audit-ks", type=int, nargs="*", default=[10], help="K of the audit-exclusion arm")
    ap.add_argument("--mae-ks", type=int, nargs="*", default=[10, 25], help="K of the MAE-vs-scratch arm")
    ap.add_argument("--mae-selectors", nargs="+", default=["uniform", "K-cover"], choices=METHODS,
                    help="selectors of the MAE-vs-scratch arm")
    ap.add_argument("--hunt-pools", type=int, default=5, help="fresh candidate pools of the hunting arm")
    ap.add_argument("--hunt-candidates", type=int, default=150, help="patches per fresh candidate pool")
    ap.add_argument("--hunt-samples", type=int, default=20, help="MC-dropout samples (library default 20)")
    ap.add_argument("--eval-stride", type=int, default=1, help="use every n-th evaluation slice of each stack")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--phases", nargs="+", default=["main", "audit", "mae", "hunt"],
                    choices=["main", "audit", "mae", "hunt", "candidates", "embedseeds"],
                    help="arms to run; a subset writes evidence_<arms>.md (and figures) beside evidence.md")
    ap.add_argument("--max-minutes", type=float, default=62.0, help="tasks not started by then are skipped")
    ap.add_argument("--name", default=None,
                    help="result file name (default evidence, or evidence_<arms> for a subset of the arms)")
    ap.add_argument("--preregistration", default=None, choices=sorted(PREREGISTRATIONS),
                    help="the pre-registration (hypothesis and keep rule) this run tests; printed in its report")
    ap.add_argument("--report-from", type=Path, metavar="RUN_DIR",
                    help="only re-render the report of the run whose files are in RUN_DIR (its rows.jsonl and "
                         "state.json under benchmarks/_out/evidence/); never combines runs")
    args = ap.parse_args()
    if args.report_from:
        render(args.report_from, PROTOCOL, command, rerendered=True)
        return
    if args.quick:
        args.seeds, args.ks, args.steps, args.mae_epochs = args.seeds[:2], [5, 10], 6, 1
        args.audit_ks, args.mae_ks, args.hunt_pools, args.hunt_candidates, args.hunt_samples = [10], [10], 1, 24, 4
        args.eval_stride, args.preset = 4, "tiny"
    global RAW   # one folder per kind of run, so a smoke test never overwrites a real run's files
    RAW = OUT / "evidence" / (("quick" if args.quick else "run") + ("" if len(args.phases) == 4 else "_" + "_".join(args.phases))
                              + (f"_{args.name}" if args.name else ""))
    t_start = time.time()
    deadline = t_start + 60 * args.max_minutes
    load_start = os.getloadavg()
    import torch

    from biodatacentric import DatasetAuditor, MAEPretrainer, KCoverSelector

    RAW.mkdir(parents=True, exist_ok=True)
    cohort = Cohort(args.eval_stride)
    n_pool = len(cohort.pool)
    print(f"pool {n_pool} patches, eval {len(cohort.evalp)} tiles", flush=True)

    # stage 1: the default embedding pipeline (MAE on the unlabelled pool)
    t0 = time.perf_counter()
    mae = MAEPretrainer(preset=args.preset, img_size=PATCH, max_epochs=args.mae_epochs,
                        random_state=0, progress=False).fit(cohort.pool)
    emb = mae.transform(cohort.pool)
    t_mae = time.perf_counter() - t0
    mae_path = RAW / "mae_encoder.pt"
    torch.save({"config": dict(mae.encoder_.config), "state": mae.encoder_.state_dict()}, mae_path)
    print(f"MAE {args.mae_epochs} epochs + embed: {t_mae:.0f} s, emb {emb.shape}", flush=True)

    # --phases embedseeds: one MAE per seed (seed 0's is the one above) and the label-free pixel descriptor
    emb_by_seed: dict = {}
    desc = None
    if "embedseeds" in args.phases:
        from biodatacentric.data._descriptor import describe

        for s in args.seeds:
            emb_by_seed[s] = emb if s == 0 else MAEPretrainer(
                preset=args.preset, img_size=PATCH, max_epochs=args.mae_epochs, random_state=s,
                progress=False).fit(cohort.pool).transform(cohort.pool)
            print(f"MAE random_state={s}: embeddings ready ({time.perf_counter() - t0:.0f} s)", flush=True)
        d = describe(cohort.pool.images())
        desc = (d - d.mean(0)) / np.maximum(d.std(0), 1e-12)

    # the audit (defaults) and the foreground proxy
    t0 = time.perf_counter()
    audit = DatasetAuditor(random_state=0).fit(cohort.pool, embeddings=emb)
    t_audit = time.perf_counter() - t0
    exclude = audit.exclude_.copy()
    flags = {c: audit.flags(c) for c in audit.flag_names_}
    fg_frac, fg = otsu_candidates(cohort)
    true_fg = cohort.pool.masks().mean(axis=(1, 2))
    no_excl = np.zeros(n_pool, bool)

    # K-cover determinism check: the same core for every random_state?
    kc_cores = [tuple(KCoverSelector(n_select=max(args.ks), random_state=s).fit(
        emb, groups=cohort.pool_source).selected_indices_) for s in args.seeds]

    # selections
    sel: dict = {}
    for audited, ex in ((False, no_excl), (True, exclude)):
        ks = sorted(set(args.ks) | set(args.audit_ks) | set(args.mae_ks)) if not audited else args.audit_ks
        for K in ks:
            for m in (METHODS if "candidates" not in args.phases or audited
                      else list(dict.fromkeys(METHODS + CANDIDATES))):
                for s in args.seeds:
                    sel[(m, K, s, audited)] = np.asarray(select(m, K, s, emb, cohort, fg, ex), np.int64)

    if "embedseeds" in args.phases:
        for K in args.ks:
            for s in args.seeds:
                sel[(KC_SEEDED, K, s, False)] = np.asarray(select("K-cover", K, s, emb_by_seed[s], cohort, fg, no_excl))
                sel[(KC_DESC, K, s, False)] = np.asarray(select("K-cover", K, s, desc, cohort, fg, no_excl))

    # everything the report needs besides the rows, so that `--report-from` can re-render this run
    state = {"audit_table": audit.summary_table(), "flags": {c: v.tolist() for c, v in flags.items()},
             "exclude": exclude.tolist(), "fg": fg.tolist(), "fg_frac": fg_frac.tolist(), "true_fg": true_fg.tolist(),
             "pool_source": cohort.pool_source.tolist(), "imgs_mean": cohort.pool.images().mean(axis=(1, 2)).tolist(),
             "sel": {f"{m}|{K}|{s}|{int(au)}": v.tolist() for (m, K, s, au), v in sel.items()},
             "kc_cores": [list(map(int, c)) for c in kc_cores]}
    np.save(RAW / "emb.npy", emb)

    cfg = {"steps": args.steps, "preset": args.preset, "hunt_samples": args.hunt_samples,
           "ft_epochs": 3 if args.quick else 15}
    tasks: list[dict] = []

    def add(kind, **kw):
        tasks.append({"kind": kind, "cfg": cfg, "deadline": deadline, **kw})

    for s in (args.seeds if "main" in args.phases else []):        # phase A: main table + full supervision
        for K in args.ks:
            for m in METHODS:
                add("train", phase="main", method=m, K=K, seed=s, audited=False, init="scratch",
                    idx=sel[(m, K, s, False)].tolist())
        add("train", phase="main", method="full", K=n_pool, seed=s, audited=False, init="scratch",
            idx=list(range(n_pool)))
    for s in (args.seeds if "audit" in args.phases else []):        # phase B: with the audit's exclusions
        for K in args.audit_ks:
            for m in METHODS:
                add("train", phase="audit", method=m, K=K, seed=s, audited=True, init="scratch",
                    idx=sel[(m, K, s, True)].tolist())
                if "main" not in args.phases or K not in args.ks:   # its partner without exclusions
                    add("train", phase="audit", method=m, K=K, seed=s, audited=False, init="scratch",
                        idx=sel[(m, K, s, False)].tolist())
    for s in (args.seeds if "mae" in args.phases else []):        # phase C: MAE-initialised encoder
        for K in args.mae_ks:
            for m in args.mae_selectors:
                add("train", phase="mae", method=m, K=K, seed=s, audited=False, init="MAE",
                    idx=sel[(m, K, s, False)].tolist(), mae_path=str(mae_path))
                if "main" not in args.phases:   # the scratch partner is not measured by phase A then
                    add("train", phase="mae", method=m, K=K, seed=s, audited=False, init="scratch",
                        idx=sel[(m, K, s, False)].tolist())
    if "candidates" in args.phases:   # pre-registered method candidates vs the default and the baselines
        for s in args.seeds:
            for K in args.ks:
                for m in CANDIDATES:
                    add("train", phase="candidates", method=m, K=K, seed=s, audited=False, init="scratch",
                        idx=sel[(m, K, s, False)].tolist())
    if "embedseeds" in args.phases:   # pre-registered: K-cover's risk over embeddings, and the descriptor
        for s in args.seeds:
            for K in args.ks:
                for m in EMBED_ARMS:
                    add("train", phase="embedseeds", method=m, K=K, seed=s, audited=False, init="scratch",
                        idx=sel[(m, K, s, False)].tolist())
    hunt_K = 25 if 25 in args.ks else max(args.ks)
    for r, s in enumerate(args.seeds[:args.hunt_pools]):   # phase D: hunting on fresh pools
        core = sel[("K-cover", hunt_K, s, False)]
        rng = np.random.default_rng(1000 + r)
        rest = np.setdiff1d(np.arange(n_pool), core)
        cands = np.sort(rng.choice(rest, min(args.hunt_candidates, len(rest)), replace=False))
        fgc = cands[fg[cands]]
        add("hunt", phase="hunt", method="hunt", K=hunt_K, seed=s, audited=False, init="scratch",
            idx=core.tolist(), candidates=cands.tolist(), uniform3=rng.choice(cands, 3, replace=False).tolist(),
            fg3=(rng.choice(fgc, 3, replace=False) if len(fgc) >= 3 else rng.choice(cands, 3, replace=False)).tolist())

    if "hunt" in args.phases:   # phase D': new stacks, one acquisition group held out at a time
        group = np.array([next((j for j, gname in enumerate(HUNT_GROUPS) if nm.startswith(gname)), -1)
                          for nm in cohort.names])[cohort.pool_source]
        for g, gname in enumerate(HUNT_GROUPS):
            train_idx = np.flatnonzero((group >= 0) & (group != g))
            held = np.flatnonzero(group == g)
            rng = np.random.default_rng(2000 + g)
            cands = np.sort(rng.choice(held, min(args.hunt_candidates, len(held)), replace=False))
            add("hunt_new", phase="hunt", method="hunt new stacks", K=len(train_idx), seed=0, audited=False,
                init="scratch", idx=train_idx.tolist(), candidates=cands.tolist(), group=gname)

    tasks = [t for t in tasks if t["phase"] in args.phases]
    print(f"{len(tasks)} tasks on {args.workers} workers", flush=True)
    rows = []
    rows_path = RAW / "rows.jsonl"
    t_tasks = time.perf_counter()
    with rows_path.open("w") as fh, mp.get_context("spawn").Pool(
            args.workers, initializer=_worker_init, initargs=(args.eval_stride, args.threads)) as pool:
        for i, r in enumerate(pool.imap(run_task, tasks)):
            r.pop("deadline", None)
            rows.append(r)
            fh.write(json.dumps(r) + "\n")
            fh.flush()
            if not r["skipped"]:
                tag = f"{r['phase']} {r['method']} K={r['K']} s={r['seed']} {r['init']}"
                extra = ""
                if "counts" in r:
                    extra = f" macro {dice_from_counts(np.array(r['counts'])).mean():.3f}"
                print(f"[{i + 1}/{len(tasks)}] {tag}: {r['seconds']:.0f} s{extra}  "
                      f"(elapsed {(time.time() - t_start) / 60:.1f} min)", flush=True)
    t_tasks = time.perf_counter() - t_tasks
    info = {"args": vars(args), "n_pool": n_pool, "n_eval_tiles": len(cohort.evalp), "t_mae": t_mae,
            "t_audit": t_audit, "t_tasks": t_tasks, "wall": time.time() - t_start, "load_start": load_start,
            "load_end": os.getloadavg(), "machine": machine(), "names": cohort.names,
            "pool_per_stack": np.bincount(cohort.pool_source, minlength=cohort.n_stacks).tolist(),
            "emb_dim": int(emb.shape[1]), "mae_final_loss": float(mae.history_["loss"][-1]) if hasattr(mae, "history_") else None}
    state["info"] = info
    (RAW / "state.json").write_text(json.dumps(state))
    render(RAW, PROTOCOL, command)


def command(a: dict) -> str:
    """The command line that reproduces a run with these (parsed) arguments."""
    if a["quick"]:
        return "python benchmarks/bench_evidence.py --quick" + (
            "" if a["phases"] == ["main", "audit", "mae", "hunt"] else f" --phases {' '.join(a['phases'])}")
    cmd = (f"python benchmarks/bench_evidence.py --seeds {' '.join(map(str, a['seeds']))} "
           f"--ks {' '.join(map(str, a['ks']))} --steps {a['steps']} --mae-epochs {a['mae_epochs']} "
           f"--workers {a['workers']} --max-minutes {a['max_minutes']:g}")
    if a["eval_stride"] != 1:
        cmd += f" --eval-stride {a['eval_stride']}"
    if a["phases"] != ["main", "audit", "mae", "hunt"]:
        cmd += f" --phases {' '.join(a['phases'])}"
        if "mae" in a["phases"]:
            cmd += f" --mae-ks {' '.join(map(str, a['mae_ks']))} --mae-selectors {' '.join(a['mae_selectors'])}"
    for key in ("name", "preregistration"):
        if a.get(key):
            cmd += f" --{key} {a[key]}"
    return cmd


if __name__ == "__main__":
    main()
