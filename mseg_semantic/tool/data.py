"""mseg-data: check a dataset on disk, or write the synthetic demo world.

  mseg-data verify --dataset cityscapes-19 --split train [--data-root DIR] [--workers N] [--config FILE]
  mseg-data demo --out DIR [--seed 0] [--force]
"""

from __future__ import annotations

import argparse
import sys

from mseg_semantic.errors import UserError
from mseg_semantic.taxonomy.catalog import DATA_ROOT_ENV
from mseg_semantic.tool.cli import add_debug_flag, run_tool


def _parser() -> argparse.ArgumentParser:
    parser = add_debug_flag(argparse.ArgumentParser(prog="mseg-data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="check that every listed file exists, decodes and has valid label ids")
    verify.add_argument("--dataset", required=True, help="taxonomy name of the dataset, e.g. cityscapes-19")
    verify.add_argument("--split", default="train", help="split list to check (default train)")
    verify.add_argument("--data-root", help=f"common data root (default: the config's DATA.data_root, then ${DATA_ROOT_ENV})")
    verify.add_argument("--config", help="training config whose DATA section gives data_root, dataset_roots, dataset_lists, taxonomy_files")
    verify.add_argument("--workers", type=int, default=0, help="worker processes (default 0: this process)")
    demo = commands.add_parser("demo", help="write the SYNTHETIC demo world (3 training datasets + camvid-11 held out)")
    demo.add_argument("--out", required=True, help="directory to write (use it as data_root)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--force", action="store_true", help="regenerate even when a complete world is there")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_tool(f"mseg-data {args.command}", lambda: _run(args), args.debug)


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from mseg_semantic.data.demo_world import generate

        world = generate(args.out, seed=args.seed, force=args.force)
        state = "written" if world.generated else "already complete, nothing to do"
        print(f"synthetic demo world {state}: {world.root} (train: {', '.join(world.train_datasets)}; held out: {', '.join(world.test_datasets)})")
        print(f"use it with data_root={world.root} (or {DATA_ROOT_ENV}={world.root})")
        return 0

    from mseg_semantic.config import load_config
    from mseg_semantic.data.verify import verify_split
    from mseg_semantic.taxonomy import Catalog

    if args.workers < 0:
        raise UserError(f"--workers {args.workers}: must be 0 (check in this process) or a number of worker processes")
    cfg = load_config(args.config, [f"data_root={args.data_root}"] if args.data_root else [])
    report = verify_split(Catalog.from_config(cfg), args.dataset, args.split, workers=args.workers)
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
