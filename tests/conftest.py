import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest
import tifffile

os.environ.setdefault("BIODATACENTRIC_PROGRESS", "0")
# runs recorded by the tests (the demo's, the planner's) go to a throw-away file, never to the
# user's runs file (biodatacentric._runs.user_runs_file)
_RUNS_DIR = tempfile.mkdtemp(prefix="bdc-test-runs-")
os.environ["BIODATACENTRIC_RUNS"] = os.path.join(_RUNS_DIR, "runs.jsonl")
atexit.register(shutil.rmtree, _RUNS_DIR, True)

# scripts that tests/test_train.py launches with torchrun; importing one runs it (and writes its
# result to sys.argv[1]), so --doctest-modules must not collect them
collect_ignore = ["_dist"]

import matplotlib  # noqa: E402

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny test models run fastest on one thread (no OpenMP spin-up), and results do not
    depend on how many cores the CI machine has."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def stack_files(tmp_path):
    """Two small uint16 ZYX stacks with binary masks in images/ and masks/ folders."""
    from biodatacentric import make_vessels

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    paths = []
    for i, shape in enumerate([(3, 80, 96), (2, 64, 64)]):
        img, mask = make_vessels(shape, dtype="uint16", random_state=i)
        p = tmp_path / "images" / f"stack{i}.tif"
        tifffile.imwrite(p, img, photometric="minisblack", metadata={"axes": "ZYX"})
        tifffile.imwrite(tmp_path / "masks" / f"stack{i}.tif", mask, photometric="minisblack", metadata={"axes": "ZYX"})
        paths.append(p)
    return tmp_path, paths


def file_digest(path):
    import hashlib

    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def rng():
    return np.random.default_rng(0)
