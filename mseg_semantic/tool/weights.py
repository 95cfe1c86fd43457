"""mseg-weights: list, download, verify and locate released weights.

    mseg-weights list
    mseg-weights download mseg-3m-1080p          # into $MSEG_CACHE (default ~/.cache/mseg_semantic)/weights
    mseg-weights download mseg-3m-1080p --force  # fetch again; the cached file is replaced once the new one is whole
    mseg-weights download hrnet_w48_imagenet --url https://mirror/hrnetv2_w48_imagenet_pretrained.pth
    mseg-weights verify mseg-3m-1080p            # SHA-256 against the one recorded at download
    mseg-weights verify mseg-3m-1080p --rerecord # trust the file on disk (you replaced it on purpose)
    mseg-weights path mseg-3m-1080p              # print the cached file's path (exit 1 if not downloaded)

Exit codes: 0 ok; 1 a download failed (also: the server sent a file that is not a weights-only checkpoint), a file
is missing or differs from its digest; 2 bad input (an unknown name, a file placed by hand that is not a
checkpoint or holds pickled objects, a --cache-dir that is a file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mseg_semantic.errors import EXIT_CHECKS_FAILED, UserError
from mseg_semantic.model.weights import (
    WEIGHTS,
    cache_dir,
    cached_status,
    download_weights,
    verify_weights,
    weights_path,
)
from mseg_semantic.tool.cli import add_debug_flag, run_tool


def _list(args: argparse.Namespace) -> int:
    print(f"cache: {cache_dir(args.cache_dir)}")
    header = f"{'name':<28} {'model':<10} {'classes':>7}  {'taxonomy':<25} {'zero-shot hmean':>15}  status"
    print(header)
    print("-" * len(header))
    for entry in WEIGHTS.values():
        classes = "-" if entry.num_classes is None else str(entry.num_classes)
        hmean = "-" if entry.harmonic_mean is None else f"{entry.harmonic_mean:.1f}"
        status = cached_status(entry, args.cache_dir)
        if status == "missing" and not (entry.gdrive_id or entry.url):
            status = "missing (manual download)"
        print(f"{entry.name:<28} {entry.model:<10} {classes:>7}  {entry.taxonomy:<25} {hmean:>15}  {status}")
    return 0


def _download(args: argparse.Namespace) -> int:
    path = download_weights(args.name, args.cache_dir, force=args.force, url=args.url, quiet=args.quiet)
    print(path)
    return 0


def _verify(args: argparse.Namespace) -> int:
    digest = verify_weights(args.name, args.cache_dir, rerecord=args.rerecord)
    print(f"{weights_path(args.name, args.cache_dir)}: OK sha256={digest}")
    return 0


def _path(args: argparse.Namespace) -> int:
    path = weights_path(args.name, args.cache_dir)
    print(path)
    if not path.is_file():
        print(f"{args.name}: not downloaded yet; `mseg-weights download {args.name}`", file=sys.stderr)
        return EXIT_CHECKS_FAILED
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mseg-weights", description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", default=None, help="cache root (default: $MSEG_CACHE or ~/.cache/mseg_semantic)")
    add_debug_flag(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="released weights and their cache status").set_defaults(run=_list)
    download = sub.add_parser("download", help="download into the cache (resumes; verifies an existing file)")
    download.add_argument("name")
    download.add_argument("--force", action="store_true",
                          help="download again from scratch; the cached file is replaced once the new one is complete")
    download.add_argument("--url", default=None, help="a direct HTTP(S) link to use instead of the registry's source")
    download.add_argument("--quiet", action="store_true", help="no progress output")
    download.set_defaults(run=_download)
    verify = sub.add_parser("verify", help="check the cached file's SHA-256 (records it the first time)")
    verify.add_argument("name")
    verify.add_argument("--rerecord", action="store_true",
                        help="forget the recorded SHA-256 and record the file on disk (after replacing it on purpose)")
    verify.set_defaults(run=_verify)
    path = sub.add_parser("path", help="print the cached file's path")
    path.add_argument("name")
    path.set_defaults(run=_path)
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.cache_dir and Path(args.cache_dir).expanduser().exists() and not Path(args.cache_dir).expanduser().is_dir():
        raise UserError(f"--cache-dir {args.cache_dir}: is a file, not a directory; give a directory (it is created "
                        f"when missing), or leave the option out for $MSEG_CACHE or ~/.cache/mseg_semantic")
    return args.run(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool("mseg-weights", lambda: _run(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
