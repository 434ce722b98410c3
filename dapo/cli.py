"""The `dapo` command: thin wrappers that parse a config and call the library."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dapo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run RL training (DAPO by default)")
    train.add_argument("--preset", default="cpu_dapo", help="named preset from dapo.config.PRESETS")
    train.add_argument("--config", default=None, help="YAML file applied on top of the preset")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. algo.clip_eps_high=0.28")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        print("dapo train: the trainer is not built yet (see the open issues).")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
