"""Shared command-line arguments of the example scripts.

Every example runs from any folder: without ``--data`` it uses the bundled sample (an
OCT-angiography volume shipped inside the package), and ``--quick`` shrinks models and epochs
so that the script checks that it runs in about a minute (not what it achieves).
"""

import argparse
from pathlib import Path

import biodatacentric as bdc


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None,
                   help="folder with images/*.tif (and masks/*.tif) z-stacks (default: the bundled sample)")
    p.add_argument("--work", default="work", help="folder for models, annotations and figures")
    p.add_argument("--patch", type=int, default=None,
                   help="patch side in pixels (default 64 on the bundled sample, 128 on a folder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="tiny models and few epochs: checks that the script runs, not what it achieves")
    return p


def parse(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the command line and fill in the defaults that depend on the data."""
    args = p.parse_args()
    sample = args.data is None
    args.data = str(bdc.load_sample().folder) if sample else args.data
    if not Path(args.data, "images").is_dir():
        p.error(f"--data {args.data} has no images/ folder; pass a folder holding images/*.tif")
    if args.patch is None:
        args.patch = 64 if sample else 128
    args.images = f"{args.data}/images/*.tif"
    return args
