"""Cross-checks between taxonomies: unknown names, double mappings, coverage.

`validate_taxonomies(new, known)` checks the blocks in `new` against each other and against the already known
taxonomies (built-in data + files added earlier). It lists every problem; it never stops at the first.
"""

from __future__ import annotations

from collections import defaultdict

from mseg_semantic.errors import did_you_mean
from mseg_semantic.taxonomy.files import UNLABELED, Taxonomy, ValidationReport


def validate_taxonomies(new: list[Taxonomy], known: dict[str, Taxonomy] | None = None,
                        check_coverage: bool = True) -> ValidationReport:
    known = known or {}
    report = ValidationReport()
    universals = {name: tax for name, tax in known.items() if tax.role == "universal"}
    seen: dict[str, Taxonomy] = {}
    for tax in new:
        if tax.name in known and known[tax.name] is not tax:
            where = "built in" if "taxonomy/data" in known[tax.name].source.replace("\\", "/") else \
                f"defined in {known[tax.name].source}"
            report.error(tax.source, _line(tax, None), tax.name,
                         f"taxonomy {tax.name!r} already exists ({where}); give yours another name")
        elif tax.name in seen:
            report.error(tax.source, _line(tax, None), tax.name, f"taxonomy {tax.name!r} is defined twice "
                         f"(also in {seen[tax.name].source}:{_line(seen[tax.name], None)})")
        seen[tax.name] = tax
        if tax.role == "universal":
            universals[tax.name] = tax

    for tax in new:
        _check_class_names(tax, report)
        if tax.role == "universal":
            _check_universal(tax, report)
        elif tax.role in ("train", "test"):
            uni = universals.get(tax.maps_to)
            if uni is None:
                report.error(tax.source, _line(tax, None), tax.name,
                             f"maps_to {tax.maps_to!r} is not a universal taxonomy{did_you_mean(tax.maps_to, universals)}; "
                             f"known: {', '.join(sorted(universals)) or 'none'}")
                continue
            if tax.role == "train":
                _check_train(tax, uni, report)
            else:
                _check_test(tax, uni, report)

    if check_coverage:
        for uni in (t for t in new if t.role == "universal"):
            trains = [t for t in list(known.values()) + new if t.role == "train" and t.maps_to == uni.name]
            report.extend(coverage_report(uni, trains))
    return report


def coverage_report(universal: Taxonomy, train_taxonomies: list[Taxonomy]) -> ValidationReport:
    """Warn about universal classes that none of the training taxonomies supplies (never trained)."""
    report = ValidationReport()
    supplied = {u for tax in train_taxonomies for names in tax.universal for u in names}
    for uid, uname in enumerate(universal.class_names):
        if uname not in supplied:
            report.warning(universal.source, _line(universal, uid), universal.name,
                           f"universal class {uid} {uname!r} is supplied by no training dataset "
                           f"({', '.join(t.name for t in train_taxonomies) or 'none'}); it never gets a label")
    return report


def _line(tax: Taxonomy, class_id: int | None) -> int | None:
    if class_id is not None and class_id < len(tax.lines):
        return tax.lines[class_id]
    return tax.lines[0] - 1 if tax.lines else None


def _check_class_names(tax: Taxonomy, report: ValidationReport) -> None:
    ids_by_name: dict[str, list[int]] = defaultdict(list)
    for cid, cls in enumerate(tax.class_names):
        ids_by_name[cls].append(cid)
    for cls, cids in ids_by_name.items():
        if len(cids) < 2:
            continue
        shown = ", ".join(f"{c} (line {_line(tax, c)})" for c in cids[:6]) + (", ..." if len(cids) > 6 else "")
        message = (f"class name {cls!r} is used by {len(cids)} ids: {shown}; names must be unique so that a name "
                   "means one label id")
        if tax.role == "raw":  # raw label spaces exist as published (coco-panoptic-201 has many 'unlabeled' ids)
            report.warning(tax.source, _line(tax, cids[1]), tax.name, message)
        else:
            report.error(tax.source, _line(tax, cids[1]), tax.name, message)


def _check_universal(tax: Taxonomy, report: ValidationReport) -> None:
    for uid, uname in enumerate(tax.class_names):
        if uname == UNLABELED:
            report.error(tax.source, _line(tax, uid), tax.name,
                         f"{UNLABELED!r} is reserved for id 255 and cannot be universal class {uid}")
        if "," in uname:
            report.error(tax.source, _line(tax, uid), tax.name,
                         f"universal class name {uname!r} contains a comma (commas separate names in mapping cells)")


def _check_train(tax: Taxonomy, uni: Taxonomy, report: ValidationReport) -> None:
    valid = set(uni.class_names) | {UNLABELED}
    for cid, targets in enumerate(tax.universal):
        cls = tax.class_names[cid]
        line = _line(tax, cid)
        if not targets:
            report.error(tax.source, line, tax.name,
                         f"source class {cid} {cls!r} has no universal class; write one of {uni.name}'s classes, "
                         f"or {UNLABELED!r} to ignore it (255)")
            continue
        if len(targets) > 1:
            report.error(tax.source, line, tax.name,
                         f"source class {cid} {cls!r} is mapped twice ({', '.join(map(repr, targets))}); "
                         "a source class maps to exactly one universal class (merge them in the universal "
                         "taxonomy, or relabel the data)")
        for uname in targets:
            if uname not in valid:
                report.error(tax.source, line, tax.name,
                             f"source class {cid} {cls!r}: unknown universal class {uname!r}"
                             f"{did_you_mean(uname, valid)} (not in taxonomy {uni.name!r})")


def _check_test(tax: Taxonomy, uni: Taxonomy, report: ValidationReport) -> None:
    valid = set(uni.class_names)
    claimed: dict[str, list[int]] = defaultdict(list)
    for cid, sources in enumerate(tax.universal):
        cls = tax.class_names[cid]
        line = _line(tax, cid)
        if not sources:
            report.warning(tax.source, line, tax.name,
                           f"test class {cid} {cls!r}: no universal class maps to it, so its probability is always 0")
        for uname in sources:
            if uname == UNLABELED:
                report.error(tax.source, line, tax.name,
                             f"test class {cid} {cls!r}: {UNLABELED!r} (255) is not a model output and cannot feed "
                             "a test class")
            elif uname not in valid:
                report.error(tax.source, line, tax.name,
                             f"test class {cid} {cls!r}: unknown universal class {uname!r}"
                             f"{did_you_mean(uname, valid)} (not in taxonomy {uni.name!r})")
            else:
                claimed[uname].append(cid)
    for uname, cids in claimed.items():
        if len(cids) > 1:
            names = ", ".join(f"{c} {tax.class_names[c]!r} (line {_line(tax, c)})" for c in cids)
            report.error(tax.source, _line(tax, cids[-1]), tax.name,
                         f"universal class {uname!r} is mapped twice, to test classes {names}; its probability "
                         "would be counted twice")
