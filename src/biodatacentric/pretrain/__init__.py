"""Stage 1: masked-autoencoder pretraining (:class:`MAEPretrainer`) and patch embeddings."""

from .mae import MAEPretrainer, load_mae_checkpoint
from .viz import reconstruction_grid, save_reconstruction_grid

__all__ = ["MAEPretrainer", "load_mae_checkpoint", "save_reconstruction_grid", "reconstruction_grid"]
