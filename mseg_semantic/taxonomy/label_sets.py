"""Training label ids that stand for a set of model classes (partial-label training).

A class of a training taxonomy maps to a *label set* of model classes (the `universal` cell of its `train` row:
the first class is its one-hot target, the others what the class may also be). In a label map that reaches
the loss, an id is a :class:`LabelSets` code:

- ``0 .. num_classes - 1`` (except 255): the model class itself, a set of one;
- 255: ignore;
- from ``num_classes`` up (skipping 255): one code per distinct set of several classes.

So a training label stays one small integer per pixel (uint8 while the codes fit, as for MSeg's 194 universal
classes plus the few dozen sets of the unrelabeled datasets); the loss looks the members up in a
``codes x max set size`` table instead of reading a dense N x C x H x W mask.

Sets may carry a weight per member (the ``records`` loss, :func:`~mseg_semantic.taxonomy.label_set_rule.record_weights`):
then a code stands for its members *and* their weights, and the same members with other weights get another code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from mseg_semantic.taxonomy.files import IGNORE_INDEX


@dataclass(frozen=True)
class LabelSets:
    """What each label id stands for: ``members[id]`` = the model classes (sorted); ``()`` for 255 and unused ids.
    ``weights``: None (sets without weights), or per id the weights of ``members[id]`` in the same order (``(1.0,)``
    for a class, ``()`` for 255 and unused ids), or None for a set whose weights are unknown."""

    num_classes: int
    members: tuple[tuple[int, ...], ...]
    weights: tuple[tuple[float, ...] | None, ...] | None = None

    @classmethod
    def singletons(cls, num_classes: int) -> "LabelSets":
        """Every label id is one model class (one-hot training)."""
        return cls(num_classes, tuple(() if c == IGNORE_INDEX else (c,) for c in range(num_classes)))

    @classmethod
    def for_sets(cls, num_classes: int, sets: Iterable[Iterable[int]],
                 weights: Iterable[Sequence[float] | None] | None = None) -> "LabelSets":
        """Codes for the distinct sets of several classes among ``sets``, in order of first appearance (the same
        datasets in the same order give the same codes). ``weights``: per set, its members' weights in the order
        given (None: unknown); a set's code then stands for its members and their weights."""
        members = list(cls.singletons(num_classes).members)
        member_weights: list[tuple[float, ...] | None] = [(1.0,) if m else () for m in members]
        known = set()
        weights = iter(weights) if weights is not None else None
        for group in sets:
            group = [int(m) for m in group]
            group_weights = next(weights, None) if weights is not None else None
            if group_weights is not None and len(group_weights) != len(group):
                raise ValueError(f"label set {tuple(group)} has {len(group)} members but {len(group_weights)} weights")
            key = _sorted_set(group, group_weights)
            if any(not 0 <= m < num_classes or m == IGNORE_INDEX for m in key[0]):
                raise ValueError(f"label set {key[0]} holds ids outside the model's classes 0..{num_classes - 1} "
                                 f"(or {IGNORE_INDEX})")
            if len(key[0]) < 2 or key in known:
                continue
            known.add(key)
            if len(members) == IGNORE_INDEX:
                members.append(())  # 255 means ignore, never a code
                member_weights.append(())
            members.append(key[0])
            member_weights.append(key[1])
        return cls(num_classes, tuple(members), tuple(member_weights) if weights is not None else None)

    @property
    def num_ids(self) -> int:
        """One more than the largest label id in use (at least 256, so that 255 is a row of the table)."""
        return max(len(self.members), IGNORE_INDEX + 1)

    @property
    def max_label_id(self) -> int:
        """The largest label id a label map can hold (255 or a code): uint8 suffices while it is <= 255."""
        return max(IGNORE_INDEX, len(self.members) - 1)

    @property
    def max_set_size(self) -> int:
        return max((len(m) for m in self.members), default=1)

    @property
    def set_codes(self) -> list[int]:
        """The label ids that stand for several classes."""
        return [code for code, group in enumerate(self.members) if len(group) > 1]

    def code_of(self, group: Iterable[int], weights: Sequence[float] | None = None, exact: bool = False) -> int:
        """The label id of a set of model classes (a class id for a set of one; 255 for the empty set). With weights
        (in the order of ``group``), the code of those members with those weights; without, the one code of those
        members (KeyError if several weightings of them have codes). ``exact``: ``weights`` None means the code of
        those members whose weights are unknown."""
        group = [int(m) for m in group]
        members, member_weights = _sorted_set(group, weights)
        if not members:
            return IGNORE_INDEX
        if len(members) == 1:
            return members[0]
        codes = [code for code in range(self.num_classes, len(self.members)) if self.members[code] == members
                 and (self.weights is None or self.weights[code] == member_weights
                      or (weights is None and not exact))]
        if len(codes) != 1:
            what = "has no code" if not codes else f"has {len(codes)} codes (one per weighting: give the weights)"
            raise KeyError(f"label set {members} {what} in these label sets")
        return codes[0]

    def member_table(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, valid)``, both ``num_ids x max_set_size``: row = label id, ``ids[row, s]`` its s-th member and
        ``valid[row, s]`` whether that slot holds one. Empty slots repeat the first member (or 0), so every id is a
        valid class index and a masked-out slot never needs a special case."""
        width = self.max_set_size
        ids = np.zeros((self.num_ids, width), dtype=np.int64)
        valid = np.zeros((self.num_ids, width), dtype=bool)
        for code, group in enumerate(self.members):
            if group:
                ids[code, :] = group[0]
                ids[code, : len(group)] = group
                valid[code, : len(group)] = True
        return ids, valid

    def weight_table(self) -> np.ndarray:
        """``num_ids x max_set_size`` float32: ``weights[id]`` in the slots of :meth:`member_table` (0 in empty slots).
        ValueError naming the code when a set's weights are unknown."""
        if self.weights is None:
            raise ValueError("these label sets carry no member weights (built without them)")
        table = np.zeros((self.num_ids, self.max_set_size), dtype=np.float32)
        for code, (group, group_weights) in enumerate(zip(self.members, self.weights)):
            if group and group_weights is None:
                raise ValueError(f"label set code {code} (model classes {group}) has no member weights: its dataset "
                                 "has no relabeling-record counts for it")
            if group:
                table[code, : len(group)] = group_weights
        return table


def _sorted_set(group: Sequence[int], weights: Sequence[float] | None) -> tuple[tuple[int, ...], tuple[float, ...] | None]:
    """Members sorted and deduplicated, with their weights in the same order (None stays None)."""
    if weights is None:
        return tuple(sorted(set(group))), None
    paired = dict(zip(group, (float(w) for w in weights)))
    members = tuple(sorted(paired))
    return members, tuple(paired[m] for m in members)
