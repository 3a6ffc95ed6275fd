"""Let the data and the machine choose the settings: :func:`plan` and :class:`Plan`.

:func:`plan` reads the :func:`~biodatacentric.fingerprint` of the patches, times a few training
steps on this machine (:func:`biodatacentric._runs.probe`) and sizes every stage of the loop to
a time budget. Each choice comes with its reason. The estimators take the plan's parts as
keyword arguments::

    p = bdc.plan(patches, time_budget="10min")
    mae = bdc.MAEPretrainer(**p.pretrain)
    seg = bdc.TransUNetSegmenter(encoder=mae.encoder_, **p.segment)
    seg.fine_tune(new, replay=core, **p.fine_tune)

**Time model.** The budget, less the planning itself and the fixed part of a run (loading,
audit, predictions, monitoring, figures: the median measured in the runs table), is shared:
20 % hunting and fine-tuning (at least two hunting samples of the pool and one epoch),
and the rest 45 : 35 between MAE pretraining and segmenter training. Each stage's
seconds are predicted as its steps times the probe's seconds per step, times the stage's
correction factor: the median of measured / predicted seconds over the planned runs in the
runs table (:mod:`biodatacentric._runs`; the table shipped with the package holds real
measured runs, and a user's own file adds to it).

**Keeping to the budget while the run goes on.** A short probe cannot foresee a shared
machine's load. So the training stages get their predicted seconds as a time limit
(``max_time``, with room for up to three times the planned epochs): they end on time when the
machine is slower than predicted and use the time when it is faster, with the learning-rate
schedule re-fitted to the epochs that fit. A run driven by a plan (``demo --time-budget``)
also re-allots the time left before each stage (:class:`Deadline`): a stage that ran over
shortens the later ones, and the measured slowdown reserves more time for the parts that
cannot stop early (the hunt's passes and the fixed part).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_write_text
from ._runs import append_run, probe, read_runs, run_record, stage_factors
from .data import Patches, as_patches
from .data.fingerprint import fingerprint

__all__ = ["Plan", "plan", "parse_budget", "demo_config", "record_run", "Deadline"]

#: The demo's encoder: a narrow "small" ViT (fast on CPUs), and the tiny preset for short budgets.
ARCHS = {"small-narrow": dict(preset="small", embed_dim=128, depth=4, num_heads=4, patch_size=8),
         "tiny": dict(preset="tiny")}
SHARES = {"pretrain": 0.45, "segment": 0.35, "hunt": 0.20}    # of the time left after the fixed parts
EPOCH_HEADROOM = 3     # a planned training stage may run up to 3 x its planned epochs within its time limit


def parse_budget(value: Any) -> float:
    """Seconds of a budget given as seconds or a string such as ``"90s"``, ``"10min"``, ``"1h"``.

    Examples
    --------
    >>> parse_budget("10min"), parse_budget("1h"), parse_budget(90), parse_budget("2.5 min")
    (600.0, 3600.0, 90.0, 150.0)
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|sec|min|m|h)?\s*", str(value))
        if not m:
            raise ValueError(f"time_budget={value!r}; give seconds or a string such as '90s', '10min' or '1h'")
        seconds = float(m.group(1)) * {"s": 1, "sec": 1, None: 1, "min": 60, "m": 60, "h": 3600}[m.group(2)]
    if not seconds > 0:
        raise ValueError(f"time_budget={value!r} must be positive")
    return seconds


