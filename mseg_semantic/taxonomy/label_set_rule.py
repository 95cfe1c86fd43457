"""Label sets of the unrelabeled training taxonomies, decided by a rule from MSeg's relabeling records.

MSeg relabeled some classes of its training datasets segment by segment. A record moves the segments of one list from
a class (named in the dataset's relabeled taxonomy: the *record class*) to a class of the relabeled taxonomy (the
*member*; ``unlabeled`` = the segment was dropped). The records mix two things: real splits of a class the dataset
does not distinguish (Cityscapes' ``rider`` -> bicyclist / motorcyclist / rider_other) and corrections of a few
mislabelled segments (15 of Cityscapes' 1,805 relabeled riders are persons, a class Cityscapes labels itself). A set
that holds a class its own dataset labels lets the model satisfy the set with that class, so corrections must stay
out of the sets. The rule (docs/taxonomy.md#how-the-sets-are-decided), for each record class and member:

1. the one-hot target (MSeg's mapping of the class) is kept, first;
2. only train-split records count: a member seen only in val records is dropped;
3. a hand exception (:data:`HAND_EXCEPTIONS`) decides where the rule is wrong;
4. a **subclass** is kept: a member the dataset has no class of its own for (below) whose parent category in the
   universal taxonomy is the one-hot target's;
5. a member the dataset labels with a class of its own is dropped below :data:`LABELLED_MIN_SHARE` of the record
   class's segments, kept at or above it (the dataset's own labels really are ambiguous there);
6. any other member is dropped when it is rare, below :data:`RARE_MAX_SHARE` **and** below
   :data:`RARE_MAX_SEGMENTS` segments; kept otherwise.

The dataset's *own class for a member*: the class whose one-hot target the member is; failing that, the class whose
records move the most train segments to the member (bdd's ``rider`` for bicyclist: 210 segments, against 3 from
``person``), when that is another class than the one decided. Shares are of the record class's train segments that
the records move to a class (moves to ``unlabeled`` are not counted). The rule's outcome for every
(taxonomy, class, member) is shipped as an evidence table (:data:`EVIDENCE_PATH`) that the tools read.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from mseg_semantic.atomic import atomic_write_text
from mseg_semantic.taxonomy.files import UNLABELED, Taxonomy

EVIDENCE_PATH = Path(__file__).resolve().parent / "data" / "label_sets" / "evidence.tsv"
EVIDENCE_COLUMNS = ("taxonomy", "class", "record_class", "member", "train_segments", "val_segments", "share",
                    "decision", "reason")

# The data leave a wide gap between corrections of a class the dataset labels itself (largest shares: bdd rider ->
# person 5.5%, coco tent -> building 5.2%) and real ambiguity of the dataset's own labels (smallest: coco bridge ->
# pier_wharf 11%, then ade20k chest of drawers -> cabinet 37%); 10% sits in that gap.
LABELLED_MIN_SHARE = 0.10
RARE_MAX_SHARE = 0.01
RARE_MAX_SEGMENTS = 50

# Record classes whose name no source class maps to: Cityscapes and IDD records say `rider_other` for segments of the
# source class `rider` (whose one-hot target is bicyclist / motorcyclist).
RECORD_CLASS_ALIASES = {("cityscapes-19", "rider_other"): "rider", ("cityscapes-34", "rider_other"): "rider",
                        ("idd-39", "rider_other"): "rider"}


@dataclass(frozen=True)
class HandException:
    taxonomy: str
    class_name: str  # a source class of the taxonomy
    member: str  # a universal class
    keep: bool
    reason: str


HAND_EXCEPTIONS: tuple[HandException, ...] = (
    HandException("coco-panoptic-133", "chair", "basket", False,
                  "a basket is no chair: their shared parent category `furniture` is too broad here (1 segment)"),
    HandException("coco-panoptic-133", "cabinet-merged", "nightstand", True,
                  "COCO has no nightstand class: its annotators drew nightstands as cabinet (206 train segments) "
                  "about as often as table (267), so neither class owns them"),
)


@dataclass(frozen=True)
class RecordClass:
    """What the rule reads for one record class of one taxonomy."""

    name: str  # as the records name it (relabeled taxonomy)
    target: str  # the one-hot target of its source classes (universal)
    sources: tuple[str, ...]  # the taxonomy's classes whose segments the records edit
    moves: Mapping[str, tuple[int, int]]  # universal member (or `unlabeled`) -> (train segments, val segments)


@dataclass(frozen=True)
class MemberEvidence:
    """One row of the evidence table: why a member is in a class's label set, or not."""

    taxonomy: str
    class_name: str
    record_class: str
    member: str
    train_segments: int
    val_segments: int
    share: float | None  # of the record class's train segments moved to a class; None for `unlabeled`
    kept: bool
    reason: str


