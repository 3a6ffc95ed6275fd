"""Command line: ``python -m biodatacentric demo [--data FOLDER] [--out DIR]``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="biodatacentric", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the data-centric loop on the bundled sample or a folder")
    demo.add_argument("--data", default=None,
                      help="folder with images/*.tif and masks/*.tif z-stacks (default: the bundled sample)")
    demo.add_argument("--out", default="demo_output", help="folder for the report and figures")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--patch-size", type=int, default=None, help="patch side in pixels")
    demo.add_argument("--quick", action="store_true", help="tiny models and few epochs (for tests)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        run_demo(data=args.data, out=args.out, seed=args.seed, patch_size=args.patch_size, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
