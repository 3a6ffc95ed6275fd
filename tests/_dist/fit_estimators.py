"""Launched by tests/test_train.py: fit a tiny MAE and segmenter (1 process or under torchrun)."""

import json
import sys

import numpy as np
import torch

from biodatacentric import MAEPretrainer, Patches, TransUNetSegmenter, make_vessels

out = sys.argv[1]
torch.set_num_threads(1)
imgs, masks = zip(*[make_vessels((32, 32), random_state=i) for i in range(16)])
patches = Patches.from_arrays(np.stack(imgs), axes="ZYX", masks=np.stack(masks), normalize="none")
mae = MAEPretrainer(preset="tiny", img_size=32, max_epochs=3, batch_size=8, augment=False, n_components=None,
                    precision="fp32", device="cpu", random_state=0, progress=False).fit(patches)
seg = TransUNetSegmenter(preset="tiny", img_size=32, max_epochs=3, batch_size=8, augment=False,
                         precision="fp32", device="cpu", random_state=0, progress=False).fit(patches)
import torch.distributed as dist

if not dist.is_initialized() or dist.get_rank() == 0:
    json.dump({"mae": mae.history_["loss"], "seg": seg.history_["loss"]}, open(out, "w"))
