"""Cross-checks between taxonomies: unknown names, double mappings, label sets, coverage; extensions.

`validate_taxonomies(new, known)` checks the blocks in `new` against each other and against the already known
taxonomies (built-in data + files added earlier). It lists every problem; it never stops at the first.
`resolve_extensions(blocks, known)` turns `extends` blocks into whole taxonomies first.
"""

from __future__ import annotations

from collections import defaultdict

from mseg_semantic.errors import did_you_mean
from mseg_semantic.taxonomy.files import MAX_CLASSES, UNLABELED, Taxonomy, ValidationReport, palette


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
    """Warn about universal classes that no training taxonomy can supervise: named by no class at all, or only as
    an extra member of label sets (never a class's one-hot target, so nothing singles them out)."""
    report = ValidationReport()
    targets = {names[0] for tax in train_taxonomies for names in tax.universal if names}
    in_sets: dict[str, list[str]] = defaultdict(list)
    for tax in train_taxonomies:
        for cid, names in enumerate(tax.universal):
            for uname in names[1:]:
                in_sets[uname].append(f"{tax.name} {tax.class_names[cid]!r}")
    for uid, uname in enumerate(universal.class_names):
        if uname in targets:
            continue
        if uname in in_sets:
            shown = ", ".join(in_sets[uname][:4]) + (", ..." if len(in_sets[uname]) > 4 else "")
            report.warning(universal.source, _line(universal, uid), universal.name,
                           f"universal class {uid} {uname!r} is only an extra member of label sets ({shown}), never "
                           "a class's one-hot target: one-hot training never predicts it, and partial-label training "
                           "cannot tell it from the other members; give it its own class in some training dataset")
        else:
            report.warning(universal.source, _line(universal, uid), universal.name,
                           f"universal class {uid} {uname!r} is supplied by no training dataset "
                           f"({', '.join(t.name for t in train_taxonomies) or 'none'}); it never gets a label")
    return report


def _line(tax: Taxonomy, class_id: int | None) -> int | None:
    if class_id is not None and class_id < len(tax.lines):
        return tax.lines[class_id]
    own = [line for line in tax.lines if line is not None]  # an extension's inherited rows have no line here
    return own[0] - 1 if own else None


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
        for uname in sorted({u for u in targets if targets.count(u) > 1}):
            report.error(tax.source, line, tax.name,
                         f"source class {cid} {cls!r}: {uname!r} is listed twice in its label set; list each "
                         "universal class once (the first one is the one-hot target)")
        if UNLABELED in targets and len(targets) > 1:
            report.error(tax.source, line, tax.name,
                         f"source class {cid} {cls!r}: {UNLABELED!r} (ignore, 255) cannot be part of a label set "
                         f"({', '.join(targets)}); write it alone to ignore the class, or leave it out of the set")
        for uname in targets:
            if uname not in valid:
                report.error(tax.source, line, tax.name,
                             f"source class {cid} {cls!r}: unknown universal class {uname!r}"
                             f"{did_you_mean(uname, valid)} (not in taxonomy {uni.name!r})")
    _report_overlaps(tax, report)


def _report_overlaps(tax: Taxonomy, report: ValidationReport) -> None:
    """Information, never an error: label sets of one dataset may share classes (a `rider` pixel may turn out to be
    a `person`, which the dataset also labels); a pixel of either class may then be any shared class."""
    sets = [set(names) - {UNLABELED} for names in tax.universal]
    for cid, names in enumerate(tax.universal):
        if len(names) < 2:
            continue
        shared = [(other, sorted(sets[cid] & sets[other])) for other in range(len(sets))
                  if other != cid and sets[cid] & sets[other]]
        if not shared:
            continue
        shown = "; ".join(f"{other} {tax.class_names[other]!r}: {', '.join(common)}" for other, common in shared[:5])
        more = f"; and {len(shared) - 5} more" if len(shared) > 5 else ""
        report.info(tax.source, _line(tax, cid), tax.name,
                    f"the label set of class {cid} {tax.class_names[cid]!r} ({len(names)} classes) shares classes with "
                    f"{shown}{more}")


