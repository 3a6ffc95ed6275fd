"""Stage 0: index a folder of z-stacks as patches, look at them, export a few for annotation.

    python examples/01_patches.py [--data FOLDER] --work work
"""

from pathlib import Path

from _args import parse, parser

import biodatacentric as bdc

args = parse(parser(__doc__))
work = Path(args.work)
patches = bdc.Patches.from_tiff(args.images, axes="ZYX", patch_shape=(args.patch, args.patch))
print(patches)
for row in patches.normalization()[:3]:
    print(f"{Path(row['source']).name}: raw {row['raw_dtype']}, offset {row['offset']:.1f}, scale {row['scale']:.4f}")
prov = patches.provenance()
print("first patches come from:", [(Path(s).name, int(z), int(y), int(x)) for s, z, y, x in prov[:3]])
out = patches[[0, len(patches) // 2, len(patches) - 1]].export(work / "annotation" / "first_look",
                                                                 on_existing="keep")
print(f"exported 3 patches to {out}; paint masks/<id>.tif in napari or Fiji, then "
      "bdc.Patches.read_annotations(...) reads them back")