def decide_members(taxonomy: str, record_classes: Sequence[RecordClass], own_classes: Mapping[str, str],
                   parents: Mapping[str, str], exceptions: Iterable[HandException] = HAND_EXCEPTIONS) -> dict[str, list[tuple[str, bool, str]]]:
    """The rule: record class -> [(member, kept, reason)] for every member its records name (``unlabeled`` last).

    ``own_classes``: universal class -> the taxonomy's classes whose one-hot target it is, as text (``'person'``);
    ``parents``: universal class -> parent category ('' when it has none)."""
    exceptions = {(e.taxonomy, e.class_name, e.member): e for e in exceptions}
    owners = _owners(record_classes)
    decided = {}
    for rc in record_classes:
        labelled_total = sum(train for member, (train, _) in rc.moves.items() if member != UNLABELED)
        rows = []
        for member, (train, _) in rc.moves.items():
            if member == UNLABELED:
                continue
            share = train / labelled_total if labelled_total else 0.0
            own = own_classes.get(member)
            if own is None and member in owners and owners[member].name != rc.name:
                owner = owners[member]
                own = f"{owner.sources[0]!r}, whose records hold most of its segments ({owner.moves[member][0]})"
            exception = next((exceptions[key] for key in ((taxonomy, s, member) for s in rc.sources) if key in exceptions), None)
            parent = parents.get(member, "")
            if member == rc.target:
                rows.append((member, True, "one-hot target"))
            elif train == 0:
                rows.append((member, False, "val-split records only"))
            elif exception is not None:
                rows.append((member, exception.keep, f"hand exception: {exception.reason}"))
            elif own is None and parent and parent == parents.get(rc.target, ""):
                rows.append((member, True, f"subclass: parent category {parent!r}, no class of its own in {taxonomy}"))
            elif own is not None:
                if share < LABELLED_MIN_SHARE:
                    rows.append((member, False, f"{taxonomy} labels it {own}: share below {LABELLED_MIN_SHARE:.0%}"))
                else:
                    rows.append((member, True, f"{taxonomy} labels it {own}, but share at least {LABELLED_MIN_SHARE:.0%}"))
            elif share < RARE_MAX_SHARE and train < RARE_MAX_SEGMENTS:
                rows.append((member, False, f"rare: share below {RARE_MAX_SHARE:.0%} and under {RARE_MAX_SEGMENTS} segments"))
            else:
                rows.append((member, True, f"share at least {RARE_MAX_SHARE:.0%}" if share >= RARE_MAX_SHARE
                             else f"at least {RARE_MAX_SEGMENTS} segments"))
        if UNLABELED in rc.moves:
            rows.append((UNLABELED, False, "moved to unlabeled (ignored): not in the shares"))
        decided[rc.name] = rows
    return decided


def _owners(record_classes: Sequence[RecordClass]) -> dict[str, RecordClass]:
    """member -> the record class whose train records move the most segments to it (none on a tie)."""
    counts: dict[str, list[tuple[int, RecordClass]]] = {}
    for rc in record_classes:
        for member, (train, _) in rc.moves.items():
            if train > 0:
                counts.setdefault(member, []).append((train, rc))
    owners = {}
    for member, candidates in counts.items():
        top = max(train for train, _ in candidates)
        leaders = [rc for train, rc in candidates if train == top]
        if len(leaders) == 1:
            owners[member] = leaders[0]
    return owners


