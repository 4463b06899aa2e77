"""``tongxin admin org``: organisation units (组织机构) from the node's shell.

The same changes as the console's 组织机构 page (the admin API's /org routes), for
scripts and first installs that load a department tree before anyone signs in to
the console. Like ``tongxin user``, it runs on the node as the service's OS user and
every change and every refusal is audited with the actor ``cli:<os user>``; the
rules (tongxin.org.units) are the store's, so a refusal changes nothing.

A unit is named by its id (``ou_...``) or by its path from the top, ``总部/办公厅``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tongxin.org.units import OrgRefused, Tree, new_unit_id, unit_paths
from tongxin.store.ports import OrgUnit


def resolve(units: list[OrgUnit], ref: str) -> str:
    """The id of the unit ``ref`` names (an id, or names from the top joined by ``/``);
    "" for an empty ref (the top level). OrgRefused when there is none."""
    from tongxin.org.units import UnitNotFound

    ref = ref.strip()
    if not ref:
        return ""
    if any(u.id == ref for u in units):
        return ref
    tree = Tree(units)
    parent = ""
    for name in (part.strip() for part in ref.split("/")):
        found = [c for c in tree.children.get(parent, []) if tree.units[c].name == name]
        if not found:
            raise UnitNotFound(f"no organisation unit {ref!r}")
        parent = found[0]
    return parent


def print_tree(units: list[OrgUnit], members: dict[str, list[str]]) -> None:
    tree = Tree(units)

    def walk(parent: str, depth: int) -> None:
        for uid in sorted(tree.children.get(parent, []), key=lambda i: tree.units[i].name):
            u = tree.units[uid]
            who = members.get(uid, [])
            people = f"\t{', '.join(sorted(who))}" if who else ""
            print(f"{'  ' * depth}{u.name}\t{u.id}\t{u.member_count} member(s){people}")
            walk(uid, depth + 1)

    if not units:
        print("no organisation units")
    walk("", 0)


def cmd_admin_org(args: argparse.Namespace) -> int:
    from tongxin.cli.compliance import _cli_actor, _config, _open, _run
    from tongxin.cli.main import _refuse_on_standby
    from tongxin.clock import now_ms
    from tongxin.server.node import make_store

    cfg = _config(args)
    action = args.org_action
    if action != "list":
        _refuse_on_standby(cfg, f"tongxin admin org {action}")

    async def run() -> int:
        store = make_store(cfg)
        store.atrest_config = None  # type: ignore[attr-defined]  # no message content read
        await store.open()
        comp = await _open(cfg)
        actor = {"actor": _cli_actor(), "via": "cli"}
        event, target, detail = f"org.{action}", "", {}
        try:
            units = await store.org_units()
            if action == "list":
                assigned = await store.org_assignments()
                names = {u.id: u.username for u in await store.list_users()}
                members: dict[str, list[str]] = {}
                for user_id, unit_id in assigned.items():
                    members.setdefault(unit_id, []).append(names.get(user_id, user_id))
                print_tree(units, members)
                await comp.audit("org.list", **actor, count=len(units))
                return 0
            try:
                if action == "add":
                    event, target = "org.create", args.name
                    parent = resolve(units, args.parent)
                    unit = await store.org_create(new_unit_id(), parent, args.name, now_ms())
                    target, detail = unit.id, {"name": unit.name, "parent_id": parent}
                    print(f"created {unit_paths([*units, unit])[unit.id]} ({unit.id})")
                elif action in ("rename", "move"):
                    target = resolve(units, args.unit)
                    if action == "rename":
                        before, after = await store.org_update(target, name=args.name)
                    else:
                        before, after = await store.org_update(
                            target, parent_id=resolve(units, args.parent))
                    detail = {"name": after.name, "old_name": before.name,
                              "parent_id": after.parent_id, "old_parent_id": before.parent_id}
                    paths = unit_paths([after if u.id == target else u for u in units])
                    print(f"{action}d {unit_paths(units)[target]} -> {paths[target]}")
                elif action == "remove":
                    event, target = "org.delete", resolve(units, args.unit)
                    gone = await store.org_delete(target)
                    detail = {"name": gone.name, "parent_id": gone.parent_id}
                    print(f"deleted {unit_paths(units)[target]} ({target})")
                else:  # assign, unassign
                    target = args.username.strip().lower()
                    user = await store.get_user_by_name(target)
                    if user is None:
                        print(f"tongxin: no user {target!r}", file=sys.stderr)
                        await comp.audit(event, **actor, target=target, outcome="denied",
                                         reason="no such user")
                        return 1
                    unit_id = resolve(units, args.unit) if action == "assign" else ""
                    if action == "assign" and not unit_id:
                        raise OrgRefused("name the unit to put the user in")
                    previous = await store.org_assign(user.id, unit_id, now_ms())
                    detail = {"user_id": user.id, "unit_id": unit_id, "previous_unit_id": previous}
                    paths = unit_paths(units)
                    print(f"{user.username}: {paths.get(previous, '(no unit)')} -> "
                          f"{paths.get(unit_id, '(no unit)')}")
            except OrgRefused as exc:
                print(f"tongxin: refused: {exc}; nothing was changed", file=sys.stderr)
                await comp.audit(event, **actor, target=target, outcome="denied", reason=str(exc))
                return 1
            await comp.audit(event, **actor, target=target, **detail)
            return 0
        finally:
            await comp.close()
            await store.close()

    return _run(run())


def add_commands(asub: Any, common: Any) -> None:
    """``tongxin admin org ...`` under the ``admin`` command's subparsers."""
    o = asub.add_parser("org", help="organisation units (组织机构): list the tree, add, rename, "
                                    "move, remove units, put users in them")
    osub = o.add_subparsers(dest="org_action", required=True)
    unit_help = "a unit: its id (ou_...) or its path from the top, e.g. 总部/办公厅"
    ol = osub.add_parser("list", help="the tree, with each unit's id and members")
    oa = osub.add_parser("add", help="a new unit")
    oa.add_argument("name")
    oa.add_argument("--parent", default="", help=f"{unit_help} (default: the top level)")
    orn = osub.add_parser("rename", help="rename a unit")
    orn.add_argument("unit", help=unit_help)
    orn.add_argument("name")
    om = osub.add_parser("move", help="move a unit (and its sub-units) under another parent")
    om.add_argument("unit", help=unit_help)
    om.add_argument("--parent", default="", help=f"{unit_help} (default: the top level)")
    orm = osub.add_parser("remove", help="delete a unit without sub-units or members")
    orm.add_argument("unit", help=unit_help)
    oas = osub.add_parser("assign", help="put a user in a unit (taking them out of another)")
    oas.add_argument("username")
    oas.add_argument("unit", help=unit_help)
    oun = osub.add_parser("unassign", help="take a user out of their unit")
    oun.add_argument("username")
    for sp in (ol, oa, orn, om, orm, oas, oun):
        common(sp)
        sp.set_defaults(func=cmd_admin_org)
