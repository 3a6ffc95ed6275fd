"""Launched by tests/test_train.py under torchrun (2 ranks) or plainly (1 process)."""

import json
import sys

import torch

from biodatacentric._train import TrainSettings, train
from biodatacentric.nn.vit import ViTEncoder

out = sys.argv[1]
torch.manual_seed(0)
X = torch.randn(32, 1, 16, 16, generator=torch.Generator().manual_seed(1))
Y = torch.randn(32, 16, generator=torch.Generator().manual_seed(2))
model = ViTEncoder(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2)


def step(m, idx, gen):
    return ((m.pooled(X[idx]) - Y[idx]) ** 2).mean()


hist = train(model, step, 32, TrainSettings(max_epochs=4, batch_size=8, lr=3e-3, seed=5, progress=False))
import torch.distributed as dist

if not dist.is_initialized() or dist.get_rank() == 0:
    json.dump({"loss": hist["loss"], "w": model.norm.weight.tolist()}, open(out, "w"))