def record_classes_of(tax: Taxonomy, relabeled: Taxonomy, counts: Mapping[tuple[str, str, str], int]) -> tuple[list[RecordClass], list[str]]:
    """The record classes of ``tax`` from segment counts ``(split, record class, new class) -> segments`` (names in
    ``relabeled``), and the problems found (a class or a member the taxonomies do not have).

    A record class's source classes are the classes of ``tax`` whose one-hot target is the record class's universal
    class (or :data:`RECORD_CLASS_ALIASES`)."""
    relabeled_universal = {c: u[0] for c, u in zip(relabeled.class_names, relabeled.universal) if u}
    targets = [u[0] if u else UNLABELED for u in tax.universal]
    moves: dict[str, dict[str, list[int]]] = {}
    problems = []
    for (split, record_class, new), segments in sorted(counts.items()):
        if segments <= 0:
            continue
        if new != UNLABELED and new not in relabeled_universal:
            problems.append(f"a record moves {record_class!r} segments to {new!r}, which {relabeled.name} does not have")
            continue
        member = relabeled_universal.get(new, UNLABELED)
        slot = moves.setdefault(record_class, {}).setdefault(member, [0, 0])
        slot[0 if split == "train" else 1] += segments
    out = []
    for record_class, members in moves.items():
        universal = relabeled_universal.get(record_class)
        sources = [c for c, t in zip(tax.class_names, targets) if universal not in (None, UNLABELED) and t == universal]
        alias = RECORD_CLASS_ALIASES.get((tax.name, record_class))
        if not sources and alias in tax.class_names:
            sources = [alias]
        if not sources:
            problems.append(f"record class {record_class!r}: no class of {tax.name} has its universal class as one-hot target")
            continue
        source_targets = {targets[tax.class_names.index(s)] for s in sources}
        if len(source_targets) != 1:
            problems.append(f"record class {record_class!r}: its source classes have different targets {sorted(source_targets)}")
            continue
        out.append(RecordClass(record_class, source_targets.pop(), tuple(sources),
                               {m: (train, val) for m, (train, val) in members.items()}))
    return out, problems


def derive_label_sets(tax: Taxonomy, relabeled: Taxonomy, universal: Taxonomy, counts: Mapping[tuple[str, str, str], int],
                      exceptions: Iterable[HandException] = HAND_EXCEPTIONS) -> tuple[list[tuple[str, ...]], list[MemberEvidence], list[str]]:
    """``tax``'s label sets by the rule (one per class: the one-hot target first, then the kept members in universal-id
    order), the evidence rows, and the problems found. Only the one-hot targets of ``tax`` are read."""
    targets = [u[0] if u else UNLABELED for u in tax.universal]
    own: dict[str, list[str]] = {}
    for cls, target in zip(tax.class_names, targets):
        own.setdefault(target, []).append(repr(cls))
    own_classes = {target: " / ".join(names) for target, names in own.items()}
    parents = dict(zip(universal.class_names, universal.extra.get("parent", [""] * universal.num_classes)))
    order = {u: i for i, u in enumerate(universal.class_names)}
    record_classes, problems = record_classes_of(tax, relabeled, counts)
    decided = decide_members(tax.name, record_classes, own_classes, parents, exceptions)
    sets = [(t,) for t in targets]
    evidence = []
    for rc in record_classes:
        rows = decided[rc.name]
        kept = sorted((m for m, keep, _ in rows if keep and m != rc.target), key=lambda m: order.get(m, len(order)))
        rows = sorted(rows, key=lambda r: (r[0] == UNLABELED, r[0] != rc.target, not r[1],
                                           order.get(r[0], len(order)) if r[1] else -rc.moves[r[0]][0]))
        labelled_total = sum(train for m, (train, _) in rc.moves.items() if m != UNLABELED)
        for source in rc.sources:
            sets[tax.class_names.index(source)] = (rc.target, *kept)
            for member, keep, reason in rows:
                train, val = rc.moves[member]
                share = None if member == UNLABELED else (train / labelled_total if labelled_total else 0.0)
                evidence.append(MemberEvidence(tax.name, source, rc.name, member, train, val, share, keep, reason))
    evidence.sort(key=lambda e: tax.class_names.index(e.class_name))  # stable: members keep their order
    return sets, evidence, problems


# ---- the evidence table --------------------------------------------------------------------------------------------

EVIDENCE_HEADER = (
    "# Label-set evidence: for each class of an unrelabeled training taxonomy that MSeg's relabeling records edit, every\n"
    "# universal class the records move its segments to, with the train/val segment counts, the share of the class's\n"
    "# train segments moved to a class, and whether the rule kept it in the class's label set (docs/taxonomy.md).\n"
    "# Written by `mseg-taxonomy import-mseg` from MSeg's records (Lambert et al., CVPR 2020; mseg-api, CC BY 4.0).\n")


