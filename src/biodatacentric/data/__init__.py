"""Data layer: lazy patches, readers, normalisation, annotation round trip, sample data."""

from .annotations import annotation_status, export_patches
from .augment import default_augment
from .dataset import PatchDataset
from .fingerprint import DataFingerprint, fingerprint
from .normalize import Normalization
from .patches import Patch, Patches, as_patches, read_annotations
from .readers import set_cache_bytes
from .sample import SAMPLE_CITATION, load_folder, load_sample, sample_folder
from .synthetic import make_vessels

__all__ = ["fingerprint", "DataFingerprint", "Patches", "Patch", "as_patches", "Normalization", "PatchDataset", "default_augment",
           "export_patches", "read_annotations", "annotation_status", "load_sample", "load_folder",
           "sample_folder", "make_vessels", "SAMPLE_CITATION", "set_cache_bytes"]
