"""The whole loop with a real person in it: export -> annotate in napari or Fiji -> import.

The script stops twice and waits for you: once to paint the core set, once to correct the
critical patches. Run it on any folder of TIFF z-stacks (no masks needed).

    python examples/full_loop_with_a_person.py --data my_stacks/ --work work --k 25
"""

from pathlib import Path

from _args import parse, parser

import biodatacentric as bdc
from biodatacentric.data import annotation_status

p = parser(__doc__)
p.add_argument("--k", type=int, default=25)
p.add_argument("--epochs", type=int, default=50)
args = parse(p)
work = Path(args.work)
patches = bdc.Patches.from_tiff(args.images if Path(args.data, "images").is_dir()
                                else f"{args.data}/*.tif", axes="ZYX", patch_shape=(args.patch, args.patch))
print(patches)

# 1. pretrain and embed
epochs = 2 if args.quick else args.epochs
mae = bdc.MAEPretrainer(preset="tiny" if args.quick else "small", max_epochs=epochs, checkpoint_dir=str(work / "mae_ckpt"),
                        random_state=args.seed).fit(patches)
emb = mae.transform(patches)

# 2. audit, select, annotate
audit = bdc.DatasetAuditor(random_state=args.seed).fit(patches, embeddings=emb)
print(audit.summary_table())
# groups: every stack counts the same in the cover (measured: benchmarks/results/evidence_candidates.md)
core_idx = bdc.KCoverSelector(n_select=args.k, random_state=args.seed).fit(
    emb, exclude=audit.exclude_, groups=patches.index["source"]).selected_indices_
core_dir = work / "annotation" / "core"
patches[core_idx].export(core_dir, on_existing="keep")
input(f"\nPaint a mask for each image in {core_dir}/images and save it as {core_dir}/masks/<same name>.tif\n"
      "(0 = background, 1 or 255 = vessel). Press Enter when done... ")
core = bdc.Patches.read_annotations(core_dir, require_all=True)

# segmenter M0
seg = bdc.TransUNetSegmenter(encoder=mae.encoder_, max_epochs=epochs, random_state=args.seed).fit(core)

# 3. hunt, correct, fine-tune
hunter = bdc.MCDropoutHunter(seg, n_samples=5 if args.quick else 20, random_state=args.seed).fit(patches)
crit_idx = hunter.select(3, exclude=core_idx, diversity="one_per_slice")
crit_dir = work / "annotation" / "round1"
patches[crit_idx].export(crit_dir, masks=seg.predict(patches[crit_idx]), mask_origin="prediction M0",
                         on_existing="keep")
hunter.plot(patches, crit_idx, path=work / "critical.png")
input(f"\nCorrect the starting masks in {crit_dir}/masks (M0's predictions; see {work / 'critical.png'}). "
      "Press Enter when done... ")
print("edited masks:", sum(bool(s["edited"]) for s in annotation_status(crit_dir)), "of", len(crit_idx))
seg.fine_tune(bdc.Patches.read_annotations(crit_dir, require_all=True), replay=core, n_replay=7)
seg.save(work / "M1")

# 4. monitor every stack
rca = bdc.RCAMonitor(random_state=args.seed).fit(core)
for src in sorted(set(patches.sources)):
    import tifffile

    stack = tifffile.imread(src)
    r = rca.score(stack, seg.predict_image(stack, axes="ZYX"), axes="ZYX")
    print(f"{Path(src).name}: estimated Dice {r['estimated_dice']:.2f} -> {'ok' if r['passed'] else 'CHECK THIS STACK'}")
