"""Segment: train M0 on the annotated core set, starting from the MAE encoder.

For a quick try on vesselnn_2pm without painting, --simulate copies the dataset's own masks
into the annotation folder (clearly a simulation of the person).

    python examples/04_segment.py [--data FOLDER] --work work [--simulate]
"""

from pathlib import Path

import numpy as np
import tifffile
from _args import parse, parser

import biodatacentric as bdc

p = parser(__doc__)
p.add_argument("--simulate", action="store_true", help="use the dataset's masks instead of a person's")
p.add_argument("--epochs", type=int, default=60)
args = parse(p)
work = Path(args.work)
folder = work / "annotation" / "core"
if args.simulate:
    labelled = bdc.Patches.from_tiff(args.images, axes="ZYX", masks=f"{args.data}/masks",
                                     patch_shape=(args.patch, args.patch))
    core_idx = np.load(work / "core_indices.npy")
    import json

    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "masks").mkdir(exist_ok=True)
    for e, m in zip(manifest["patches"], labelled[core_idx].masks()):
        if not (folder / e["mask"]).exists():  # never overwrite a person's mask
            tifffile.imwrite(folder / e["mask"], m)
core = bdc.Patches.read_annotations(folder)
mae = bdc.MAEPretrainer.load(work / "mae")
seg = bdc.TransUNetSegmenter(preset="small", encoder=mae.encoder_,  # sizes come from the encoder
                             max_epochs=2 if args.quick else args.epochs, batch_size=8, checkpoint_dir=str(work / "seg_checkpoints"),
                             random_state=args.seed).fit(core)
print(f"encoder transfer: {len(seg.encoder_transfer_['loaded'])} tensors loaded from the MAE")
seg.save(work / "M0")
print(f"M0 saved to {work / 'M0'}; training Dice on the core set {seg.score(core):.3f}")
