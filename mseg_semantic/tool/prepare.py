"""mseg-prepare: download, extract, remap, relabel and verify MSeg's 13 datasets.

    mseg-prepare list [--root DIR]
    mseg-prepare download DATASET... --root DIR [--credentials FILE] [--include-optional] [--recheck]
    mseg-prepare extract  DATASET... --root DIR [--delete-archives] [--force]
    mseg-prepare remap    DATASET... --root DIR [--workers N] [--unknown error|ignore] [--force]
    mseg-prepare relabel  DATASET... --root DIR [--workers N] [--records DIR] [--strict]
    mseg-prepare verify   DATASET... --root DIR [--workers N] [--no-label-check]
    mseg-prepare all --datasets a,b|train|test|all --root DIR [--dry-run] [--force] [...]

DATASET: a name from `mseg-prepare list`, comma lists, 'train', 'test' or 'all'. --root defaults to
$MSEG_DATA_ROOT. Exit codes: 0 ok, 1 a dataset failed or needs a manual step, 2 usage or input error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from mseg_semantic.data.catalog import DATA_ROOT_ENV, resolve_data_root
from mseg_semantic.prepare import pipeline
from mseg_semantic.prepare.specs import SPECS, get_spec, parse_dataset_list

log = logging.getLogger("mseg_semantic.prepare")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mseg-prepare", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, datasets=True):
        if datasets:
            p.add_argument("datasets", nargs="+", help="dataset names (see `mseg-prepare list`), 'train', 'test' or 'all'")
        p.add_argument("--root", help="data root (default: $MSEG_DATA_ROOT)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")

    def workers(p):
        p.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")

    p = sub.add_parser("list", help="the datasets, where they come from, and their status under --root")
    common(p, datasets=False)
    p = sub.add_parser("download", help="fetch the archives (resumable, SHA-256 recorded and checked)")
    common(p)
    p.add_argument("--credentials", help="credentials YAML (default ~/.config/mseg_semantic/credentials.yaml)")
    p.add_argument("--include-optional", action="store_true", help="also fetch optional archives")
    p.add_argument("--recheck", action="store_true", help="re-hash archives already on disk")
    p = sub.add_parser("extract", help="unpack the archives safely (idempotent)")
    common(p)
    p.add_argument("--delete-archives", action="store_true", help="delete each archive once extracted")
    p.add_argument("--force", action="store_true", help="extract again even if a marker says done")
    p = sub.add_parser("remap", help="raw labels -> semseg taxonomy PNGs + split lists")
    common(p)
    workers(p)
    p.add_argument("--unknown", choices=("error", "ignore"), default="error",
                   help="raw ids the taxonomy lacks: error (report, file not written) or ignore (report, write 255; "
                        "bdd/voc2012 labels are only checked, never rewritten)")
    p.add_argument("--force", action="store_true", help="rewrite labels that already exist")
    p = sub.add_parser("relabel", help="apply MSeg's relabeling records -> -relabeled label sets (training datasets)")
    common(p)
    workers(p)
    p.add_argument("--records", help="records directory (mseg-api layout); default: the records shipped with the package")
    p.add_argument("--strict", action="store_true", help="fail when any record cannot be applied")
    p = sub.add_parser("verify", help="lists resolve, labels in range, split sizes as expected")
    common(p)
    workers(p)
    p.add_argument("--no-label-check", action="store_true", help="only check lists, files and counts")
    p = sub.add_parser("all", help="download -> extract -> remap -> relabel -> verify, resumable")
    common(p, datasets=False)
    workers(p)
    p.add_argument("--datasets", required=True, help="comma-separated names, 'train', 'test' or 'all'")
    p.add_argument("--credentials", help="credentials YAML (default ~/.config/mseg_semantic/credentials.yaml)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--force", action="store_true", help="ignore the step markers and redo everything")
    p.add_argument("--unknown", choices=("error", "ignore"), default="error")
    p.add_argument("--no-label-check", action="store_true")
    p.add_argument("--include-optional", action="store_true")
    p.add_argument("--delete-archives", action="store_true")
    p.add_argument("--records", help="relabeling records directory (mseg-api layout)")
    return parser


def _setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def _list(root: Path | None) -> int:
    print(f"{'dataset':15s} {'role':5s} {'registration':14s} {'taxonomy':20s} {'splits':28s} {'disk':>6s}  status")
    for key, spec in SPECS.items():
        splits = " ".join(f"{s}={n}" for s, n in spec.splits.items())
        status = ""
        if root is not None:
            done = [step for step in pipeline.steps_for(spec) if pipeline.is_done(root, key, step)]
            status = done[-1] if done else "-"
        print(f"{key:15s} {spec.role:5s} {spec.registration:14s} {spec.taxonomy:20s} {splits:28s} {spec.disk_gb:5.1f}G  {status}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from mseg_semantic.prepare.credentials import CredentialsError
    from mseg_semantic.prepare.download import DownloadError, ManualStepRequired

    parser = _parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "quiet", False))
    progress = not args.no_progress and sys.stderr.isatty()
    try:
        if args.command == "list":
            return _list(resolve_data_root(args.root) if (args.root or os.environ.get(DATA_ROOT_ENV)) else None)
        root = resolve_data_root(args.root)
        options = pipeline.Options(
            workers=getattr(args, "workers", None), credentials_file=getattr(args, "credentials", None),
            progress=progress, unknown=getattr(args, "unknown", "error"),
            check_labels=not getattr(args, "no_label_check", False),
            include_optional=getattr(args, "include_optional", False),
            delete_archives=getattr(args, "delete_archives", False), records_dir=getattr(args, "records", None))
        if args.command == "all":
            keys = parse_dataset_list(args.datasets)
            if args.dry_run:
                print(f"plan under {root} (markers in {root / pipeline.STATE_DIR / 'done'}):")
                print("\n".join(pipeline.describe_plan(keys, root, force=args.force)))
                return 0
            status = pipeline.run_all(keys, root, options, force=args.force)
            width = max(len(k) for k in status)
            print("\n".join(f"{k:{width}s}  {v}" for k, v in status.items()))
            return 0 if all(v == "done" for v in status.values()) else 1
        keys = parse_dataset_list(args.datasets)
        failed = False
        for key in keys:
            if args.command == "extract":
                from mseg_semantic.prepare.extract import extract_dataset

                extract_dataset(get_spec(key), root, progress=progress, force=args.force, delete_archives=args.delete_archives)
            elif args.command == "remap":
                from mseg_semantic.prepare.remap import remap_dataset

                remap_dataset(key, root, workers=args.workers, unknown=args.unknown, force=args.force, progress=progress)
            elif args.command == "relabel":
                from mseg_semantic.prepare.relabel import relabel_dataset

                relabel_dataset(key, root, workers=args.workers, records_dir=args.records, strict=args.strict, progress=progress)
            elif args.command == "verify":
                from mseg_semantic.prepare.verify import verify_dataset

                result = verify_dataset(key, root, check_labels=not args.no_label_check, workers=args.workers, progress=progress)
                for taxonomy, counts in result.counts.items():
                    print(f"{key:15s} {taxonomy:30s} " + " ".join(f"{s}={n}" for s, n in counts.items()))
                for problem in result.problems:
                    print(f"  problem: {problem}")
                failed = failed or not result.ok
            elif args.command == "download":
                from mseg_semantic.prepare.download import download_dataset

                try:
                    results = download_dataset(get_spec(key), root, credentials_file=args.credentials, progress=progress,
                                               include_optional=args.include_optional, recheck=args.recheck)
                except ManualStepRequired as exc:  # the other datasets still download
                    print(str(exc), file=sys.stderr)
                    failed = True
                    continue
                for result in results:
                    print(f"{key:15s} {result.archive:45s} {result.status}" + (f"  sha256 {result.sha256}" if result.sha256 else ""))
        return 1 if failed else 0
    except ManualStepRequired as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except (ValueError, RuntimeError, CredentialsError, DownloadError, OSError) as exc:
        print(f"mseg-prepare: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