def format_evidence(rows: Iterable[MemberEvidence]) -> str:
    lines = ["\t".join(EVIDENCE_COLUMNS)]
    for r in rows:
        share = "" if r.share is None else f"{r.share:.6f}"
        lines.append("\t".join((r.taxonomy, r.class_name, r.record_class, r.member, str(r.train_segments),
                                str(r.val_segments), share, "kept" if r.kept else "dropped", r.reason)))
    return EVIDENCE_HEADER + "\n".join(lines) + "\n"


def write_evidence(rows: Iterable[MemberEvidence], path: str | os.PathLike = EVIDENCE_PATH) -> Path:
    return atomic_write_text(path, format_evidence(rows))


def parse_evidence(text: str, source: str = "<memory>") -> list[MemberEvidence]:
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#") or line == "\t".join(EVIDENCE_COLUMNS):
            continue
        cells = line.split("\t")
        if len(cells) != len(EVIDENCE_COLUMNS) or cells[7] not in ("kept", "dropped"):
            raise ValueError(f"{source}:{lineno}: expected {len(EVIDENCE_COLUMNS)} tab-separated columns "
                             f"({', '.join(EVIDENCE_COLUMNS)}) with decision kept or dropped")
        rows.append(MemberEvidence(cells[0], cells[1], cells[2], cells[3], int(cells[4]), int(cells[5]),
                                   float(cells[6]) if cells[6] else None, cells[7] == "kept", cells[8]))
    return rows


@functools.lru_cache(maxsize=4)
def read_evidence(path: str | os.PathLike = EVIDENCE_PATH) -> tuple[MemberEvidence, ...]:
    """The evidence table (the shipped one by default); no file: no rows."""
    path = Path(path)
    if not path.is_file():
        return ()
    return tuple(parse_evidence(path.read_text(encoding="utf-8"), str(path)))


def evidence_of(taxonomy: str, class_name: str | None = None, rows: Iterable[MemberEvidence] | None = None) -> list[MemberEvidence]:
    rows = read_evidence() if rows is None else rows
    return [r for r in rows if r.taxonomy == taxonomy and (class_name is None or r.class_name == class_name)]


# ---- member weights for the `records` loss ---------------------------------------------------------------------------

def record_weights(tax: Taxonomy, rows: Iterable[MemberEvidence] | None = None) -> list[tuple[float, ...]] | None:
    """Per class of ``tax``, the weights of its label set's members (aligned with ``tax.universal[i]``) for the
    forward-corrected loss ``-log sum_c T[k|c] p_c`` (docs/training.md#label-set-weights-and-prior-correction); None when a set of several
    classes has no train-record count for one of its members (a user taxonomy), so the weights cannot be estimated.

    P(c|k): the share of class k's train-record segments that went to member c, over the members of its set
    (a set of one: 1). T[k|c] = P(c|k) / sum over the classes k' of ``tax`` whose set holds c of P(c|k'), i.e.
    Bayes with equal priors for the dataset's classes (the records do not say how often each class occurs), so that
    sum_k T[k|c] = 1 for every class c the dataset labels. Each row is divided by its largest entry: a constant per
    label, which changes no gradient, makes a set of one plain cross-entropy, and gives 1 to every member of a set
    that shares no member with another set of the dataset (`records` = `uniform` there)."""
    by_class = {(r.class_name, r.member): r.train_segments for r in (evidence_of(tax.name) if rows is None else
                                                                       [r for r in rows if r.taxonomy == tax.name])}
    likelihoods: list[dict[str, float]] = []
    for cls, members in zip(tax.class_names, tax.universal):
        members = [m for m in members if m != UNLABELED]
        if len(members) < 2:
            likelihoods.append({m: 1.0 for m in members})
            continue
        counts = [by_class.get((cls, m), 0) for m in members]
        if min(counts) <= 0:
            return None
        likelihoods.append({m: n / sum(counts) for m, n in zip(members, counts)})
    column: dict[str, float] = {}
    for likelihood in likelihoods:
        for member, value in likelihood.items():
            column[member] = column.get(member, 0.0) + value
    weights = []
    for likelihood in likelihoods:
        row = [value / column[member] for member, value in likelihood.items()]
        weights.append(tuple(v / max(row) for v in row) if row else ())
    return weights