@dataclass
class Plan:
    """Settings for every stage, each with its reason (plain data: printable, JSON, ``save``/``load``).

    ``pretrain``, ``segment``, ``audit``, ``hunt`` and ``monitor`` are keyword arguments of
    :class:`~biodatacentric.MAEPretrainer`, :class:`~biodatacentric.TransUNetSegmenter`,
    :class:`~biodatacentric.DatasetAuditor`, :class:`~biodatacentric.MCDropoutHunter` (without
    the segmenter) and :class:`~biodatacentric.RCAMonitor`; ``select`` of
    :class:`~biodatacentric.KCoverSelector`; ``fine_tune`` of
    :meth:`TransUNetSegmenter.fine_tune <biodatacentric.TransUNetSegmenter.fine_tune>`.
    """

    time_budget_s: float
    device: str
    precision: str
    patch_size: int
    pretrain: dict
    segment: dict
    fine_tune: dict
    audit: dict
    select: dict
    hunt: dict
    monitor: dict
    reasons: dict
    predicted_seconds: dict
    probe: dict
    fingerprint: dict
    runs_used: int = 0
    planning_seconds: float = 0.0
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the plan as JSON (atomically)."""
        return atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        """Read a plan written by :meth:`save`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} does not exist; write a plan with Plan.save") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc})") from None
        names = set(cls.__dataclass_fields__)
        if not isinstance(data, dict) or not {"pretrain", "segment", "reasons"} <= set(data):
            raise ValueError(f"{path} is not a biodatacentric plan (no pretrain / segment / reasons)")
        return cls(**{k: v for k, v in data.items() if k in names})

    def __str__(self) -> str:
        total = sum(self.predicted_seconds.values())
        lines = [f"Plan for a {self.time_budget_s / 60:.1f}-minute budget on {self.device} ({self.precision}); "
                 f"predicted {total / 60:.1f} min in all (planning took {self.planning_seconds:.0f} s)"]
        for key, reason in self.reasons.items():
            lines.append(f"- {key}: {reason}")
        lines.append("predicted seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in self.predicted_seconds.items()))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _patch_size(scale: float, shape: tuple[int, int], max_side: int) -> tuple[int, str]:
    want = 2 ** int(round(math.log2(max(32.0 * scale, 1.0))))
    size = int(min(max(want, 64), 256, max_side))
    size = max(16, 2 ** int(math.floor(math.log2(size))))
    return size, (f"{size} px: bright structures ~{scale:.1f} px (ridge sigma), so a patch of about 32 x that "
                  f"({want} px) shows several vessels across, kept within 64-256 px and the images' "
                  f"{max_side} px side")


def plan(patches: Patches | Any, time_budget: Any = "10min", device: str = "auto", *,
         annotation_budget: int | None = None, runs: str | os.PathLike | None = None,
         arch: str | None = None, n_probe_steps: int = 2) -> Plan:
    """Choose the loop's settings for ``patches`` on this machine within ``time_budget``.

    Parameters
    ----------
    patches : Patches
        The training pool (with or without masks).
    time_budget : float or str
        Seconds, or ``"90s"``, ``"10min"``, ``"1h"``: the wall time of the whole loop
        (pretraining to monitoring), planning included.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    annotation_budget : int, optional
        Patches a person can annotate for the core set (caps K).
    runs : path, optional
        A JSON-lines file of your own run records (added to the shipped table).
    arch : {"small-narrow", "tiny"}, optional
        Use this encoder (:data:`ARCHS`) instead of letting the planner choose (the demo's
        narrow small ViT, or the tiny preset when that leaves fewer than 3 MAE epochs).
    n_probe_steps : int
        Timed steps per probe measurement.

    Returns
    -------
    Plan

    Examples
    --------
    >>> from biodatacentric import Patches, make_vessels, plan
    >>> img, mask = make_vessels((4, 64, 64), random_state=0)
    >>> p = plan(Patches.from_arrays([img], masks=[mask], axes="ZYX", patch_shape=(32, 32)),
    ...          time_budget="2min", arch="tiny", n_probe_steps=1)
    >>> p.patch_size, p.pretrain["img_size"] == p.patch_size, p.select["n_select"] <= 16
    (64, True, True)
    >>> "patch_size" in p.reasons and "pretrain" in p.reasons
    True
    """
    t0 = time.perf_counter()
    budget = parse_budget(time_budget)
    p = as_patches(patches, name="patches")
    n = len(p)
    fp = fingerprint(p, max_patches=64)
    reasons: dict[str, str] = {}
    notes: list[str] = []
    sides = [min(s.shape[-2:]) for s in p._sources]
    max_side = int(min(sides)) if sides else int(min(p.patch_shape))
    size, reasons["patch_size"] = _patch_size(fp.structure_scale_px, tuple(p.patch_shape), max_side)
    # patches of the planned size in the pool (sources re-cut at that size)
    n_at = max(1, int(round(n * (p.patch_shape[0] * p.patch_shape[1]) / size ** 2)))
    records = read_runs(runs)
    factors, other, used = stage_factors(records)
    f = {s: factors.get(s, 1.0) for s in SHARES}
    k = int(min(max(10, round(0.05 * n_at)), 50, n_at))
    if annotation_budget is not None:
        k = int(max(1, min(k, int(annotation_budget))))
    reasons["select"] = (f"K = {k}: 5 % of the ~{n_at} patches of {size} px, kept within 10-50"
                         + (f" and the annotation budget of {annotation_budget}" if annotation_budget else ""))
    mae_batch = 32 if n_at >= 64 else 16
    seg_batch = 8
    if arch is not None and arch not in ARCHS:
        raise ValueError(f"arch={arch!r}; use one of {sorted(ARCHS)} or None (the planner chooses)")
    arch_name = arch or "small-narrow"
    pr = probe(size, ARCHS[arch_name], mae_batch, seg_batch, device, n_probe_steps)
    spent = time.perf_counter() - t0
    overhead = other if other is not None else 0.15 * budget
    rest = budget - spent - overhead
    if rest <= 0:
        raise ValueError(f"time_budget={time_budget!r} is shorter than planning ({spent:.0f} s) plus the fixed "
                         f"part of a run ({overhead:.0f} s); give more time")
    steps_per_epoch_mae = math.ceil(n_at / mae_batch)
    seg_steps_per_epoch = math.ceil(k / seg_batch)

    def sizes(pr: dict, rest: float) -> tuple[int, int, int, int]:
        ft_step = pr["seg_step_s"] * 10 / seg_batch * f["hunt"]     # a round: 3 new + 7 replayed per step
        pass_s = pr["seg_forward_s"] * n_at * f["hunt"]             # one MC pass over the pool
        hunt_share = SHARES["hunt"] * rest
        ft_epochs = int(min(max(0.4 * hunt_share / ft_step, 1), 15))
        n_samples = int(min(max((hunt_share - ft_epochs * ft_step) / pass_s, 2), 20))   # at least 2 samples
        left = max(rest - ft_epochs * ft_step - n_samples * pass_s, 0.0)
        share = SHARES["pretrain"] / (SHARES["pretrain"] + SHARES["segment"])
        mae_epochs = int(share * left / (pr["mae_step_s"] * f["pretrain"] * steps_per_epoch_mae))
        seg_epochs = int((1 - share) * left / (pr["seg_step_s"] * f["segment"] * seg_steps_per_epoch))
        return mae_epochs, seg_epochs, ft_epochs, n_samples

    mae_epochs, seg_epochs, ft_epochs, n_samples = sizes(pr, rest)
    if mae_epochs < 3 and arch is None:
        arch_name = "tiny"
        notes.append(f"the demo's narrow small ViT allows {mae_epochs} MAE epoch(s) here; the tiny preset instead")
        pr = probe(size, ARCHS[arch_name], mae_batch, seg_batch, device, n_probe_steps)
        spent = time.perf_counter() - t0
        rest = max(budget - spent - overhead, 1.0)
        mae_epochs, seg_epochs, ft_epochs, n_samples = sizes(pr, rest)
    if mae_epochs < 1 or seg_epochs < 2:
        notes.append("the budget is too short for one MAE epoch and two segmenter epochs on this machine now; "
                     "the plan takes those minimums and will run over (see predicted seconds)")
    mae_epochs = int(min(max(mae_epochs, 1), 200))
    seg_epochs = int(min(max(seg_epochs, 2), 300))
    enc = ARCHS[arch_name]
    ft_step = pr["seg_step_s"] * 10 / seg_batch
    predicted = {
        "planning": spent,
        "pretrain": mae_epochs * steps_per_epoch_mae * pr["mae_step_s"] * f["pretrain"],
        "segment": seg_epochs * seg_steps_per_epoch * pr["seg_step_s"] * f["segment"],
        "hunt": (ft_epochs * ft_step + n_samples * n_at * pr["seg_forward_s"]) * f["hunt"],
        "other": overhead,
    }
    # Training stages get their predicted seconds as a time limit (max_time) and room for up to
    # EPOCH_HEADROOM x the planned epochs: on time when the machine is slower than the probe
    # said, and the budget used when it is faster (see biodatacentric._train).
    mae_cap, seg_cap = mae_epochs * EPOCH_HEADROOM, seg_epochs * EPOCH_HEADROOM
    pretrain = dict(**enc, img_size=size, mask_ratio=0.75, max_epochs=mae_cap, batch_size=mae_batch,
                    warmup_epochs=max(1, min(3, mae_epochs // 10)), n_components=64 if n_at >= 64 else 16,
                    device=device, precision="auto", max_time=round(predicted["pretrain"], 1))
    ms = pr["mae_step_s"] * f["pretrain"]
    reasons["pretrain"] = (f"{arch_name} ViT ({enc}), {mae_epochs} epochs of {steps_per_epoch_mae} steps at batch "
                           f"{mae_batch} predicted to take {predicted['pretrain']:.0f} s (the time limit; up to "
                           f"{mae_cap} epochs if they fit): 45 of every 80 s left after hunting, at {ms:.2f} s per step "
                           f"(probe {pr['mae_step_s']:.2f} s x factor {f['pretrain']:.2f}); learning rate by the "
                           "library's rule (blr x batch / 256), not tuned by the planner")
    segment = dict(preset=enc["preset"], img_size=size, max_epochs=seg_cap, batch_size=seg_batch, lr=5e-4,
                   device=device, precision="auto", max_time=round(predicted["segment"], 1))
    reasons["segment"] = (f"{seg_epochs} epochs of {seg_steps_per_epoch} steps (K = {k} patches, batch {seg_batch}) "
                          f"predicted to take {predicted['segment']:.0f} s (the time limit; up to {seg_cap} epochs "
                          "if they fit): 35 of every 80 s left after hunting, at "
                          f"{pr['seg_step_s'] * f['segment']:.2f} s per step; peak lr 5e-4 (warmup, cosine)")
    ft_seconds = max(ft_epochs * ft_step * f["hunt"], 1.0)
    fine_tune = dict(max_epochs=ft_epochs, n_replay=7, max_time=round(ft_seconds, 1))
    reasons["fine_tune"] = (f"{ft_epochs} epochs of 3 new + 7 replayed patches (the paper's mix), at most "
                            f"{ft_seconds:.0f} s: 40 % of the hunting share (20 % of the time left), 1-15")
    hunt = dict(n_samples=n_samples, mode="full")
    reasons["hunt"] = (f"{n_samples} samples (dihedral transforms with MC dropout) per patch over ~{n_at} patches: the rest of the hunting share, at least 2, "
                       f"at {1000 * pr['seg_forward_s']:.1f} ms per patch and pass (2-20)")
    dup = "duplicate" if p.n_sources > 10 and n_at > 2000 else None
    audit = dict(n_clusters=int(min(50, max(2, n_at // 4))),
                 exclude_checks=tuple(c for c in ("duplicate", "blank", "saturated", "blurry") if c != "duplicate"
                                      or dup),
                 blank_range=0.05 if fp.blank_share <= 0.5 else 0.02)
    reasons["audit"] = ("blank, saturated and blurry patches are excluded; near-duplicates are "
                        + ("excluded too (many sources and patches)" if dup else
                           f"reported, not excluded: {p.n_sources} source(s), where neighbouring slices look alike "
                           "(a duplicate rule flagged 74-84 % of two real datasets)")
                        + ("; blank threshold 0.02 because most patches are dim"
                           f" ({100 * fp.blank_share:.0f} % under 0.05)" if fp.blank_share > 0.5 else "")
                        + "; DatasetAuditor warns (AuditWarning) whenever more than half would be excluded")
    monitor = dict(n_estimators=50 if budget >= 240 else 20)
    reasons["monitor"] = (f"RCA with {monitor['n_estimators']} trees"
                          + ("" if budget >= 240 else " (fewer: a budget under 4 min)"))
    reasons["patch_count"] = f"{n} patches given ({tuple(p.patch_shape)}), ~{n_at} at {size} px"
    reasons["time_model"] = (f"probe: MAE {pr['mae_step_s']:.2f} s/step, segmenter {pr['seg_step_s']:.2f} s/step, "
                             f"{1000 * pr['seg_forward_s']:.1f} ms/patch forward ({pr['precision']} on {pr['device']}, load "
                             f"{pr.get('load_1min') or float('nan'):.1f}); "
                             + (f"factors from {used} measured run(s): "
                                + ", ".join(f"{s} {v:.2f}" for s, v in factors.items())
                                + f"; fixed part {overhead:.0f} s (median measured)" if used else
                                f"no measured runs: factors 1, fixed part 15 % of the budget ({overhead:.0f} s)"))
    return Plan(time_budget_s=budget, device=pr["device"], precision=pr["precision"], patch_size=size,
                pretrain=pretrain, segment=segment, fine_tune=fine_tune, audit=audit, select={"n_select": k},
                hunt=hunt, monitor=monitor, reasons=reasons, predicted_seconds=predicted, probe=pr,
                fingerprint={k2: v for k2, v in fp.to_dict().items() if k2 not in ("sources", "pixel_size_by_source")},
                runs_used=used, planning_seconds=time.perf_counter() - t0, notes=notes)


def demo_config(plan_: Plan | None, quick: bool, seed: int) -> dict:
    """The demo's settings: the plan's, or (without one) the demo's fixed ones."""
    if plan_ is not None:
        arch = {k: v for k, v in plan_.pretrain.items()
                if k in ("preset", "embed_dim", "depth", "num_heads", "patch_size")}
        return {"arch": arch, "pretrain": {**plan_.pretrain, "random_state": seed},
                "audit": {**plan_.audit, "random_state": seed}, "k_core": int(plan_.select["n_select"]),
                "segment": {**plan_.segment, "random_state": seed}, "hunt": {**plan_.hunt, "random_state": seed},
                "fine_tune": dict(plan_.fine_tune), "monitor": {**plan_.monitor, "random_state": seed}}
    arch = dict(preset="tiny") if quick else dict(ARCHS["small-narrow"])
    return {"arch": arch,
            "pretrain": dict(**arch, mask_ratio=0.75, max_epochs=3 if quick else 30, batch_size=32,
                             warmup_epochs=1 if quick else 3, n_components=16 if quick else 64, random_state=seed),
            "audit": None, "k_core": 10,
            "segment": dict(preset=arch["preset"], max_epochs=3 if quick else 40, batch_size=8, lr=5e-4,
                            random_state=seed),
            "hunt": dict(n_samples=5 if quick else 20, random_state=seed),
            "fine_tune": dict(max_epochs=3 if quick else 15, n_replay=7),
            "monitor": dict(n_estimators=10 if quick else 50, random_state=seed)}


class Deadline:
    """Keeps a planned run on its budget: each stage gets its share of the time *left*.

    A plan predicts every stage's seconds from a short probe; on a shared machine the speed
    changes while the run goes on. The training stages are elastic (they stop on time through
    their ``max_time``), the rest is not: the hunt's passes over the pool (elastic only
    through its number of samples, 2-20) and the fixed part (audit, predictions, monitoring,
    figures). So the deadline tracks two things:

    * the **slowdown**: the latest training stage's median seconds per epoch over the plan's
      prediction (:meth:`observe`); the fixed part still to come and the hunt's passes are
      expected to take that much longer than planned;
    * the **time left**: before each stage, :meth:`scale` compares the budget less the time
      since ``t_start`` and less the (slowed) fixed part still to come with what the plan
      predicted for the stages still to run, and :meth:`seconds` gives the stage its
      predicted seconds times that ratio. A stage that ran over shortens the later ones; one
      that finished early lengthens them (within the estimators' epoch caps).

    Parameters
    ----------
    plan_ : Plan
    t_start : float
        ``time.perf_counter()`` when the run (its planning included) began.

    Examples
    --------
    >>> p = Plan(time_budget_s=300.0, device="cpu", precision="bf16", patch_size=64,
    ...          pretrain={"max_epochs": 30}, segment={"max_epochs": 60}, fine_tune={"max_time": 10.0},
    ...          audit={}, select={}, hunt={"n_samples": 20}, monitor={}, reasons={}, probe={}, fingerprint={},
    ...          predicted_seconds={"planning": 10, "pretrain": 100, "segment": 80, "hunt": 50, "other": 60},
    ...          planning_seconds=10.0)
    >>> d = Deadline(p, t_start=0.0)
    >>> d.seconds("pretrain", now=10.0)              # on schedule: as planned
    100.0
    >>> d.done("pretrain", 160.0)                    # the MAE stage took 160 s instead of 100 ...
    >>> d.observe("pretrain", [16.0] * 10)           # ... at 16 s per epoch instead of 10
    >>> d.slowdown
    1.6
    >>> round(d.seconds("segment", now=170.0), 1)    # 300 - 170 - 1.6 x 60 s left for 130 s planned
    20.9
    >>> d.done("segment", 20.0)
    >>> d.hunt_samples(now=200.0)    # ~20 s left, ~16 s of it for passes of 3.2 s (2 s planned x 1.6)
    4
    """

    STAGES = ("pretrain", "segment", "hunt")

    def __init__(self, plan_: Plan, t_start: float) -> None:
        self.plan, self.t_start = plan_, float(t_start)
        self.spent: dict[str, float] = {}
        self.slowdown = 1.0

    def done(self, stage: str, seconds: float) -> None:
        """Record the measured seconds of a finished stage."""
        self.spent[stage] = float(seconds)

    def observe(self, stage: str, epoch_seconds: Any) -> None:
        """Update the slowdown from a training stage's measured seconds per epoch."""
        planned_epochs = max(int(getattr(self.plan, stage).get("max_epochs", 1)) // EPOCH_HEADROOM, 1)
        predicted = float(self.plan.predicted_seconds.get(stage, 0.0)) / planned_epochs
        times = [float(t) for t in epoch_seconds]
        if predicted > 0 and times:
            self.slowdown = float(np.median(times)) / predicted

    def _left(self, now: float | None) -> float:
        pred = self.plan.predicted_seconds
        now = time.perf_counter() if now is None else float(now)
        elapsed = now - self.t_start
        other_spent = max(elapsed - self.plan.planning_seconds - sum(self.spent.values()), 0.0)
        other_left = max(float(pred.get("other", 0.0)) - other_spent, 0.0) * self.slowdown
        return max(self.plan.time_budget_s - elapsed - other_left, 0.0)

    def scale(self, stage: str, now: float | None = None) -> float:
        """Time left for ``stage`` and the stages after it, over what the plan predicted for them."""
        if stage not in self.STAGES:
            raise ValueError(f"stage={stage!r}; use one of {self.STAGES}")
        rest = self.STAGES[self.STAGES.index(stage):]
        planned = sum(float(self.plan.predicted_seconds.get(s, 0.0)) for s in rest)
        return self._left(now) / planned if planned > 0 else 1.0

    def seconds(self, stage: str, now: float | None = None) -> float:
        """Seconds ``stage`` may take now (at least 1)."""
        return max(float(self.plan.predicted_seconds.get(stage, 0.0)) * self.scale(stage, now), 1.0)

    def hunt_samples(self, now: float | None = None) -> int:
        """MC-dropout samples that fit in the hunt's time left, at the slowed speed (2-20).

        The plan's seconds per pass over the pool are its hunt seconds less the fine-tuning's,
        per planned sample.
        """
        n = int(self.plan.hunt.get("n_samples", 2))
        ft = float(self.plan.fine_tune.get("max_time") or 0.0)
        per_pass = max(float(self.plan.predicted_seconds.get("hunt", 0.0)) - ft, 0.0) / max(n, 1) * self.slowdown
        allot = self._left(now) - ft * self.scale("hunt", now)
        fit = int(allot // per_pass) if per_pass > 0 else n
        return int(min(max(fit, 2), 20))


_STAGE_OF = (("Stage 1", "pretrain"), ("Segment", "segment"), ("Stage 3", "hunt"))


def record_run(path: str | os.PathLike, kind: str, patches: Patches, cfg: dict, stage_seconds: dict,
               total: float, results: dict, plan_: Plan | None) -> Path:
    """Append the record of a demo or benchmark run to the JSON-lines file ``path``.

    ``stage_seconds`` maps stage titles to measured seconds; titles "pretrain", "segment" and
    "hunt" or starting with "Stage 1", "Segment" and "Stage 3" are the pretrain, segment and hunt
    (with fine-tuning) stages, the rest (and the planning) is "other".
    """
    stages = {"pretrain": 0.0, "segment": 0.0, "hunt": 0.0}
    for title, sec in stage_seconds.items():
        name = title if title in stages else next((n for prefix, n in _STAGE_OF if title.startswith(prefix)), None)
        if name is not None:
            stages[name] += float(sec)
    planning = plan_.planning_seconds if plan_ is not None else 0.0
    stages["other"] = max(float(total) - sum(stages.values()) - planning, 0.0)
    fp = plan_.fingerprint if plan_ is not None else {
        k: v for k, v in fingerprint(patches, max_patches=64).to_dict().items()
        if k not in ("sources", "pixel_size_by_source")}
    summary = {k: fp.get(k) for k in ("n_patches", "n_sources", "patch_shape", "structure_scale_px", "snr",
                                      "foreground_share", "mask_share", "blank_share")}
    quality = {k: v for k, v in results.items() if k.startswith("dice_")}   # dice_m0, dice_m1, ...
    config = {k: v for k, v in cfg.items()}
    plan_info = None if plan_ is None else {"time_budget_s": plan_.time_budget_s, "probe": plan_.probe,
                                            "predicted_seconds": plan_.predicted_seconds,
                                            "runs_used": plan_.runs_used}
    record = run_record(kind, summary, config, {"total": float(total), "planning": planning, "stages": stages},
                        quality, plan_info)
    return append_run(record, path)
