"""Base classes, save/load folders, helpers, metrics."""

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from biodatacentric import metrics
from biodatacentric._io import atomic_replace_dir, torch_load_safe
from biodatacentric.utils.estimator_checks import EstimatorCase, check_estimator
from biodatacentric._utils import autocast, resolve_device, resolve_precision
from biodatacentric.base import BaseSelector, BioEstimator
from biodatacentric.nn.vit import ViTEncoder


class FirstK(BaseSelector):
    """A toy selector used to exercise the base class."""

    def __init__(self, n_select=2, random_state=None):
        self.n_select = n_select
        self.random_state = random_state

    def _select(self, X, n_select, exclude, seed):
        order = np.random.default_rng(seed).permutation(len(X))
        return order[~exclude[order]][:n_select]

    @classmethod
    def _test_cases(cls):
        X = np.random.default_rng(0).random((20, 4))
        return [EstimatorCase(make=lambda: cls(n_select=3, random_state=1), fit=lambda e: e.fit(X),
                              use=lambda e: (e._check_is_fitted(), e.selected_indices_),
                              result=lambda e: e.selected_indices_)]


class WithModule(BioEstimator):
    _fitted_attribute = "module_"

    def __init__(self, width=4, random_state=0):
        self.width = width
        self.random_state = random_state

    def fit(self, X=None):
        torch.manual_seed(self.random_state)
        self.module_ = ViTEncoder(img_size=16, patch_size=8, embed_dim=self.width * 4, depth=1, num_heads=1)
        self.scale_ = 2.5
        self.table_ = np.arange(6.0).reshape(2, 3)
        return self

    def use(self):
        self._check_is_fitted()
        return self.module_(torch.ones(1, 1, 16, 16))

    @classmethod
    def _test_cases(cls):
        return [EstimatorCase(make=lambda: cls(), fit=lambda e: e.fit(), use=lambda e: e.use(),
                              result=lambda e: (e.use(), e.scale_, e.table_))]


def test_toy_estimators_pass_the_shared_checks():
    check_estimator(FirstK)
    check_estimator(WithModule)


def test_selector_validation():
    X = np.random.default_rng(0).random((5, 3))
    with pytest.raises(ValueError, match="only 2 of 5"):
        FirstK(n_select=3).fit(X, exclude=[0, 1, 2])
    with pytest.raises(ValueError, match="n_select must be a positive integer"):
        FirstK(n_select=0).fit(X)
    bad = X.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf in 1 rows"):
        FirstK().fit(bad)
    with pytest.raises(ValueError, match="2-D"):
        FirstK().fit(X[0])
    sel = FirstK(n_select=2, random_state=0).fit(X, exclude=np.array([True, True, False, False, False]))
    assert not set(sel.selected_indices_) & {0, 1}
    with pytest.raises(NotFittedError, match="FirstK"):
        FirstK()._check_is_fitted()


def test_save_refuses_to_replace_foreign_folders(tmp_path):
    est = WithModule().fit()
    other = tmp_path / "my_thesis"
    other.mkdir()
    (other / "chapter1.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a biodatacentric save folder"):
        est.save(other)
    assert (other / "chapter1.txt").read_text() == "precious"
    est.save(tmp_path / "m")
    est.save(tmp_path / "m")  # replacing our own folder is fine
    assert WithModule.load(tmp_path / "m").scale_ == 2.5


def test_failed_save_leaves_no_partial_folder(tmp_path):
    def fill(tmp):
        (tmp / "half").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_replace_dir(tmp_path / "out", fill)
    assert list(tmp_path.iterdir()) == []


def test_torch_load_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"obj": FirstK()}, path)  # an arbitrary Python object needs unpickling
    with pytest.raises(ValueError, match="refuses to load"):
        torch_load_safe(path)


def test_device_and_precision_helpers():
    assert resolve_device("auto").type in ("cpu", "cuda")
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="device='gpu0'"):
        resolve_device("gpu0")
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("auto", "cpu") in ("bf16", "fp32")
    with pytest.raises(ValueError, match="precision='half'"):
        resolve_precision("half", "cpu")


def test_bf16_autocast_matches_fp32_on_a_vit_forward():
    torch.manual_seed(0)
    m = ViTEncoder(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4).eval()
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        ref = m.pooled(x)
        with autocast(torch.device("cpu"), "bf16"):
            low = m.pooled(x).float()
    rel = (low - ref).norm() / ref.norm()
    assert rel < 3e-2


def test_vit_positional_table_and_grid_resize():
    from biodatacentric.nn.vit import sincos_pos_embed_2d

    t = sincos_pos_embed_2d(8, 2, 3, cls_token=True)
    assert t.shape == (7, 8) and torch.all(t[0] == 0)
    # first half of channels encodes the column: tokens in the same column share it
    assert torch.allclose(t[1, :4], t[4, :4]) and not torch.allclose(t[1, 4:], t[4, 4:])
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(6, 2, 2)
    m = ViTEncoder(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2)
    assert m(torch.zeros(1, 1, 48, 32)).shape == (1, 1 + 6 * 4, 16)
    with pytest.raises(ValueError, match="not divisible by the ViT patch size"):
        m(torch.zeros(1, 1, 30, 32))


def test_metrics_and_empty_mask_convention():
    a = np.array([[1, 1], [0, 0]])
    b = np.array([[1, 0], [0, 0]])
    assert metrics.dice(a, b) == pytest.approx(2 / 3)
    assert metrics.iou(a, b) == pytest.approx(1 / 2)
    z = np.zeros((2, 2))
    assert metrics.dice(z, z) == 1.0 and metrics.iou(z, z) == 1.0
    assert metrics.dice(a, z) == 0.0
    np.testing.assert_allclose(metrics.dice_per_sample(np.stack([a, z]), np.stack([b, z])), [2 / 3, 1.0])
    mc = metrics.multiclass_dice(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]))
    assert mc[0] == 1.0 and mc[1] == pytest.approx(2 / 3) and mc[2] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="shape"):
        metrics.dice(a, np.zeros(3))


def test_atomic_writes_get_normal_file_permissions(tmp_path):
    import os
    import stat

    from biodatacentric._io import _UMASK, atomic_write_text

    path = atomic_write_text(tmp_path / "note.txt", "x")
    assert path.read_text() == "x"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~_UMASK
    assert not list(tmp_path.glob(".note.txt.*"))  # no temporary file left behind
