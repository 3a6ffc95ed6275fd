"""Tests of the optional extras (ome-zarr, napari, bioimageio, faiss): ``make test-extras``.

Each module skips itself when its extra is not installed, so the core ``make test`` passes
without them.
"""
