"""mseg-weights: list, download, verify and locate released weights.

    mseg-weights list
    mseg-weights download mseg-3m-1080p          # into $MSEG_CACHE (default ~/.cache/mseg_semantic)/weights
    mseg-weights download hrnet_w48_imagenet --url https://mirror/hrnetv2_w48_imagenet_pretrained.pth
    mseg-weights verify mseg-3m-1080p            # SHA-256 against the one recorded at download
    mseg-weights path mseg-3m-1080p              # print the cached file's path (exit 1 if not downloaded)
"""

from __future__ import annotations

import argparse
import sys

from mseg_semantic.model.weights import (
    WEIGHTS,
    WeightsError,
    cache_dir,
    cached_status,
    download_weights,
    verify_weights,
    weights_path,
)


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
    digest = verify_weights(args.name, args.cache_dir)
    print(f"{weights_path(args.name, args.cache_dir)}: OK sha256={digest}")
    return 0


def _path(args: argparse.Namespace) -> int:
    path = weights_path(args.name, args.cache_dir)
    print(path)
    if not path.is_file():
        print(f"{args.name}: not downloaded yet; `mseg-weights download {args.name}`", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mseg-weights", description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", default=None, help="cache root (default: $MSEG_CACHE or ~/.cache/mseg_semantic)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="released weights and their cache status").set_defaults(run=_list)
    download = sub.add_parser("download", help="download into the cache (resumes; verifies an existing file)")
    download.add_argument("name")
    download.add_argument("--force", action="store_true", help="delete the cached file and download again")
    download.add_argument("--url", default=None, help="a direct HTTP(S) link to use instead of the registry's source")
    download.add_argument("--quiet", action="store_true", help="no progress output")
    download.set_defaults(run=_download)
    verify = sub.add_parser("verify", help="check the cached file's SHA-256 (records it the first time)")
    verify.add_argument("name")
    verify.set_defaults(run=_verify)
    path = sub.add_parser("path", help="print the cached file's path")
    path.add_argument("name")
    path.set_defaults(run=_path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except WeightsError as error:
        print(f"mseg-weights: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
