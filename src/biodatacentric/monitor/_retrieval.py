"""RCA's reference store around the reverse classifier: embeddings of references and scored
images, retrieval of the ``n_references`` nearest references, the drift reference, the
intensity normalisation of a scored image and the reference groups."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._utils import unit_rows
from .._validation import check_embeddings
from ..data.normalize import as_normalization
from ..data.patches import _positions
from .drift import reference_knn_distances


def embed(embedder: Any, images: np.ndarray) -> np.ndarray:
    """``(n, d)`` embeddings of ``(n, h, w)`` patches from an embedder (``transform`` or a call)."""
    if hasattr(embedder, "transform"):
        out = embedder.transform(images)
    elif callable(embedder):
        out = embedder(images)
    else:
        raise TypeError("embedder must be callable or have a transform method mapping (n, h, w) patches "
                        "to (n, d) embeddings")
    if hasattr(out, "detach"):
        out = out.detach().cpu().numpy()
    out = check_embeddings(out, name="embedder output")
    if len(out) != len(images):
        raise ValueError(f"embedder returned {len(out)} embeddings for {len(images)} patches")
    return out


def fit_embeddings(mon: Any, images: np.ndarray, embeddings: Any,
                   training_embeddings: Any) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """The checked, L2-normalised reference embeddings (computed with ``mon.embedder`` when not
    given and an embedder is set), the training embeddings of the drift score and their k-NN
    distance distribution (None where not available)."""
    if embeddings is None and mon.embedder is not None:
        embeddings = embed(mon.embedder, images)
    ref_emb = None
    if embeddings is not None:
        ref_emb = check_embeddings(embeddings, name="embeddings")
        if len(ref_emb) != len(images):
            raise ValueError(f"embeddings has {len(ref_emb)} rows for {len(images)} references; "
                             "pass one embedding per reference")
        ref_emb = unit_rows(ref_emb)
    drift_emb = drift_dist = None
    if training_embeddings is not None:
        drift_emb = unit_rows(check_embeddings(training_embeddings, name="training_embeddings"))
        if len(drift_emb) < mon.drift_k + 1:
            raise ValueError(f"training_embeddings needs at least drift_k + 1 = {mon.drift_k + 1} rows")
        if ref_emb is not None and ref_emb.shape[1] != drift_emb.shape[1]:
            raise ValueError("embeddings and training_embeddings differ in dimension; use one embedder")
        drift_dist = reference_knn_distances(drift_emb, int(mon.drift_k), 2000, 0)
    return ref_emb, drift_emb, drift_dist


def normalize_image(spec: Any, image: np.ndarray) -> np.ndarray:
    """``image`` normalised per stack by the normalisation ``spec`` (float32)."""
    off, scale, clip = as_normalization(spec).compute(image, source="image")
    out = (image - np.float32(off)) * np.float32(scale)
    if clip:
        np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32, copy=False)


def embed_image(mon: Any, image: np.ndarray) -> np.ndarray:
    """Embeddings of reference-sized tiles covering every slice of the normalised ``image``."""
    _, ph, pw = mon.reference_images_.shape
    Z, H, W = image.shape
    if H < ph or W < pw:
        raise ValueError(f"the image ({H}x{W}) is smaller than the references ({ph}x{pw}); pass "
                         "embeddings= explicitly")
    tiles = [image[z, y:y + ph, x:x + pw] for z in range(Z)
             for y in _positions(H, ph, ph) for x in _positions(W, pw, pw)]
    return embed(mon.embedder, np.stack(tiles))


def select_references(mon: Any, img_emb: np.ndarray | None, candidates: np.ndarray | None = None) -> np.ndarray:
    """The references an image is scored against: all ``candidates`` (default: every
    reference), or the ``n_references`` of them nearest to any of the image's patch embeddings."""
    cand = np.arange(mon.n_references_) if candidates is None else np.asarray(candidates, dtype=np.int64)
    n = len(cand)
    if mon.n_references is None or mon.n_references >= n:
        return cand
    if mon.reference_embeddings_ is None:
        raise ValueError(f"n_references={mon.n_references} needs reference embeddings: pass "
                         "embeddings= to fit (or set embedder), or use n_references=None")
    if img_emb is None:
        raise ValueError(f"n_references={mon.n_references} needs the image's patch embeddings: pass "
                         "embeddings= to score (or set embedder), or use n_references=None")
    ref = mon.reference_embeddings_[cand]
    if img_emb.shape[1] != ref.shape[1]:
        raise ValueError(f"image embeddings have {img_emb.shape[1]} dimensions but the reference "
                         f"embeddings have {ref.shape[1]}; use the same embedder")
    q = unit_rows(img_emb)
    # cosine distance of each reference to its nearest image patch; start at +inf (R5)
    best = np.full(n, np.inf)
    for start in range(0, len(q), 4096):
        d = 1.0 - q[start:start + 4096] @ ref.T
        np.minimum(best, d.min(axis=0), out=best)
    return cand[np.argsort(best, kind="stable")[: int(mon.n_references)]]


def reference_groups(groups: Any, sources: list[str]) -> np.ndarray:
    """``groups`` checked against the references' ``sources``, or the default when None: each
    reference's source file, or every reference its own group when they all come from one."""
    if groups is None:
        groups = np.array([src.rsplit(":", 3)[0] for src in sources])
        if len(np.unique(groups)) == 1:
            groups = np.arange(len(sources))
    groups = np.asarray(groups).ravel()
    if len(groups) != len(sources):
        raise ValueError(f"groups has {len(groups)} entries for {len(sources)} references")
    return groups
