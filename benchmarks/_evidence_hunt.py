"""The hunting arm of the cohort report (``bench_evidence.py --phases hunt``): the pre-registered
comparison of the hunter's configurations, the keep rule's verdict, and the new-stacks check.

Rows come from ``bench_evidence._hunt`` (kind ``"hunt"``: one fresh pool) and ``_hunt_new`` (kind
``"hunt_new"``: one held-out acquisition group).
"""

from __future__ import annotations

import numpy as np

from _evidence_report import dice_from_counts, fmt, fmt_paired, mean_se, paired   # loaded before this module


def _fmt_rhos(v: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in v)


def hunt_section(done: list[dict], protocol: dict, hunt_K: int) -> tuple[list[str], list[str]]:
    """Markdown lines of the hunting arm and its rows of the goals table."""
    P = protocol
    old, new = P["hunt_old"], P["hunt_new"]
    configs = P["hunt_configs"]
    rows = [r for r in done if r["kind"] == "hunt"]
    hunts = {int(r["seed"]): r["hunt"] for r in rows}
    L = ["", f"### Hunting: which configuration should be the hunter's default? ({len(hunts)} fresh pools, "
         f"M0 = K-cover K = {hunt_K} core, scratch)", "", P["hunt_preregistration"].strip(), "",
         "Configurations: " + "; ".join(f"**{n}** = `MCDropoutHunter(" + ", ".join(f"{k}={v!r}" for k, v in c.items())
                                         + ")`" for n, c in configs.items()) + " (every other parameter at its default, "
         "20 samples).", ""]
    if not hunts:
        return L + ["No pool finished."], []

    def macro(name: str) -> dict:
        return {s: float(dice_from_counts(np.array(h[name])).mean()) for s, h in hunts.items() if name in h}

    def per_pool(cfg: str, key: str) -> dict:
        return {s: h["sources"][cfg][key] for s, h in hunts.items()}

    rho = {c: per_pool(c, "spearman") for c in configs}
    L += ["Per pool: Spearman(score, M0 patch error) and the spread of the samples (RMS per-pixel std of "
          "p_fg / share of votes off the pixel's modal label), for each configuration.", "",
          "| pool (seed) | M0 macro Dice | M0 mean patch error | " + " | ".join(f"{c}: Spearman | {c}: spread"
                                                                          for c in configs) + " |",
          "|---|---|---|" + "---|---|" * len(configs)]
    m0 = macro("M0")
    for s in sorted(hunts):
        src = hunts[s]["sources"]
        err = hunts[s]["candidate_mean_error"]
        L.append(f"| {s} | {m0[s]:.3f} | {err:.3f} | " + " | ".join(
            f"{src[c]['spearman']:.2f} | {src[c]['pixel_std']:.4f} / {100 * src[c]['vote_flip']:.2f} %"
            for c in configs) + " |")
    ranges = {c: [hunts[s]["sources"][c]["score_range"] for s in sorted(hunts)] for c in configs}
    L += ["", "Score range over the candidates (min / median / max, first pool): " + "; ".join(
        f"{c}: {r[0][0]:.2g} / {r[0][1]:.2g} / {r[0][2]:.2g}" for c, r in ranges.items()) + "."]

    L += ["", "| model | macro Dice (mean ± SE) | picks: mean M0 error / mean true foreground |", "|---|---|---|",
          f"| M0 | {fmt(m0)} | |"]
    models = ["M0 + 3 uniform", "M0 + 3 fg-random"] + [f"M1 ({c})" for c in configs]
    for nm in models:
        pe = [x for h in hunts.values() for x in h["pick_error"].get(nm, [])]
        pf = [x for h in hunts.values() for x in h["pick_fg"].get(nm, [])]
        L.append(f"| {nm} | {fmt(macro(nm))} | "
                 + (f"{np.mean(pe):.3f} / {np.mean(pf):.3f}" if pe else "–") + " |")
    L += ["", "Paired differences over the pools (macro Dice; `*` = |difference| > 2 SE):", ""]
    for c in configs:
        for base in ("M0 + 3 uniform", "M0 + 3 fg-random"):
            L.append(f"- M1 ({c}) − ({base}): {fmt_paired(*paired(macro(f'M1 ({c})'), macro(base)))}")

    # the keep rule
    d_rho, se_rho, n = paired(rho[new], rho[old])
    d_dice, se_dice, _ = paired(macro(f"M1 ({new})"), macro(f"M1 ({old})"))
    c1 = d_rho > 0 and d_rho > 2 * se_rho
    c2 = d_dice >= -2 * se_dice
    kept = bool(c1 and c2)
    L += ["", "**Keep rule.** (1) Spearman, new minus old: "
          f"{d_rho:+.3f} ± {se_rho:.3f} over {n} pools ({'met' if c1 else 'NOT met'}: needs > 0 and > 2 SE); "
          f"(2) M1 macro Dice, new minus old: {d_dice:+.3f} ± {se_dice:.3f} ({'met' if c2 else 'NOT met'}: needs "
          f">= -2 SE). **Verdict: {'the new configuration becomes the default' if kept else 'the old default stays'}.**"]

    # exploratory: every measure/aggregate score of both sampling sources
    keys = sorted({k for h in hunts.values() for c in configs for k in h["sources"][c]["table_spearman"]})
    L += ["", "Exploratory (not part of the rule): Spearman(score, M0 patch error) of every measure/aggregate "
          "score computed from the same samples (`score_table`), mean ± SE [lowest pool] over the pools.", "",
          "| score | " + " | ".join(f"{configs[c]['transforms']!r} samples" for c in configs) + " |",
          "|---|" + "---|" * len(configs)]
    for k in keys:
        cells = []
        for c in configs:
            v = [h["sources"][c]["table_spearman"][k] for h in hunts.values() if k in h["sources"][c]["table_spearman"]]
            v = [x for x in v if np.isfinite(x)]
            if v:
                mu, se = mean_se(v)
                cells.append(f"{mu:.2f} ± {se:.2f} [{min(v):.2f}]")
            else:
                cells.append("– (constant)")
        L.append(f"| `{k}` | " + " | ".join(cells) + " |")

    # new stacks
    news = [r["hunt_new"] for r in done if r["kind"] == "hunt_new"]
    new_rhos: dict = {c: [] for c in configs}
    if news:
        L += ["", "**New stacks.** M0 trained on the pool patches of the other two vesselnn acquisition groups "
              "(same step budget); candidates = pool patches of the held-out group. Spearman(score, M0 patch "
              "error) per held-out group:", "",
              "| held-out group | M0 trained on | candidates | M0 mean patch error | "
              + " | ".join(configs) + " | best exploratory score |", "|---|---|---|---|" + "---|" * (len(configs) + 1)]
        for h in news:
            for c in configs:
                new_rhos[c].append(h["sources"][c]["spearman"])
            best = max(((f"{configs[c]['transforms']}: {k}", v) for c in configs
                        for k, v in h["sources"][c]["table_spearman"].items() if np.isfinite(v)),
                       key=lambda kv: kv[1], default=("–", float("nan")))
            L.append(f"| {h['group']} | {h['n_train']} patches | {h['n_candidates']} | {h['mean_error']:.3f} | "
                     + " | ".join(f"{h['sources'][c]['spearman']:.2f}" for c in configs)
                     + f" | `{best[0]}` {best[1]:.2f} |")

    goals = []
    chosen = new if kept else old
    du, seu, _ = paired(macro(f"M1 ({chosen})"), macro("M0 + 3 uniform"))
    df, sef, _ = paired(macro(f"M1 ({chosen})"), macro("M0 + 3 fg-random"))
    goals.append(f"| M1 (default after this run: {chosen}) beats M0 + 3 uniform and M0 + 3 fg-random by > 2 SE | "
                 f"{du:+.3f} ± {seu:.3f}; {df:+.3f} ± {sef:.3f} | {'yes' if du > 2 * seu and df > 2 * sef else 'NO'} |")
    rc = [rho[chosen][s] for s in sorted(hunts)]
    goals.append(f"| Spearman(score, M0 error) ≥ 0.5 on every fresh pool ({chosen}) | {_fmt_rhos(rc)} | "
                 f"{'yes' if min(rc) >= 0.5 else 'NO'} |")
    if news:
        goals.append(f"| Spearman ≥ 0.5 on pools of new stacks ({chosen}; held out: "
                     + ", ".join(h["group"] for h in news) + f") | {_fmt_rhos(new_rhos[chosen])} | "
                     f"{'yes' if min(new_rhos[chosen]) >= 0.5 else 'NO'} |")
    return L, goals
