"""Stage 3: hunt for the patches M0 gets wrong and export them with M0's prediction as a
starting mask, for a person to correct; then fine-tune M0 -> M1 with core replay.

    python examples/05_hunt.py [--data FOLDER] --work work [--simulate]
"""

from pathlib import Path

import numpy as np
import tifffile
from _args import parse, parser

import biodatacentric as bdc

p = parser(__doc__)
p.add_argument("--simulate", action="store_true", help="use the dataset's masks as the person's corrections")
p.add_argument("--inspect", type=int, default=30, help="patches shown to the person")
p.add_argument("--curate", type=int, default=3, help="patches the person corrects")
args = parse(p)
if args.quick:
    args.inspect = min(args.inspect, 6)
work = Path(args.work)
patches = bdc.Patches.from_tiff(args.images, axes="ZYX", patch_shape=(args.patch, args.patch),
                                masks=f"{args.data}/masks" if args.simulate else None)
seg = bdc.TransUNetSegmenter.load(work / "M0")
core_idx = np.load(work / "core_indices.npy")
# decoder-only sampling is cheaper but needs a model trained with decoder dropout; with the default
# dihedral transforms the encoder still runs once per transform (up to 8 times per patch)
mode = "decoder_only" if seg.decoder_dropout > 0 else "full"
hunter = bdc.MCDropoutHunter(seg, n_samples=5 if args.quick else 20, mode=mode, random_state=args.seed).fit(patches)
# one per stack and slice neighbourhood: over ten fresh hunting pools this beat random picks in
# both benchmark protocols (benchmarks/results/hunt*_redraw.md); diversity=<MAE embeddings>
# (facility location) is the alternative
shown = hunter.select(args.inspect, exclude=core_idx, diversity="one_per_slice")
hunter.plot(patches, shown[:8], path=work / "critical_patches.png")
log = bdc.CurationLog(work / "curation.json")
critical = shown[: args.curate]
folder = work / "annotation" / "round1"
rnd = log.start_round(patches, critical, folder, model=seg, hunter=hunter)
print(f"round {rnd}: {len(critical)} critical patches exported to {folder} with M0's prediction as the "
      "starting mask; correct masks/<id>.tif in napari or Fiji")
if args.simulate:
    import json

    manifest = json.loads((folder / "manifest.json").read_text())
    for e, m in zip(manifest["patches"], patches[critical].masks()):
        tifffile.imwrite(folder / e["mask"], m)
    curated = bdc.Patches.read_annotations(folder)
    core = bdc.Patches.read_annotations(work / "annotation" / "core")
    seg.fine_tune(curated, replay=core, n_replay=7, max_epochs=2 if args.quick else 20)
    seg.save(work / "M1")
    log.record_model(rnd, "M1", seg)
    print(f"M1 saved to {work / 'M1'}")
