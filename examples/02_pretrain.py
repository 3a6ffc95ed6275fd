"""Stage 1: masked-autoencoder pretraining on every patch, then one embedding per patch.

Checkpoints every 5 epochs: interrupt it and run it again to resume.

    python examples/02_pretrain.py [--data FOLDER] --work work --epochs 30
"""

from pathlib import Path

import numpy as np
from _args import parse, parser

import biodatacentric as bdc

p = parser(__doc__)
p.add_argument("--epochs", type=int, default=30)
args = parse(p)
work = Path(args.work)
patches = bdc.Patches.from_tiff(args.images, axes="ZYX", patch_shape=(args.patch, args.patch))
size = dict(preset="tiny") if args.quick else dict(preset="small", embed_dim=128, depth=4, num_heads=4)
mae = bdc.MAEPretrainer(**size, max_epochs=1 if args.quick else args.epochs, batch_size=32, checkpoint_dir=str(work / "mae_checkpoints"), checkpoint_every=5,
                        random_state=args.seed)
mae.fit(patches)
mae.save(work / "mae")
emb = mae.transform(patches)
np.save(work / "embeddings.npy", emb)
mae.save_reconstruction_grid(work / "mae_reconstruction.png", patches, n=8)
print(f"loss {mae.history_['loss'][0]:.4f} -> {mae.history_['loss'][-1]:.4f}; embeddings {emb.shape} "
      f"in {work / 'embeddings.npy'}; model in {work / 'mae'}")
