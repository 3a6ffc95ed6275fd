"""A checkpoint resumes only the run it belongs to (issue 19, part A).

A finished run's ``checkpoint_dir`` reused on new data with the same number of patches used to
return the old model; now the run refuses, naming the checkpoint and saying that the data
differ (or that the settings differ). A ``checkpoint_dir`` that cannot hold checkpoints is
refused before the first epoch trains.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from biodatacentric import MAEPretrainer, Patches, TransUNetSegmenter, make_vessels
from biodatacentric._train import TrainSettings, patches_fingerprint, train
from biodatacentric.nn.vit import ViTEncoder

from .conftest import untouched

MAE_TINY = dict(preset="tiny", img_size=32, max_epochs=1, batch_size=8, n_components=None, precision="fp32",
                device="cpu", random_state=0, warmup_epochs=0, progress=False)
SEG_TINY = dict(preset="tiny", feature_size=4, max_epochs=1, batch_size=4, precision="fp32", device="cpu",
                random_state=0, progress=False)


def _stack(seed: int, normalize: str = "percentile") -> Patches:
    img, mask = make_vessels((2, 64, 64), random_state=seed)
    return Patches.from_arrays(img, axes="ZYX", patch_shape=(32, 32), masks=mask, normalize=normalize)


def _weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [v.clone() for v in module.state_dict().values()]


# ---------------------------------------------------------------------- MAE
def test_mae_checkpoint_of_a_finished_run_refuses_new_data(tmp_path):
    ckpt = tmp_path / "ckpt"
    old, new = _stack(0), _stack(1)
    assert len(old) == len(new)                      # same patch count: the case that used to resume
    MAEPretrainer(checkpoint_dir=str(ckpt), **MAE_TINY).fit(old)
    with untouched(tmp_path), pytest.raises(ValueError, match="different training data") as err:
        MAEPretrainer(checkpoint_dir=str(ckpt), **MAE_TINY).fit(new)
    assert str(ckpt / "checkpoint.pt") in str(err.value) and "not resumed" in str(err.value)


def test_mae_checkpoint_refuses_the_same_pixels_normalised_otherwise(tmp_path):
    ckpt = tmp_path / "ckpt"
    MAEPretrainer(checkpoint_dir=str(ckpt), **MAE_TINY).fit(_stack(0))
    with untouched(tmp_path), pytest.raises(ValueError, match=r"checkpoint.pt was written by a run on different "
                                                              r"training data"):
        MAEPretrainer(checkpoint_dir=str(ckpt), **MAE_TINY).fit(_stack(0, normalize="minmax"))


def test_mae_checkpoint_refuses_other_settings(tmp_path):
    ckpt = tmp_path / "ckpt"
    MAEPretrainer(checkpoint_dir=str(ckpt), **MAE_TINY).fit(_stack(0))
    with untouched(tmp_path), pytest.raises(ValueError, match=r"checkpoint.pt was written by a run with different "
                                                              r"settings"):
        MAEPretrainer(checkpoint_dir=str(ckpt), **{**MAE_TINY, "mask_ratio": 0.5}).fit(_stack(0))


def test_mae_checkpoint_resumes_the_same_run(tmp_path):
    ckpt = tmp_path / "ckpt"
    first = MAEPretrainer(checkpoint_dir=str(ckpt), **MAE_TINY).fit(_stack(0))
    again = MAEPretrainer(checkpoint_dir=str(ckpt), **MAE_TINY).fit(_stack(0))
    for a, b in zip(_weights(first.module_), _weights(again.module_)):
        assert torch.equal(a, b)
    assert again.history_["loss"] == first.history_["loss"]


def test_lazy_patches_fingerprint_sees_a_rewritten_file(tmp_path):
    """Patches too large for memory are fingerprinted by provenance, file stat and a sample."""
    import tifffile

    path = tmp_path / "stack.tif"
    img, _ = make_vessels((2, 64, 64), dtype="uint16", random_state=0)
    tifffile.imwrite(path, img)
    before = patches_fingerprint(Patches.from_tiff(str(path), patch_shape=(32, 32)))
    assert before == patches_fingerprint(Patches.from_tiff(str(path), patch_shape=(32, 32)))
    img2 = img.copy()
    img2[1, 40:, 40:] = img2[1, 40:, 40:] // 2 + 1      # a change inside one patch only
    tifffile.imwrite(path, img2)
    os.utime(path, ns=(1, 1))
    assert before != patches_fingerprint(Patches.from_tiff(str(path), patch_shape=(32, 32)))
    assert before != patches_fingerprint(Patches.from_tiff(str(path), patch_shape=(32, 32), stride=16))


# ---------------------------------------------------------------------- segmenter
def test_segmenter_checkpoint_of_a_finished_run_refuses_new_data(tmp_path):
    ckpt = tmp_path / "ckpt"
    TransUNetSegmenter(checkpoint_dir=str(ckpt), **SEG_TINY).fit(_stack(0))
    with untouched(tmp_path), pytest.raises(ValueError, match="different training data") as err:
        TransUNetSegmenter(checkpoint_dir=str(ckpt), **SEG_TINY).fit(_stack(1))
    assert str(ckpt / "checkpoint.pt") in str(err.value)


def test_segmenter_checkpoint_refuses_edited_masks(tmp_path):
    """Same images, one corrected mask: another run."""
    ckpt = tmp_path / "ckpt"
    p = _stack(0)
    TransUNetSegmenter(checkpoint_dir=str(ckpt), **SEG_TINY).fit(p)
    masks = p.masks().copy()
    masks[0, :4, :4] = 1 - masks[0, :4, :4]
    edited = Patches.from_arrays(p.images(), axes="ZYX", masks=masks, normalize="none")
    with untouched(tmp_path), pytest.raises(ValueError, match="different training data"):
        TransUNetSegmenter(checkpoint_dir=str(ckpt), **SEG_TINY).fit(edited)


def test_segmenter_fine_tune_checkpoint_refuses_other_new_patches(tmp_path):
    ckpt = tmp_path / "ckpt"
    base = _stack(0)
    TransUNetSegmenter(checkpoint_dir=str(ckpt), **SEG_TINY).fit(base).fine_tune(_stack(2)[:3], replay=base)
    seg = TransUNetSegmenter(checkpoint_dir=str(ckpt), **SEG_TINY).fit(base)    # resumes the finished fit
    with untouched(tmp_path), pytest.raises(ValueError, match="different training data") as err:
        seg.fine_tune(_stack(3)[:3], replay=base)
    assert str(ckpt / "fine_tune_0" / "checkpoint.pt") in str(err.value)


def test_segmenter_checkpoint_refuses_other_settings(tmp_path):
    ckpt = tmp_path / "ckpt"
    TransUNetSegmenter(checkpoint_dir=str(ckpt), **SEG_TINY).fit(_stack(0))
    with untouched(tmp_path), pytest.raises(ValueError, match="different settings"):
        TransUNetSegmenter(checkpoint_dir=str(ckpt), **{**SEG_TINY, "lr": 1e-3}).fit(_stack(0))


# ---------------------------------------------------------------------- unusable checkpoint_dir
def _counting_step():
    calls = []
    X = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))

    def step(m, idx, gen):
        calls.append(len(idx))
        return (m.pooled(X[idx]) ** 2).mean()

    return step, calls


def _encoder():
    torch.manual_seed(0)
    return ViTEncoder(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2)


def test_checkpoint_dir_that_is_a_file_is_refused_before_training(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("my notes")
    step, calls = _counting_step()
    with untouched(tmp_path), pytest.raises(NotADirectoryError, match=r"notes.txt' is a file, not a folder"):
        train(_encoder(), step, 8, TrainSettings(max_epochs=1, batch_size=4, lr=1e-3, checkpoint_dir=str(f)))
    assert calls == []                                   # not one step ran


@pytest.mark.parametrize("make", [
    lambda **kw: MAEPretrainer(**MAE_TINY, **kw),
    lambda **kw: TransUNetSegmenter(**SEG_TINY, **kw),
], ids=["mae", "segmenter"])
def test_estimator_checkpoint_dir_that_is_a_file(tmp_path, make):
    f = tmp_path / "run.log"
    f.write_text("a log")
    est = make(checkpoint_dir=str(f))
    with untouched(tmp_path), pytest.raises(NotADirectoryError, match="run.log"):
        est.fit(_stack(0))
    assert not hasattr(est, "history_")


def test_checkpoint_dir_below_a_file_is_refused_before_training(tmp_path):
    f = tmp_path / "data.csv"
    f.write_text("1,2")
    step, calls = _counting_step()
    with untouched(tmp_path), pytest.raises(OSError, match=r"data.csv/ckpt' cannot be written"):
        train(_encoder(), step, 8, TrainSettings(max_epochs=1, batch_size=4, lr=1e-3,
                                                 checkpoint_dir=str(f / "ckpt")))
    assert calls == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_checkpoint_dir_is_refused_before_training(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    step, calls = _counting_step()
    try:
        with pytest.raises(PermissionError, match="cannot be written"):
            train(_encoder(), step, 8, TrainSettings(max_epochs=1, batch_size=4, lr=1e-3, checkpoint_dir=str(ro)))
    finally:
        ro.chmod(0o700)
    assert calls == []


# ---------------------------------------------------------------------- tampered checkpoints
class _WritesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        from pathlib import Path

        return (Path.write_text, (Path(self.path), "ran"))


def test_pickle_planted_in_a_checkpoint_never_runs(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    marker = tmp_path / "PWNED"
    torch.save({"module": _WritesAFile(str(marker))}, ckpt / "checkpoint.pt")
    step, calls = _counting_step()
    with untouched(tmp_path), pytest.raises(ValueError, match=r"checkpoint.pt holds pickled Python objects.*refuses to load"):
        train(_encoder(), step, 8, TrainSettings(max_epochs=1, batch_size=4, lr=1e-3, checkpoint_dir=str(ckpt)))
    assert not marker.exists() and calls == []


def test_foreign_file_named_checkpoint_pt_is_refused(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save({"weights": torch.zeros(3)}, ckpt / "checkpoint.pt")
    step, _ = _counting_step()
    with untouched(tmp_path), pytest.raises(ValueError, match="not a biodatacentric training checkpoint"):
        train(_encoder(), step, 8, TrainSettings(max_epochs=1, batch_size=4, lr=1e-3, checkpoint_dir=str(ckpt)))


def test_checkpoint_without_a_data_record_is_not_resumed(tmp_path):
    """A checkpoint of an older version (no data fingerprint) cannot be matched to the data."""
    ckpt = tmp_path / "ckpt"
    s = TrainSettings(max_epochs=1, batch_size=4, lr=1e-3, checkpoint_dir=str(ckpt))
    step, _ = _counting_step()
    train(_encoder(), step, 8, s, data_fingerprint="abc")
    state = torch.load(ckpt / "checkpoint.pt", weights_only=True)
    del state["data_fingerprint"]
    torch.save(state, ckpt / "checkpoint.pt")
    with untouched(tmp_path), pytest.raises(ValueError, match="without a record of its training data"):
        train(_encoder(), step, 8, s, data_fingerprint="abc")


def test_train_resumes_only_with_the_same_data_fingerprint(tmp_path):
    s = TrainSettings(max_epochs=1, batch_size=4, lr=1e-3, checkpoint_dir=str(tmp_path / "c"))
    step, calls = _counting_step()
    train(_encoder(), step, 8, s, data_fingerprint="data-a")
    n = len(calls)
    train(_encoder(), step, 8, s, data_fingerprint="data-a")     # finished run: nothing to redo
    assert len(calls) == n
    with pytest.raises(ValueError, match="different training data"):
        train(_encoder(), step, 8, s, data_fingerprint="data-b")
    assert len(calls) == n
    np.testing.assert_equal(len(calls), n)
