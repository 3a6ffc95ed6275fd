"""The optional faiss kNN backend (extra: faiss)."""

import numpy as np
import pytest

pytest.importorskip("faiss")

from biodatacentric.assess.knn import faiss_available, knn_recall, knn_search, knn_search_faiss, l2_normalize  # noqa: E402


def test_faiss_matches_exact_fp32_search():
    rng = np.random.default_rng(0)
    E = l2_normalize(rng.normal(size=(3000, 32)))
    s, i = knn_search_faiss(E, 20, chunk_size=700, show_progress=False)
    s0, i0 = knn_search(E, 20, precision="fp32", show_progress=False)
    assert faiss_available()
    assert i.shape == (3000, 20) and i.dtype == np.int32 and s.dtype == np.float32
    assert np.all(i[:, 0] == np.arange(3000))
    assert np.all(np.diff(s, axis=1) <= 1e-6)
    np.testing.assert_allclose(s, s0, atol=1e-5)
    assert knn_recall(E, i, n_queries=300) == 1.0
    s2, i2 = knn_search(E, 20, backend="faiss", show_progress=False)
    np.testing.assert_array_equal(s2, s)
    with pytest.raises(ValueError, match="backend='annoy'"):
        knn_search(E, 20, backend="annoy")


def test_faiss_more_neighbours_than_rows_and_bad_input():
    E = l2_normalize(np.random.default_rng(1).normal(size=(5, 4)))
    s, i = knn_search_faiss(E, 10)
    assert i.shape == (5, 5) and sorted(i[0].tolist()) == list(range(5))
    with pytest.raises(ValueError, match="2-D"):
        knn_search_faiss(E[0], 3)
