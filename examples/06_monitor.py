"""Stage 4: estimate the Dice of M1's segmentation of every stack without ground truth (RCA),
and compare with the true Dice where masks exist.

    python examples/06_monitor.py [--data FOLDER] --work work
"""

from pathlib import Path

import numpy as np
import tifffile
from _args import parse, parser

import biodatacentric as bdc
from biodatacentric.metrics import dice

args = parse(parser(__doc__))
work = Path(args.work)
seg = bdc.TransUNetSegmenter.load(work / ("M1" if (work / "M1").exists() else "M0"))
core = bdc.Patches.read_annotations(work / "annotation" / "core")
rca = bdc.RCAMonitor(n_estimators=10 if args.quick else 100, random_state=args.seed).fit(core)
true, est = [], []
for path in sorted(Path(args.data, "images").glob("*.tif")):
    stack = tifffile.imread(path)
    pred = seg.predict_image(stack, axes="ZYX")
    r = rca.score(stack, pred, axes="ZYX")
    line = f"{path.name}: RCA estimate {r['estimated_dice']:.3f} ({'pass' if r['passed'] else 'FLAG'})"
    mask_path = Path(args.data, "masks", path.name)
    if mask_path.exists():
        d = dice(pred, tifffile.imread(mask_path) > 0)
        true.append(d)
        est.append(r["estimated_dice"])
        line += f", true Dice {d:.3f}"
    print(line)
if len(true) > 2:
    print(rca.evaluate(np.array(true), np.array(est)))
