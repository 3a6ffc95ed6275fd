"""Bridges to the tools biologists already use; each needs an optional extra and imports it lazily.

* :mod:`biodatacentric.integrations.napari` -- a napari plugin (npe2 manifest ``napari.yaml``):
  open an annotation folder, save painted labels back as per-patch masks, walk a round's
  patches (``pip install 'biodatacentric[napari]'``);
* :mod:`biodatacentric.integrations.bioimageio` -- export a fitted segmenter as a bioimage.io
  model package and import one back (``pip install 'biodatacentric[bioimageio]'``).

OME-NGFF output lives beside the Zarr writer in :mod:`biodatacentric.ngff`; the faiss
kNN backend in :mod:`biodatacentric.assess.knn`. ``import biodatacentric`` imports none of them.
"""