def resolve_extensions(blocks: list[Taxonomy], known: dict[str, Taxonomy]) -> tuple[list[Taxonomy], ValidationReport]:
    """Blocks with `extends BASE` become whole taxonomies (BASE known, or an earlier block); the others pass through.

    A universal extension appends its rows to BASE's classes; a train/test extension replaces BASE's mapping of the
    rows it lists. A block that cannot be resolved is reported and left out.
    """
    report = ValidationReport()
    available = dict(known)
    resolved: list[Taxonomy] = []
    for tax in blocks:
        if tax.extends:
            base = available.get(tax.extends)
            same_role = sorted(n for n, t in available.items() if t.role == tax.role)
            if base is None or base.role != tax.role:
                what = "is not known" if base is None else f"has role {base.role!r}"
                report.error(tax.source, _line(tax, None), tax.name,
                             f"extends {tax.extends!r}, which {what}; a {tax.role} taxonomy extends one of the same "
                             f"role{did_you_mean(tax.extends, same_role)}")
                continue
            tax = _extend_universal(tax, base, report) if tax.role == "universal" else _extend_mapping(tax, base, report)
            if tax is None:
                continue
        resolved.append(tax)
        available.setdefault(tax.name, tax)
    return resolved, report


def _extend_universal(tax: Taxonomy, base: Taxonomy, report: ValidationReport) -> Taxonomy | None:
    start = base.num_classes
    for k, (row_id, line) in enumerate(zip(tax.row_ids, tax.lines)):
        if row_id != start + k:
            report.error(tax.source, line, tax.name,
                         f"id {row_id}: the classes an extension of {base.name!r} adds continue after its {start} "
                         f"classes, so this row's id is {start + k}")
            return None
    names = list(base.class_names) + list(tax.class_names)
    if len(names) > MAX_CLASSES:
        report.error(tax.source, tax.lines[MAX_CLASSES - start], tax.name,
                     f"{start} classes of {base.name!r} and {len(tax.class_names)} more make {len(names)}; at most "
                     f"{MAX_CLASSES} fit in a uint8 label map with 255 = unlabeled")
        return None
    colors = palette(len(names))  # for the rows that give no colour
    if base.colors is not None:
        colors[:start] = base.colors
    for k, color in enumerate(tax.row_colors):
        if color is not None:
            colors[start + k] = color
    extra = {key: list(base.extra.get(key, [""] * start)) + list(tax.extra.get(key, [""] * len(tax.class_names)))
             for key in dict.fromkeys([*base.extra, *tax.extra])}
    return Taxonomy(name=tax.name, role="universal", class_names=names, colors=colors, extra=extra,
                    description=tax.description or f"{base.name} and {len(tax.class_names)} more classes",
                    source=tax.source, lines=[None] * start + list(tax.lines), row_ids=list(range(len(names))))


def _extend_mapping(tax: Taxonomy, base: Taxonomy, report: ValidationReport) -> Taxonomy | None:
    universal = list(base.universal)
    lines: list[int | None] = [None] * base.num_classes
    colors = None if base.colors is None else base.colors.copy()
    ok = True
    for k, row_id in enumerate(tax.row_ids):
        line, cls = tax.lines[k], tax.class_names[k]
        if row_id >= base.num_classes:
            report.error(tax.source, line, tax.name, f"id {row_id}: {base.name!r} has classes 0..{base.num_classes - 1}")
            ok = False
        elif cls != base.class_names[row_id]:
            report.error(tax.source, line, tax.name,
                         f"id {row_id} is {base.class_names[row_id]!r} in {base.name!r}, not {cls!r}; an extension's "
                         "rows repeat the base's id and name")
            ok = False
        else:
            universal[row_id] = tax.universal[k]
            lines[row_id] = line
            color = tax.row_colors[k] if tax.row_colors else None
            if color is not None:
                colors = palette(base.num_classes) if colors is None else colors
                colors[row_id] = color
    if not ok:
        return None
    return Taxonomy(name=tax.name, role=tax.role, class_names=list(base.class_names), colors=colors, universal=universal,
                    maps_to=tax.maps_to, description=tax.description or f"{base.name}, with changed mappings",
                    source=tax.source, lines=lines, row_ids=list(range(base.num_classes)))


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
