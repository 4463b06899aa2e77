"""The rules of the organisation tree (组织机构), separate from how it is stored.

A unit has a name and a parent (``""`` for a top-level unit). Both store
adapters load the whole tree inside the transaction that changes it (the
tree is small: thousands of units at most) and ask these functions whether
the change is allowed, so the rules are written once and a refused change
leaves nothing behind:

* a name is trimmed and NFC-normalised, 1..:data:`MAX_NAME` characters, with
  no control characters, and unique among its siblings (byte-exact after
  normalisation, as the unique key of the tables is);
* the tree is at most :data:`MAX_DEPTH` levels deep, counting a top-level
  unit as level 1 (a move checks the whole subtree that moves);
* a unit cannot move under itself or under one of its descendants (a cycle);
* a unit is deleted only when it has neither sub-units nor members: people
  are never left in a unit that no longer exists.

Refusals raise :class:`OrgRefused`, a ``StoreError``: the MySQL adapter rolls
the transaction back on any ``StoreError``, and the admin API answers with
:attr:`OrgRefused.status`.
"""

from __future__ import annotations

import secrets
import unicodedata
from collections.abc import Iterable

from tongxin.store.ports import OrgUnit, StoreError

MAX_DEPTH = 8
MAX_NAME = 64


class OrgRefused(StoreError):
    """A change to the tree the rules refuse; nothing was changed."""

    status = 400
    error = "INVALID_ARGUMENT"


class UnitNotFound(OrgRefused):
    status = 404
    error = "NOT_FOUND"


class NameTaken(OrgRefused):
    status = 409
    error = "CONFLICT"


class UnitNotEmpty(OrgRefused):
    status = 409
    error = "NOT_EMPTY"


def new_unit_id() -> str:
    return "ou_" + secrets.token_hex(8)


def clean_name(name: str) -> str:
    """The name as stored, or OrgRefused saying what is wrong with it."""
    text = unicodedata.normalize("NFC", str(name)).strip()
    if not text:
        raise OrgRefused("a unit needs a name")
    if len(text) > MAX_NAME:
        raise OrgRefused(f"a unit name has at most {MAX_NAME} characters ({len(text)} given)")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text):
        raise OrgRefused("a unit name cannot contain control or line-break characters")
    return text


class Tree:
    """A snapshot of the units, indexed for the checks."""

    def __init__(self, units: Iterable[OrgUnit]) -> None:
        self.units = {u.id: u for u in units}
        self.children: dict[str, list[str]] = {}
        for u in self.units.values():
            self.children.setdefault(u.parent_id, []).append(u.id)

    def get(self, unit_id: str) -> OrgUnit:
        unit = self.units.get(unit_id)
        if unit is None:
            raise UnitNotFound(f"no organisation unit {unit_id!r}")
        return unit

    def depth(self, unit_id: str) -> int:
        """Level of the unit: 1 for a top-level unit."""
        n, seen = 0, set()
        while unit_id:
            if unit_id in seen:  # never stored that way; do not loop if it were
                break
            seen.add(unit_id)
            n += 1
            unit_id = self.units[unit_id].parent_id if unit_id in self.units else ""
        return n

    def height(self, unit_id: str) -> int:
        """Levels in the subtree rooted at the unit: 1 for a unit without sub-units."""
        below = [self.height(c) for c in self.children.get(unit_id, [])]
        return 1 + max(below, default=0)

    def descendants(self, unit_id: str) -> set[str]:
        out: set[str] = set()
        stack = list(self.children.get(unit_id, []))
        while stack:
            u = stack.pop()
            if u not in out:
                out.add(u)
                stack.extend(self.children.get(u, []))
        return out

    def _unique(self, parent_id: str, name: str, except_id: str = "") -> None:
        for sib in self.children.get(parent_id, []):
            if sib != except_id and self.units[sib].name == name:
                where = f"under {self.units[parent_id].name!r}" if parent_id else "at the top level"
                raise NameTaken(f"there is already a unit named {name!r} {where}")


def check_create(tree: Tree, parent_id: str, name: str) -> str:
    """The cleaned name of a new unit under ``parent_id``."""
    text = clean_name(name)
    if parent_id:
        tree.get(parent_id)
        if tree.depth(parent_id) + 1 > MAX_DEPTH:
            raise OrgRefused(f"the tree is at most {MAX_DEPTH} levels deep")
    tree._unique(parent_id, text)
    return text


def check_rename(tree: Tree, unit_id: str, name: str) -> str:
    unit = tree.get(unit_id)
    text = clean_name(name)
    tree._unique(unit.parent_id, text, except_id=unit_id)
    return text


def check_move(tree: Tree, unit_id: str, parent_id: str) -> None:
    unit = tree.get(unit_id)
    if parent_id:
        tree.get(parent_id)
        if parent_id == unit_id or parent_id in tree.descendants(unit_id):
            raise OrgRefused(f"{unit.name!r} cannot move under itself or one of its sub-units")
        if tree.depth(parent_id) + tree.height(unit_id) > MAX_DEPTH:
            raise OrgRefused(f"the tree is at most {MAX_DEPTH} levels deep; "
                             f"{unit.name!r} and its sub-units would go deeper")
    tree._unique(parent_id, unit.name, except_id=unit_id)


def check_update(tree: Tree, unit_id: str, name: str | None,
                 parent_id: str | None) -> tuple[OrgUnit, OrgUnit]:
    """The unit before and after a rename and/or move, both checked (the move against
    the tree with the new name, so a twin name at the destination is refused)."""
    before = tree.get(unit_id)
    after = OrgUnit(before.id, before.parent_id, before.name, before.created_at)
    if name is not None:
        after.name = check_rename(tree, unit_id, name)
        tree = Tree([after if u.id == unit_id else u for u in tree.units.values()])
    if parent_id is not None:
        check_move(tree, unit_id, parent_id)
        after.parent_id = parent_id
    return before, after


def check_delete(tree: Tree, unit_id: str, members: int) -> OrgUnit:
    unit = tree.get(unit_id)
    subs = len(tree.children.get(unit_id, []))
    if subs or members:
        raise UnitNotEmpty(f"{unit.name!r} still has {subs} sub-unit(s) and {members} member(s): "
                           "move or delete them first")
    return unit


def unit_paths(units: Iterable[OrgUnit], sep: str = " / ") -> dict[str, str]:
    """unit id -> its names from the top level down ("总部 / 办公厅"), for lists of people."""
    tree = Tree(units)
    out: dict[str, str] = {}
    for uid in tree.units:
        names, cur, seen = [], uid, set()
        while cur in tree.units and cur not in seen:
            seen.add(cur)
            names.append(tree.units[cur].name)
            cur = tree.units[cur].parent_id
        out[uid] = sep.join(reversed(names))
    return out
