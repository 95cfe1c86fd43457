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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from mseg_semantic.taxonomy.files import IGNORE_INDEX


@dataclass(frozen=True)
class LabelSets:
    """What each label id stands for: ``members[id]`` = the model classes (sorted); ``()`` for 255 and unused ids."""

    num_classes: int
    members: tuple[tuple[int, ...], ...]

    @classmethod
    def singletons(cls, num_classes: int) -> "LabelSets":
        """Every label id is one model class (one-hot training)."""
        return cls(num_classes, tuple(() if c == IGNORE_INDEX else (c,) for c in range(num_classes)))

    @classmethod
    def for_sets(cls, num_classes: int, sets: Iterable[Iterable[int]]) -> "LabelSets":
        """Codes for the distinct sets of several classes among ``sets``, in order of first appearance (the same
        datasets in the same order give the same codes)."""
        members = list(cls.singletons(num_classes).members)
        known = set()
        for group in sets:
            group = tuple(sorted(set(int(m) for m in group)))
            if any(not 0 <= m < num_classes or m == IGNORE_INDEX for m in group):
                raise ValueError(f"label set {group} holds ids outside the model's classes 0..{num_classes - 1} "
                                 f"(or {IGNORE_INDEX})")
            if len(group) < 2 or group in known:
                continue
            known.add(group)
            if len(members) == IGNORE_INDEX:
                members.append(())  # 255 means ignore, never a code
            members.append(group)
        return cls(num_classes, tuple(members))

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

    def code_of(self, group: Iterable[int]) -> int:
        """The label id of a set of model classes (a class id for a set of one; 255 for the empty set)."""
        group = tuple(sorted(set(int(m) for m in group)))
        if not group:
            return IGNORE_INDEX
        if len(group) == 1:
            return group[0]
        try:
            return self.members.index(group, self.num_classes)
        except ValueError:
            raise KeyError(f"label set {group} has no code in these label sets") from None

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
