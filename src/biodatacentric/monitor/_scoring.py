"""RCA scoring: one validated image (``RCAMonitor._score``: normalisation, retrieval, the
reverse classifier, aggregate, calibration, drift, decision) and many (image, mask) pairs
(``RCAMonitor.score_many``: in this process or one Dask task per pair, and the table of
their results)."""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Sequence

import numpy as np

from .._utils import check_random_state_int, progress
from .._validation import check_embeddings, check_image_and_mask
from ..parallel import map_items, read_array, resolve_client, worker_copy, write_table
from ._calibration import calibrated
from ._retrieval import embed_image, normalize_image, select_references
from ._reverse import run_rca
from ._statistics import aggregate_dice
from .drift import drift_percentile
from .evaluation import decide


def score_image(mon: Any, image: np.ndarray, mask: np.ndarray, embeddings: Any = None) -> dict:
    """``RCAMonitor._score``: the estimate for a validated float32 (Z, Y, X) image and uint8 mask."""
    t0 = time.perf_counter()
    n_fg = int(np.count_nonzero(mask))
    if (n_fg == 0 or n_fg == mask.size) and mon.single_class == "raise":
        which = "background (0)" if n_fg == 0 else "foreground (1)"
        raise ValueError(
            f"predicted mask holds only {which}: the reverse classifier needs both classes. "
            "A blank or full mask is a failed segmentation; pass single_class='constant' to "
            "score it as a constant prediction instead of raising")
    img = normalize_image(mon.normalize, image)
    if embeddings is None and mon.embedder is not None and \
            (mon.n_references is not None or mon.drift_embeddings_ is not None):
        embeddings = embed_image(mon, img)
    img_emb = check_embeddings(embeddings, name="embeddings") if embeddings is not None else None
    ref_idx = select_references(mon, img_emb)
    timings = {"features": 0.0, "training": 0.0, "references": 0.0}
    dices, chance, stats = run_rca(mon, img, mask, ref_idx, check_random_state_int(mon.random_state), timings)
    raw, best_pos = aggregate_dice(mon, dices, chance)
    est = calibrated(mon, raw, stats, n_fg, mask.size)
    best = int(ref_idx[best_pos])
    drift = None
    if img_emb is not None and mon.drift_embeddings_ is not None:
        drift = drift_percentile(img_emb, mon.drift_embeddings_, mon.drift_reference_distances_,
                                 int(mon.drift_k))
    timings["total"] = time.perf_counter() - t0
    return {
        "estimated_dice": float(est),
        "raw_estimated_dice": float(raw),
        "calibrated": bool(getattr(mon, "calibration_", None) is not None),
        "statistics": stats,
        "passed": bool(est >= float(mon.threshold)),
        "decision": decide(est, float(mon.threshold), mon.review_margin),
        "threshold": float(mon.threshold),
        "aggregate": mon.aggregate,
        "per_reference_dice": dices,
        "reference_indices": ref_idx,
        "best_reference": best,
        "best_reference_source": mon.reference_sources_[best],
        "drift": drift,
        "timings": timings,
    }


def score_many(mon: Any, images: Sequence[Any], predicted_masks: Sequence[Any], axes: str,
               embeddings: Sequence[Any] | None, client: Any, out: Any) -> list[dict]:
    """The body of ``RCAMonitor.score_many`` (the monitor is fitted and its parameters valid)."""
    images, predicted_masks = list(images), list(predicted_masks)
    if len(images) != len(predicted_masks):
        raise ValueError(f"{len(images)} images but {len(predicted_masks)} predicted masks")
    if embeddings is not None and len(embeddings) != len(images):
        raise ValueError(f"{len(embeddings)} embedding arrays for {len(images)} images")
    if out is not None and not str(out).lower().endswith((".csv", ".json")):
        raise ValueError(f"out={str(out)!r} must end in .csv or .json")
    jobs = [(images[i], predicted_masks[i], None if embeddings is None else embeddings[i])
            for i in range(len(images))]
    dask_client = resolve_client(client)
    if dask_client is None:
        results = [score_job(mon, job, axes=axes)
                   for job in progress(jobs, desc="RCA", enabled=mon.verbose, total=len(jobs))]
    else:
        results = map_items(functools.partial(score_job, worker_copy(mon)), jobs, client=dask_client, axes=axes)
    if out is not None:
        write_table(out, result_rows(results, images))
    return results


def score_job(mon: Any, job: tuple, axes: str = "YX") -> dict:
    """One (image, mask, embeddings) pair: read where it runs, validated, scored."""
    image, mask, emb = job
    img, msk = check_image_and_mask(read_array(image), read_array(mask), axes=axes)
    return mon._score(img, msk, embeddings=emb)


def result_rows(results: list[dict], images: list) -> list[dict]:
    """Flat table rows of :meth:`RCAMonitor.score_many` results (scalars only)."""
    rows = []
    for i, (res, image) in enumerate(zip(results, images)):
        row: dict = {"index": i, "image": os.fspath(image) if isinstance(image, (str, os.PathLike)) else f"image{i}"}
        for key, value in res.items():
            if isinstance(value, (bool, int, float, str, np.integer, np.floating, np.bool_)):
                row[key] = value.item() if hasattr(value, "item") else value
        drift = res.get("drift")
        if isinstance(drift, dict) and "percentile" in drift:
            row["drift_percentile"] = float(drift["percentile"])
        timings = res.get("timings")
        if isinstance(timings, dict) and "total" in timings:
            row["seconds"] = float(timings["total"])
        rows.append(row)
    return rows
