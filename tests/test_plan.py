"""The planner: budget parsing, the time model, the runs table, plans the estimators accept."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest

from biodatacentric import (DatasetAuditor, KCoverSelector, MAEPretrainer, MCDropoutHunter, Patches, RCAMonitor,
                            TransUNetSegmenter, make_vessels)
from biodatacentric._runs import SHIPPED_RUNS, append_run, probe, read_runs, run_record, stage_factors
from biodatacentric.plan import Plan, parse_budget, plan, record_run

planmod = importlib.import_module("biodatacentric.plan")      # the module (the package exports plan())


def fake_probe(mae=2.0, seg=4.0, fwd=0.1):
    def f(size, arch, mae_batch, seg_batch, device="auto", n_steps=3):
        scale = 0.25 if arch.get("preset") == "tiny" else 1.0
        return {"mae_step_s": mae * scale, "seg_step_s": seg * scale, "seg_forward_s": fwd * scale,
                "device": "cpu", "precision": "fp32", "probe_seconds": 0.0, "load_1min": 1.0}
    return f


@pytest.fixture(scope="module")
def pool():
    img, mask = make_vessels((16, 128, 128), random_state=0)
    return Patches.from_arrays([img], masks=[mask], axes="ZYX", patch_shape=(64, 64))


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setattr(planmod, "probe", fake_probe())
    monkeypatch.setattr(planmod, "read_runs", lambda runs=None: read_runs(runs, shipped=False, user=False))


def test_parse_budget():
    assert parse_budget("5min") == 300.0 and parse_budget("90 s") == 90.0 and parse_budget(2) == 2.0
    for bad in ("soon", "-3min", 0, "5 days"):
        with pytest.raises(ValueError, match="time_budget"):
            parse_budget(bad)


def test_plan_sizes_stages_to_the_budget(pool, fast):
    short, long = plan(pool, time_budget="2min"), plan(pool, time_budget="20min")
    assert long.pretrain["max_epochs"] > short.pretrain["max_epochs"]
    assert long.segment["max_epochs"] > short.segment["max_epochs"]
    for p, budget in ((short, 120), (long, 1200)):
        total = sum(p.predicted_seconds.values())
        assert 0.6 * budget <= total <= 1.05 * budget, p.predicted_seconds
        assert set(p.reasons) >= {"patch_size", "pretrain", "segment", "fine_tune", "hunt", "audit", "select",
                                  "monitor", "time_model"}
    assert "no measured runs" in long.reasons["time_model"]
    text = str(long)
    assert "20.0-minute budget" in text and "- pretrain:" in text


def test_plan_falls_back_to_tiny_on_a_slow_machine(pool, monkeypatch):
    monkeypatch.setattr(planmod, "probe", fake_probe(mae=30.0, seg=40.0, fwd=0.2))
    monkeypatch.setattr(planmod, "read_runs", lambda runs=None: [])
    p = plan(pool, time_budget="3min")
    assert p.pretrain["preset"] == "tiny" and any("tiny preset" in n for n in p.notes)


def test_plan_parts_are_estimator_parameters(pool, fast, tmp_path):
    p = plan(pool, time_budget="5min", annotation_budget=12)
    assert p.select["n_select"] <= 12
    assert p.patch_size == p.pretrain["img_size"] == p.segment["img_size"]
    MAEPretrainer(**p.pretrain)._validate_params()
    TransUNetSegmenter(**p.segment)._validate_params()
    DatasetAuditor(**p.audit)._validate_params()
    KCoverSelector(**p.select)._validate_params()
    MCDropoutHunter(**p.hunt)._validate_params()
    RCAMonitor(**p.monitor)._validate_params()
    assert "duplicate" not in p.audit["exclude_checks"]       # one source: neighbouring slices look alike
    # training stages stop on time: their predicted seconds are their limits
    for stage in ("pretrain", "segment"):
        assert getattr(p, stage)["max_time"] == pytest.approx(p.predicted_seconds[stage], abs=0.1)
    assert 0 < p.fine_tune["max_time"] <= p.predicted_seconds["hunt"] + 1.0
    again = Plan.load(p.save(tmp_path / "plan.json"))
    assert again.to_dict() == json.loads(json.dumps(p.to_dict()))
    with pytest.raises(ValueError, match="not a biodatacentric plan"):
        (tmp_path / "x.json").write_text("{}")
        Plan.load(tmp_path / "x.json")


def test_runs_table_corrects_the_time_model(pool, monkeypatch, tmp_path):
    monkeypatch.setattr(planmod, "probe", fake_probe())
    runs = tmp_path / "runs.jsonl"
    monkeypatch.setattr(planmod, "read_runs", lambda r=None: read_runs(r, shipped=False, user=False))
    base = plan(pool, time_budget="10min")
    # a measured run that took twice the predicted time in every stage, with a fixed part of 30 s
    for _ in range(2):
        pred = base.predicted_seconds
        rec = run_record("demo", {}, {}, {"total": 0.0, "stages": {"pretrain": 2 * pred["pretrain"],
                                                                    "segment": 2 * pred["segment"],
                                                                    "hunt": 2 * pred["hunt"], "other": 30.0}},
                         {}, {"predicted_seconds": pred})
        append_run(rec, runs)
    factors, other, used = stage_factors(read_runs(runs, shipped=False, user=False))
    assert used == 2 and other == 30.0 and factors == pytest.approx({"pretrain": 2, "segment": 2, "hunt": 2})
    slow = plan(pool, time_budget="10min", runs=runs)
    assert slow.runs_used == 2 and slow.predicted_seconds["other"] == 30.0
    assert slow.pretrain["max_epochs"] < base.pretrain["max_epochs"]
    assert "factors from 2 measured run(s)" in slow.reasons["time_model"]
    runs.write_text("not json\n")
    with pytest.raises(ValueError, match="line 1"):
        read_runs(runs, shipped=False, user=False)


def test_record_run_splits_the_stages(pool, tmp_path):
    times = {"Stage 1 - pretrain (MAE) and embed": 10.0, "Stage 2 - audit": 2.0, "Segment - M0": 5.0,
             "Stage 3 - hunt, curate 3, fine-tune M1": 4.0, "Stage 4 - monitor with RCA": 3.0}
    path = record_run(tmp_path / "runs.jsonl", "demo", pool, {"k_core": 10}, times, 30.0,
                      {"dice_m0": 0.5, "dice_m1": 0.6}, None)
    rec = read_runs(path, shipped=False, user=False)[0]
    assert rec["measured"]["stages"] == {"pretrain": 10.0, "segment": 5.0, "hunt": 4.0, "other": 11.0}
    assert rec["quality"] == {"dice_m0": 0.5, "dice_m1": 0.6} and rec["fingerprint"]["n_patches"] == len(pool)
    assert rec["machine"]["cores"] >= 1


def test_shipped_table_holds_measured_planned_runs():
    recs = read_runs(shipped=True, user=False)
    assert SHIPPED_RUNS.is_file() and recs, "the package ships the runs table"
    for rec in recs:
        assert rec["measured"]["total"] > 0 and rec["plan"]["predicted_seconds"]
        assert rec["machine"]["load_1min"] is not None


def test_probe_times_real_steps():
    r = probe(32, {"preset": "tiny"}, mae_batch=4, seg_batch=2, n_steps=1)
    assert r["mae_step_s"] > 0 and r["seg_step_s"] > 0 and r["seg_forward_s"] > 0


def test_cli_plan(pool, fast, tmp_path, capsys):
    import tifffile

    from biodatacentric.cli import main

    img, _ = make_vessels((4, 128, 128), random_state=0)
    tifffile.imwrite(tmp_path / "a.tif", (img * 255).astype(np.uint8), imagej=True, metadata={"axes": "ZYX"})
    assert main(["plan", str(tmp_path / "a.tif"), "--patch", "64", "--time-budget", "3min",
                 "--out", str(tmp_path / "plan.json")]) == 0
    out = capsys.readouterr().out
    assert "3.0-minute budget" in out and Plan.load(tmp_path / "plan.json").time_budget_s == 180.0


def test_plan_arch_is_forced_or_refused(pool, monkeypatch):
    monkeypatch.setattr(planmod, "probe", fake_probe(mae=30.0, seg=40.0, fwd=0.2))
    monkeypatch.setattr(planmod, "read_runs", lambda runs=None: [])
    p = plan(pool, time_budget="3min", arch="small-narrow")      # slow, but the user's choice is kept
    assert p.pretrain["embed_dim"] == 128 and not any("tiny preset" in n for n in p.notes)
    with pytest.raises(ValueError, match="arch='huge'"):
        plan(pool, time_budget="3min", arch="huge")


def test_user_runs_file_is_read_by_the_planner(pool, monkeypatch, tmp_path):
    from biodatacentric._runs import user_runs_file

    monkeypatch.setattr(planmod, "probe", fake_probe())
    mine = tmp_path / "mine.jsonl"
    monkeypatch.setenv("BIODATACENTRIC_RUNS", str(mine))
    assert user_runs_file() == mine
    monkeypatch.setenv("BIODATACENTRIC_RUNS", "off")
    assert user_runs_file() is None
    monkeypatch.delenv("BIODATACENTRIC_RUNS")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert user_runs_file() == tmp_path / "xdg" / "biodatacentric" / "runs.jsonl"
    monkeypatch.setenv("BIODATACENTRIC_RUNS", str(mine))
    base = plan(pool, time_budget="10min")
    n_shipped = len(read_runs(user=False))
    pred = base.predicted_seconds
    rec = run_record("demo", {}, {}, {"total": 0.0, "stages": {"pretrain": 3 * pred["pretrain"], "other": 20.0}},
                     {}, {"predicted_seconds": pred})
    append_run(rec, mine)
    assert len(read_runs()) == n_shipped + 1 and len(read_runs(mine)) == n_shipped + 1   # each file once
    again = plan(pool, time_budget="10min")                       # no runs= needed: the user's file is read
    assert again.runs_used == base.runs_used + 1
    assert again.pretrain["max_epochs"] <= base.pretrain["max_epochs"]


def test_deadline_gives_later_stages_the_time_left(pool, fast):
    from biodatacentric.plan import Deadline

    p = plan(pool, time_budget="10min")
    pred = p.predicted_seconds
    d = Deadline(p, t_start=0.0)
    d.done("pretrain", pred["pretrain"])
    on_time = d.seconds("segment", now=p.planning_seconds + pred["pretrain"])
    late = Deadline(p, t_start=0.0)
    late.done("pretrain", pred["pretrain"] + 60.0)
    assert late.seconds("segment", now=p.planning_seconds + pred["pretrain"] + 60.0) < on_time
    # a machine slower than planned keeps more time for the fixed part: fewer hunting samples
    slow = Deadline(p, t_start=0.0)
    slow.done("pretrain", pred["pretrain"])
    slow.observe("pretrain", [3.0 * pred["pretrain"] / (p.pretrain["max_epochs"] // 3)] * 5)
    assert slow.slowdown == pytest.approx(3.0)
    now = p.planning_seconds + pred["pretrain"]
    assert slow.seconds("segment", now=now) < on_time
    assert 2 <= slow.hunt_samples(now=now) <= d.hunt_samples(now=now) <= 20
    with pytest.raises(ValueError, match="stage"):
        d.scale("monitor")
