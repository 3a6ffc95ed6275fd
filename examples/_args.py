"""Shared command-line arguments of the example scripts."""

import argparse
from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "vesselnn_2pm"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", default=str(DEFAULT),
                   help="folder with images/*.tif (and masks/*.tif) z-stacks (default: ../shared/data/vesselnn_2pm)")
    p.add_argument("--work", default="work", help="folder for models, annotations and figures")
    p.add_argument("--patch", type=int, default=128, help="patch side in pixels")
    p.add_argument("--seed", type=int, default=0)
    return p
