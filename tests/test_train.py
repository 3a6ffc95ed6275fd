"""The shared training loop: schedule, weight decay groups, exact resume, data parallel."""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from biodatacentric._train import (TrainingInterrupted, TrainSettings, _wait_until_released, build_optimizer,
                                   lr_at, train)
from biodatacentric.nn.vit import ViTEncoder

HERE = Path(__file__).parent


def _model():
    torch.manual_seed(0)
    return ViTEncoder(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, drop=0.1)


X = torch.randn(20, 1, 16, 16, generator=torch.Generator().manual_seed(0))


def _step(m, idx, gen):
    noise = torch.randn(len(idx), 1, 16, 16, generator=gen) * 0.1  # randomness from the run's generator
    return (m.pooled(X[idx] + noise) ** 2).mean()


def test_schedule_warmup_then_cosine():
    lrs = [lr_at(s, 100, 10, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lr_at(99.999, 100, 10, 1.0, min_lr=0.01) == pytest.approx(0.01, abs=1e-4)
    assert lr_at(50, 100, 0, 1.0, schedule="poly") == pytest.approx(0.5 ** 0.9)


def test_no_weight_decay_on_norms_biases_and_tokens():
    m = _model()
    names = {id(p): n for n, p in m.named_parameters()}
    opt = build_optimizer(m, 1e-3, 0.05, (0.9, 0.95))
    for g in opt.param_groups:
        for p in g["params"]:
            n = names[id(p)]
            decayed = g["weight_decay"] > 0
            assert decayed == (p.ndim > 1 and n != "cls_token"), n


def test_interrupted_run_resumes_to_identical_weights(tmp_path):
    s = TrainSettings(max_epochs=4, batch_size=6, lr=1e-3, warmup_epochs=1, seed=3, accum_steps=2,
                      checkpoint_dir=str(tmp_path / "a"))
    m1 = _model()
    with pytest.raises(TrainingInterrupted):
        train(m1, _step, 20, s, interrupt_after=2)
    m1 = _model()  # a fresh process would rebuild the model from scratch
    h1 = train(m1, _step, 20, s)
    s2 = TrainSettings(**{**s.__dict__, "checkpoint_dir": str(tmp_path / "b")})
    m2 = _model()
    h2 = train(m2, _step, 20, s2)
    assert h1["loss"] == h2["loss"]
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_from_other_settings_is_refused(tmp_path):
    s = TrainSettings(max_epochs=1, batch_size=5, lr=1e-3, checkpoint_dir=str(tmp_path))
    train(_model(), _step, 20, s)
    s.lr = 2e-3
    with pytest.raises(ValueError, match="different settings"):
        train(_model(), _step, 20, s)


def test_nan_loss_stops_with_advice():
    s = TrainSettings(max_epochs=1, batch_size=5, lr=1e-3)
    with pytest.raises(FloatingPointError, match="lower lr"):
        train(_model(), lambda m, i, g: m.pooled(X[i]).sum() * float("nan"), 20, s)


@pytest.mark.skipif(not hasattr(torch.Tensor, "_use_count"), reason="this torch has no C++ use count")
def test_wait_until_released_waits_for_the_last_cpp_holder():
    """The wait after a collective: returns only once the other C++ holder (here a view, which
    keeps its base, standing in for a gloo work dropped by a worker thread) has let go, and
    gives up after ``timeout``."""
    t = torch.zeros(1)
    holders = [t.view(1)]
    assert t._use_count() > 1
    t0 = time.monotonic()
    _wait_until_released(t, timeout=0.05)
    assert 0.04 <= time.monotonic() - t0 < 5 and t._use_count() > 1  # gave up at its timeout, still held
    threading.Timer(0.05, holders.clear).start()
    t0 = time.monotonic()
    _wait_until_released(t)
    assert t._use_count() == 1 and time.monotonic() - t0 >= 0.04


TORCHRUN = Path(sys.executable).parent / "torchrun"
def needs_torchrun(test):
    """torchrun runs are slow (a process group per test) and need the torchrun launcher."""
    test = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not available")(test)
    return pytest.mark.slow(test)


def _one_and_two_processes(script: Path, tmp_path: Path, timeout_one: int, timeout_two: int) -> tuple[dict, dict]:
    """Run ``script`` as one process and under torchrun with 2 gloo ranks; return both JSON outputs."""
    env = {"OMP_NUM_THREADS": "1", "PATH": str(TORCHRUN.parent), "PYTHONPATH": str(HERE.parent)}
    runs = [([sys.executable, str(script), str(tmp_path / "one.json")], timeout_one),
            ([str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(script), str(tmp_path / "two.json")], timeout_two)]
    for cmd, timeout in runs:
        done = subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True)
        if done.returncode != 0:  # show what the processes printed, not only the exit status
            pytest.fail(f"{' '.join(cmd)} exited with {done.returncode}:\n{(done.stdout + done.stderr)[-4000:]}")
    return json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())


