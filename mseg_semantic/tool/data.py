"""mseg-data: check a dataset on disk, bring your own (colour labels -> ids, split lists), write the demo world.

  mseg-data verify --dataset cityscapes-19 --split train [--data-root DIR] [--workers N] [--config FILE]
  mseg-data convert COLOUR_DIR OUT_DIR --palette palette.tsv
  mseg-data convert COLOUR_DIR OUT_DIR --from-taxonomy mydata [--taxonomy-file mydata.tsv] [--unlabeled-color "0 0 0"]
  mseg-data lists --root DATASET_DIR --images images --labels labels [--val-fraction 0.1] [--out DIR]
  mseg-data demo --out DIR [--seed 0] [--force]

Exit codes: 0 done; 1 problems found (verify: bad files; convert: files with colours not in the palette, listed
with their pixel counts and not written; lists: label PNGs without an image); 2 bad input (one line).
"""

from __future__ import annotations

import argparse
import sys

from mseg_semantic.errors import EXIT_CHECKS_FAILED, UserError
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
    convert = commands.add_parser("convert", help="colour-coded label images -> label id PNGs (exact palette lookup)")
    convert.add_argument("source", help="a colour-coded label image, or a folder of them (sub-folders kept)")
    convert.add_argument("out", help="folder the id PNGs go to (same relative paths, .png)")
    palette = convert.add_mutually_exclusive_group(required=True)
    palette.add_argument("--palette", help="TSV with id, name, color columns ('R G B'); a taxonomy file with colours works too; id 255 = unlabeled")
    palette.add_argument("--from-taxonomy", metavar="NAME", help="the colours of a taxonomy's file (built in, or one of --taxonomy-file)")
    convert.add_argument("--taxonomy-file", action="append", default=[], help="a user taxonomy file to load (repeatable)")
    convert.add_argument("--unlabeled-color", action="append", default=[], metavar="'R G B'",
                         help="with --from-taxonomy: a colour that means unlabeled (id 255), e.g. '0 0 0' (repeatable)")
    lists = commands.add_parser("lists", help="write train.txt / val.txt pairing images with label PNGs of the same name")
    lists.add_argument("--root", required=True, help="the dataset's folder: list paths are relative to it")
    lists.add_argument("--images", default="images", help="image folder under --root (default images)")
    lists.add_argument("--labels", default="labels", help="label id PNG folder under --root (default labels)")
    lists.add_argument("--out", help="folder for train.txt and val.txt (default ROOT/lists)")
    lists.add_argument("--val-fraction", type=float, default=0.1, help="share of the pairs in val.txt (default 0.1)")
    lists.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
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

    if args.command == "convert":
        return _convert(args)
    if args.command == "lists":
        return _lists(args)

    from mseg_semantic.config import load_config
    from mseg_semantic.data.verify import verify_split
    from mseg_semantic.taxonomy import Catalog

    if args.workers < 0:
        raise UserError(f"--workers {args.workers}: must be 0 (check in this process) or a number of worker processes")
    cfg = load_config(args.config, [f"data_root={args.data_root}"] if args.data_root else [])
    report = verify_split(Catalog.from_config(cfg), args.dataset, args.split, workers=args.workers)
    print(report.format())
    return 0 if report.ok else 1


def _convert(args: argparse.Namespace) -> int:
    from mseg_semantic.data.convert import convert_labels, parse_color, read_palette, taxonomy_palette
    from mseg_semantic.taxonomy import Catalog

    if args.palette:
        if args.unlabeled_color:
            raise UserError("--unlabeled-color goes with --from-taxonomy; in a palette file give the colour the id 255")
        palette = read_palette(args.palette)
    else:
        colors = []
        for text in args.unlabeled_color:
            color = parse_color(text)
            if color is None:
                raise UserError(f"--unlabeled-color {text!r}: expected 'R G B' (0..255 each), 'R,G,B' or '#rrggbb'")
            colors.append(color)
        palette = taxonomy_palette(Catalog(taxonomy_files=args.taxonomy_file), args.from_taxonomy, colors)
    report = convert_labels(args.source, args.out, palette)
    print(report.format())
    return 0 if report.ok else EXIT_CHECKS_FAILED


def _lists(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mseg_semantic.data.lists import write_split_lists

    written = write_split_lists(args.root, args.images, args.labels, args.out or Path(args.root) / "lists", args.val_fraction, args.seed)
    for split, path in written.files.items():
        print(f"{split}: {written.counts[split]} pairs -> {path}")
    if written.images_without_label:
        print(f"{len(written.images_without_label)} image(s) without a label PNG left out, e.g. {written.images_without_label[0]}")
    for label in written.labels_without_image:
        print(f"problem: {label}: a label PNG without an image of the same name under {Path(args.root) / args.images}")
    return EXIT_CHECKS_FAILED if written.labels_without_image else 0


if __name__ == "__main__":
    sys.exit(main())
