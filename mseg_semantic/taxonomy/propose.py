"""Propose the universal class of each class of a new dataset, by name and synonym similarity.

A new dataset's taxonomy (a ``raw`` block: ``id name [color]``, or a train/test block) is compared class by class
with the universal classes: each universal class's name, its ``_``-separated alternatives and its synonyms
(``data/synonyms/universal_synonyms.tsv``) against the dataset class's name and its ``;`` / ``,`` / ``/``-separated
alternatives, as lower-case words with plurals folded. Scores:

- 1.0 the same words; 0.97 the same set of words;
- 0.75..0.95 the universal phrase is inside the dataset name (``parked car`` -> car), more for a larger share;
- 0.6..0.8 the dataset name is inside a universal phrase (``chair`` -> swivel chair: more specific than asked);
- otherwise 0.85 x the character similarity (typos: ``vegitation``).

A proposal is *confident* when its score is at least 0.9 and the runner-up (another universal class) scores at least
0.05 less; every other row needs a human decision, and so does a name that means unlabeled only sometimes
(``background``, ``other``). Names of unlabeled pixels (``void``, ``unlabeled``, ...) are proposed as ``unlabeled``.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass
from pathlib import Path

from mseg_semantic.taxonomy.catalog import DATA_DIR, Catalog
from mseg_semantic.taxonomy.files import DEFAULT_UNIVERSAL, UNLABELED, Taxonomy

__all__ = ["CONFIDENT", "Proposal", "format_proposals", "proposal_file_text", "propose", "read_synonyms"]

SYNONYMS_FILE = DATA_DIR / "synonyms" / "universal_synonyms.tsv"
CONFIDENT = 0.9  # the score a proposal needs to be taken without a look
MARGIN = 0.05  # and how far ahead of the runner-up
UNLABELED_NAMES = frozenset({"unlabeled", "unlabelled", "void", "ignore", "ignored", "unknown", "none", "dontcare",
                             "don't care", "dont care", "no label", "nolabel"})
SOMETIMES_UNLABELED = frozenset({"background", "other", "others", "misc", "miscellaneous", "clutter", "bg"})


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("sses", "ches", "shes", "xes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def normalize(text: str) -> str:
    """Lower-case words, ``_`` ``-`` ``/`` and punctuation read as spaces, plurals folded: ``Traffic-Lights`` ->
    ``traffic light``."""
    words = re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("_", " ")).split()
    return " ".join(_singular(w) for w in words)


def _alternatives(name: str) -> list[str]:
    """A dataset class name and the alternatives it lists (ADE20K: ``person;individual;someone``)."""
    parts = [name] + re.split(r"[;,/]| or ", name)
    return list(dict.fromkeys(p for p in (normalize(x) for x in parts) if p))


@functools.cache
def read_synonyms(path: Path = SYNONYMS_FILE) -> dict[str, tuple[str, ...]]:
    """universal class -> its synonyms, as in the file (not normalised)."""
    table: dict[str, tuple[str, ...]] = {}
    header_seen = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if not header_seen:
            header_seen = True  # `universal<TAB>synonyms`
            continue
        table[fields[0].strip()] = tuple(s.strip() for s in (fields[1] if len(fields) > 1 else "").split(",") if s.strip())
    return table


def _phrases(universal_name: str, synonyms: tuple[str, ...]) -> list[tuple[str, str]]:
    """(normalised phrase, what it is) of one universal class: its name (without ``_other``) and its synonyms. The
    parts of a two-word name are not split: ``pier_wharf`` means either word, ``road_barrier`` does not (the synonyms
    file lists the alternatives)."""
    found = [(normalize(universal_name), "name")]
    stem = universal_name.removesuffix("_other")
    if stem != universal_name:
        found.append((normalize(stem), "name"))
    found += [(normalize(s), f"synonym {s!r}") for s in synonyms]
    return list(dict.fromkeys(p for p in found if p[0]))


def similarity(alternative: str, phrase: str) -> tuple[float, str]:
    """How well a normalised dataset name matches a normalised universal phrase (module docstring), and how."""
    if alternative == phrase:
        return 1.0, ""
    a, p = set(alternative.split()), set(phrase.split())
    if a == p:
        return 0.97, "same words"
    if p < a:
        return 0.75 + 0.2 * len(p) / len(a), "inside the name"
    if a < p:
        return 0.6 + 0.2 * len(a) / len(p), "the name is part of it"
    return 0.85 * difflib.SequenceMatcher(None, alternative, phrase).ratio(), "similar spelling"


@dataclass(frozen=True)
class Proposal:
    class_id: int
    name: str
    universal: str  # the proposed universal class, or "unlabeled"
    score: float
    why: str  # what matched: "name", "synonym 'sidewalk'", ...
    runner_up: str = ""
    runner_up_score: float = 0.0
    current: str = ""  # a train/test block's own mapping, for comparison
    decide: str = ""  # "" when confident, else why a human must decide

    @property
    def confident(self) -> bool:
        return not self.decide


def _score_classes(name: str, table: list[tuple[str, list[tuple[str, str]]]]) -> list[tuple[float, str, str]]:
    alternatives = _alternatives(name)
    scored = []
    for universal, phrases in table:
        best, why = 0.0, ""
        for alternative in alternatives:
            for phrase, what in phrases:
                value, how = similarity(alternative, phrase)
                if value > best:
                    best, why = value, f"{what}, {how}" if how else what
        scored.append((best, universal, why))
    return sorted(scored, key=lambda item: -item[0])


def propose(catalog: Catalog, taxonomy: str, universal: str = DEFAULT_UNIVERSAL,
            synonyms: dict[str, tuple[str, ...]] | None = None) -> list[Proposal]:
    """A proposal for each class of ``taxonomy`` in the universal taxonomy ``universal`` (MSeg's by default; a user
    universal taxonomy's own classes match by their names)."""
    synonyms = read_synonyms() if synonyms is None else synonyms
    source: Taxonomy = catalog.taxonomy(taxonomy)
    table = [(u, _phrases(u, synonyms.get(u, ()))) for u in catalog.class_names(universal)]
    proposals = []
    for class_id, name in enumerate(source.class_names):
        current = ", ".join(source.universal[class_id]) if source.universal else ""
        plain = normalize(name)
        if plain in {normalize(n) for n in UNLABELED_NAMES}:
            proposals.append(Proposal(class_id, name, UNLABELED, 1.0, "a name for unlabeled pixels", current=current))
            continue
        (best, top, why), (second, runner, _) = _score_classes(name, table)[:2]
        decide = ""
        if plain in SOMETIMES_UNLABELED:
            top, best, why = UNLABELED, 0.5, "often unlabeled pixels"
            decide = f"'{name}' may be unlabeled or real classes: unlabeled, or the universal classes it holds"
        elif best < CONFIDENT:
            decide = f"no confident match: {top} {best:.2f} ({why}), then {runner} {second:.2f}"
        elif best - second < MARGIN:
            decide = f"{top} ({best:.2f}) and {runner} ({second:.2f}) match about equally"
        proposals.append(Proposal(class_id, name, top, round(best, 3), why, runner, round(second, 3), current, decide))
    return proposals


def format_proposals(proposals: list[Proposal], taxonomy: str, universal: str) -> str:
    """A table: id, name, proposal, score, what matched (or DECIDE: why), the runner-up."""
    rows = [("id", "name", "proposal", "score", "matched / DECIDE", "runner-up")]
    for p in proposals:
        rows.append((str(p.class_id), p.name, p.universal, f"{p.score:.2f}", p.why if p.confident else f"DECIDE: {p.decide}",
                     f"{p.runner_up} {p.runner_up_score:.2f}" if p.runner_up else "-"))
        if p.current and p.current != p.universal:
            rows.append(("", "", f"(file: {p.current})", "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"{taxonomy} ({len(proposals)} classes) -> {universal}"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    undecided = [p for p in proposals if not p.confident]
    lines.append(f"{len(proposals) - len(undecided)} confident, {len(undecided)} need a human decision"
                 + (f" (rows {', '.join(str(p.class_id) for p in undecided)})" if undecided else ""))
    return "\n".join(lines) + "\n"


def proposal_file_text(proposals: list[Proposal], source: Taxonomy, name: str, universal: str) -> str:
    """A train-role taxonomy file with the proposals as its universal column (and the source's colours); each row
    that needs a decision carries a ``# DECIDE`` comment above it."""
    lines = [f"# Proposed by `mseg-taxonomy propose` from {source.source} ({source.name}); review each universal cell,",
             "# especially the rows marked DECIDE, then check it with `mseg-taxonomy validate FILE`.",
             "# A cell may list several universal classes (a label set: `road, crosswalk`), the first being the target.",
             f"taxonomy\t{name}", "role\ttrain"]
    if universal != DEFAULT_UNIVERSAL:
        lines.append(f"maps_to\t{universal}")
    colors = source.colors
    lines.append("id\tname\tuniversal" + ("\tcolor" if colors is not None else ""))
    for p in proposals:
        if not p.confident:
            lines.append(f"# DECIDE {p.name!r}: {p.decide}")
        row = f"{p.class_id}\t{p.name}\t{p.universal}"
        if colors is not None:
            row += "\t" + " ".join(str(int(v)) for v in colors[p.class_id])
        lines.append(row)
    return "\n".join(lines) + "\n"
