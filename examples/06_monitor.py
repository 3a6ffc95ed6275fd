"""Stage 4: estimate the Dice of M1's segmentation of every stack without ground truth, with the
library's default QualityMonitor (the model's own agreement, RCA and drift), and compare with
the true Dice where masks exist.

The monitor is calibrated on a few annotated *validation* patches that the model was never
trained on (on its own training patches a model agrees with the annotators more than it will on
new data). The first run exports them for annotation; --simulate copies the dataset's masks.

    python examples/06_monitor.py [--data FOLDER] --work work [--simulate]
"""

import json
from pathlib import Path

import numpy as np
import tifffile
from _args import parse, parser

import biodatacentric as bdc
from biodatacentric.metrics import dice
from biodatacentric.monitor import evaluate_estimates

p = parser(__doc__)
p.add_argument("--simulate", action="store_true", help="use the dataset's masks as the person's annotation")
p.add_argument("--validation", type=int, default=12, help="validation patches to annotate")
args = parse(p)
work = Path(args.work)
name = "M1" if (work / "M1").exists() else "M0"
seg = bdc.TransUNetSegmenter.load(work / name)
patches = bdc.Patches.from_tiff(args.images, axes="ZYX", patch_shape=(args.patch, args.patch),
                                masks=f"{args.data}/masks" if args.simulate else None)

# validation patches: random patches the model was not trained on (neither core nor hunted rounds)
folder = work / "annotation" / "validation"
if not (folder / "manifest.json").exists():
    used = {(Path(e["source"]).name, e["z"], e["y"], e["x"])
            for m in (work / "annotation").glob("*/manifest.json") for e in json.loads(m.read_text())["patches"]}
    idx = patches.index
    free = [i for i in range(len(patches))
            if (Path(str(idx["source"][i])).name, int(idx["z"][i]), int(idx["y"][i]), int(idx["x"][i])) not in used]
    val_idx = np.sort(np.random.default_rng(args.seed).choice(free, min(args.validation, len(free)), replace=False))
    patches[val_idx].export(folder)
    if args.simulate:  # never overwrites a mask a person drew: the folder is new
        manifest = json.loads((folder / "manifest.json").read_text())
        (folder / "masks").mkdir(exist_ok=True)
        for e, m in zip(manifest["patches"], patches[val_idx].masks()):
            tifffile.imwrite(folder / e["mask"], m)
    else:
        print(f"{len(val_idx)} validation patches exported to {folder}: draw masks/<id>.tif in napari or Fiji, "
              "then run this script again")
        raise SystemExit(0)
val = bdc.Patches.read_annotations(folder, require_all=True)

# the library's defaults, with the RCA part (what the benchmark measured); few trees with --quick
rca = bdc.RCAMonitor(classifier="extra_trees", n_estimators=10 if args.quick else 50, calibration="forest",
                     random_state=args.seed, verbose=False)
monitor = bdc.QualityMonitor(seg, rca=rca, n_samples=4 if args.quick else 8, random_state=args.seed).fit(val)
print(f"{name}: QualityMonitor calibrated on {len(val)} validation patches; interval half-width "
      f"{monitor.halfwidth_:.3f}")
true, est = [], []
for path in sorted(Path(args.data, "images").glob("*.tif")):
    stack = tifffile.imread(path)
    pred = seg.predict_image(stack, axes="ZYX")
    r = monitor.assess(stack, pred, axes="ZYX")
    lo, hi = r["interval"]
    line = f"{path.name}: estimated Dice {r['estimated_dice']:.3f} [{lo:.2f}, {hi:.2f}], {r['decision']}"
    mask_path = Path(args.data, "masks", path.name)
    if mask_path.exists():
        d = dice(pred, tifffile.imread(mask_path) > 0)
        true.append(d)
        est.append(r["estimated_dice"])
        line += f", true Dice {d:.3f}"
    print(line)
    for reason in r["reasons"][1:]:
        print(f"  - {reason}")
if len(true) > 2:
    print(evaluate_estimates(np.array(true), np.array(est)))