@needs_torchrun
def test_two_process_gloo_run_matches_single_process(tmp_path):
    one, two = _one_and_two_processes(HERE / "_dist" / "train_tiny.py", tmp_path, timeout_one=120, timeout_two=180)
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-4)
    np.testing.assert_allclose(two["w"], one["w"], rtol=1e-4, atol=1e-6)


@needs_torchrun
def test_mae_and_segmenter_train_data_parallel_under_torchrun(tmp_path):
    """Same estimators, same parameters, launched by torchrun with 2 CPU processes (gloo).

    Masking noise and dropout are drawn per rank, so the curves agree within a few percent
    rather than exactly (the generic loop above, without such randomness, agrees to 1e-4)."""
    one, two = _one_and_two_processes(HERE / "_dist" / "fit_estimators.py", tmp_path, timeout_one=300, timeout_two=300)
    for key in ("mae", "seg"):
        assert len(two[key]) == len(one[key]) == 3
        # the segmenter's first-epoch loss (the steepest part of the curve; with the default fused
        # coarse head added to the output) differed by 9.8 % between 1 and 2 ranks, the later ones by < 0.5 %
        np.testing.assert_allclose(two[key][:1], one[key][:1], rtol=0.12, err_msg=key)
        np.testing.assert_allclose(two[key][1:], one[key][1:], rtol=0.08, err_msg=key)
    assert two["seg"][-1] < 0.8 * two["seg"][0]  # the segmenter clearly learns under torchrun too


class _FakeClock:
    """Stands in for the ``time`` module of the training loop: each training step takes 1 s."""

    def __init__(self):
        self.t = 0.0

    def perf_counter(self):
        return self.t

    def monotonic(self):
        return self.t


def test_time_limit_ends_on_time_and_refits_the_schedule(monkeypatch):
    import biodatacentric._train as tr

    clock = _FakeClock()
    monkeypatch.setattr(tr, "time", clock)

    def step(m, idx, gen):
        clock.t += 1.0                        # 4 steps of batch 5 per epoch: 4 s per epoch
        return _step(m, idx, gen)

    s = TrainSettings(max_epochs=50, batch_size=5, lr=1e-2, seed=0, max_time=10.0)
    h = train(_model(), step, 20, s)
    # after epoch 1: 4 s used, 6 s left = 1 more epoch; after epoch 2: 8 s used, no room for a third
    assert len(h["loss"]) == 2
    assert h["epochs_planned"] == [2.0, 2.0]
    # the cosine schedule was re-fitted to end at epoch 2 (without the limit it would still be near its peak)
    assert h["lr"][-1] < 0.1 * 1e-2
    free = train(_model(), _step, 20, TrainSettings(max_epochs=50, batch_size=5, lr=1e-2, seed=0))
    assert free["lr"][1] > 0.9 * 1e-2


def test_time_limit_not_reached_gives_the_same_run():
    a, b = _model(), _model()
    s = dict(max_epochs=3, batch_size=6, lr=1e-3, seed=1)
    ha = train(a, _step, 20, TrainSettings(**s))
    hb = train(b, _step, 20, TrainSettings(**s, max_time=3600.0))
    assert ha["loss"] == hb["loss"] and ha["lr"] == hb["lr"]
    assert hb["epochs_planned"] == [3.0, 3.0, 3.0]
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    # a time-limited run does not resume the checkpoint of an unlimited one (or the reverse)
    assert TrainSettings(**s).fingerprint(a) != TrainSettings(**s, max_time=5.0).fingerprint(a)


def test_time_limit_is_validated():
    with pytest.raises(ValueError, match="max_time"):
        TrainSettings(max_epochs=1, batch_size=1, lr=1e-3, max_time=0.0).validate()
