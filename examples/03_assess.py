"""Stage 2: audit the dataset and choose a K-cover core set for annotation.

Needs the embeddings of 02_pretrain.py.

    python examples/03_assess.py [--data FOLDER] --work work --k 25
"""

from pathlib import Path

import numpy as np
from _args import parse, parser

import biodatacentric as bdc
from biodatacentric.assess.plots import plot_embedding_map, plot_montage

p = parser(__doc__)
p.add_argument("--k", type=int, default=25)
args = parse(p)
if args.quick:
    args.k = min(args.k, 8)
work = Path(args.work)
patches = bdc.Patches.from_tiff(args.images, axes="ZYX", patch_shape=(args.patch, args.patch))
emb = np.load(work / "embeddings.npy")
audit = bdc.DatasetAuditor(random_state=args.seed).fit(patches, embeddings=emb)
print(audit.summary_table())
sel = bdc.KCoverSelector(n_select=args.k, random_state=args.seed).fit(emb, exclude=audit.exclude_,
                                                                    groups=patches.index["source"])
print(f"coverage curve (objective vs K): {np.round(sel.coverage_curve_[:5], 1)} ...; suggested K: "
      f"{sel.suggest_n_select()}")
plot_montage(patches, sel.selected_indices_, suptitle=f"K-cover core set, K={args.k}").savefig(work / "core_set.png")
plot_embedding_map(emb, {"K-cover": sel.selected_indices_}, flagged=audit.exclude_,
                   random_state=args.seed).savefig(work / "embedding_map.png")
np.save(work / "core_indices.npy", sel.selected_indices_)
patches[sel.selected_indices_].export(work / "annotation" / "core", on_existing="keep")
print(f"core set exported to {work / 'annotation' / 'core'}: paint masks/<id>.tif for each image "
      "(napari: Labels layer, label 1, save as TIFF; Fiji: binary mask, save as TIFF)")
