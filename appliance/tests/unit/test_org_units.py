"""Organisation units (组织机构): the tree's rules (tongxin.org.units) and the admin API's
answers to bad input, over a real SQLite store: a refused change is a 4xx naming the
problem, is audited as denied, and leaves the tree exactly as it was."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from tongxin.compliance.ports import AdminSession
from tongxin.org import units as org
from tongxin.server.admin_api import AdminApi, Ctx
from tongxin.store.ports import ConversationRow, Entry, OrgUnit, User
from tongxin.store.sqlite_store import SqliteStore

# ---- the rules on a snapshot ---------------------------------------------------------


def tree(*units: tuple[str, str, str]) -> org.Tree:
    return org.Tree(OrgUnit(i, p, n, 0) for i, p, n in units)


CHAIN = tree(("a", "", "总部"), ("b", "a", "办公厅"), ("c", "b", "秘书处"), ("x", "", "分公司"))


def test_names_are_trimmed_normalised_and_bounded() -> None:
    assert org.clean_name("  办公厅 ") == "办公厅"
    assert org.clean_name("Cafe\u0301") == "Caf\u00e9"  # NFC: one way to spell a name
    for bad in ("", "   ", "a" * (org.MAX_NAME + 1), "a\nb", "a\x00b", "a\u200eb"):
        with pytest.raises(org.OrgRefused):
            org.clean_name(bad)
    assert org.clean_name("a" * org.MAX_NAME) == "a" * org.MAX_NAME


def test_sibling_names_are_unique_but_cousins_may_share() -> None:
    with pytest.raises(org.NameTaken):
        org.check_create(CHAIN, "a", " 办公厅")
    with pytest.raises(org.NameTaken):
        org.check_create(CHAIN, "", "总部")
    assert org.check_create(CHAIN, "x", "办公厅") == "办公厅"  # another parent
    with pytest.raises(org.NameTaken):
        org.check_rename(CHAIN, "x", "总部")
    assert org.check_rename(CHAIN, "a", "总部") == "总部"  # its own name again


def test_unknown_parent_or_unit_is_not_found() -> None:
    with pytest.raises(org.UnitNotFound):
        org.check_create(CHAIN, "nope", "x")
    with pytest.raises(org.UnitNotFound):
        org.check_move(CHAIN, "a", "nope")
    with pytest.raises(org.UnitNotFound):
        org.check_rename(CHAIN, "nope", "x")
    with pytest.raises(org.UnitNotFound):
        org.check_delete(CHAIN, "nope", 0)


def test_a_move_under_itself_or_a_descendant_is_a_cycle() -> None:
    for parent in ("a", "b", "c"):
        with pytest.raises(org.OrgRefused, match="under itself"):
            org.check_move(CHAIN, "a", parent)
    org.check_move(CHAIN, "c", "a")  # up is fine
    org.check_move(CHAIN, "a", "x")  # under a sibling is fine
    org.check_move(CHAIN, "b", "")  # to the top


def test_depth_is_bounded_for_creates_and_for_whole_subtrees_that_move() -> None:
    deep = [(f"d{i}", f"d{i - 1}" if i else "", f"n{i}") for i in range(org.MAX_DEPTH)]
    t = tree(*deep, ("s", "", "s"), ("s2", "s", "s2"))
    assert t.depth(f"d{org.MAX_DEPTH - 1}") == org.MAX_DEPTH
    with pytest.raises(org.OrgRefused, match="levels deep"):
        org.check_create(t, f"d{org.MAX_DEPTH - 1}", "too deep")
    org.check_create(t, f"d{org.MAX_DEPTH - 2}", "last level")
    # s has a sub-unit: under d6 (level 7) it would reach level 9
    with pytest.raises(org.OrgRefused, match="levels deep"):
        org.check_move(t, "s", f"d{org.MAX_DEPTH - 2}")
    org.check_move(t, "s", f"d{org.MAX_DEPTH - 3}")


def test_unit_paths_name_every_level_from_the_top() -> None:
    assert org.unit_paths(CHAIN.units.values()) == {
        "a": "总部", "b": "总部 / 办公厅", "c": "总部 / 办公厅 / 秘书处", "x": "分公司"}


def test_delete_refuses_sub_units_and_members() -> None:
    with pytest.raises(org.UnitNotEmpty, match="1 sub-unit"):
        org.check_delete(CHAIN, "b", 0)
    with pytest.raises(org.UnitNotEmpty, match="2 member"):
        org.check_delete(CHAIN, "c", 2)
    assert org.check_delete(CHAIN, "c", 0).name == "秘书处"


# ---- the store and the admin API -----------------------------------------------------

SYS = User("u_sys", "sysadm", "", "", "sysadmin", 0)
CTX = Ctx(SYS, "sysadmin", AdminSession("t", SYS.id, "sysadmin", 0, 0, 0), "127.0.0.1")


class FakeCompliance:
    def __init__(self) -> None:
        self.audited: list[dict[str, Any]] = []

    async def audit(self, event: str, **fields: Any) -> None:
        self.audited.append({"event": event, **fields})


class FakeFactors:
    async def totp_user_ids(self) -> list[str]:
        return []

    async def sms_user_ids(self) -> list[str]:
        return []


class FakeNode:
    def __init__(self, store: SqliteStore) -> None:
        self.store = store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "t.db")
    await s.open()
    for uid, name, role in (("u_zhang", "zhangwei", "user"), ("u_li", "lina", "user"),
                            ("u_sec", "secadm", "secadmin")):
        await s.create_user(User(uid, name, name.title(), "h", role, 1))
    yield s
    await s.close()


@pytest.fixture
def api(store: SqliteStore) -> tuple[AdminApi, FakeCompliance]:
    a = AdminApi(cast(Any, FakeNode(store)))
    comp = FakeCompliance()
    a._compliance = cast(Any, comp)
    return a, comp


async def call(a: AdminApi, handler: Any, method: str, path: str, body: Any = None,
               match: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    req = make_mocked_request(method, path, match_info=match or {})
    if body is not None:
        raw = json.dumps(body).encode()
        req.json = lambda **_: _json(raw)  # type: ignore[method-assign]
    resp = await handler(req, CTX)
    assert isinstance(resp, web.Response)
    return resp.status, json.loads(cast(str, resp.text))


async def _json(raw: bytes) -> Any:
    return json.loads(raw)


async def snapshot(store: SqliteStore) -> list[tuple[str, str, str, int]]:
    return [(u.id, u.parent_id, u.name, u.member_count) for u in await store.org_units()]


async def test_create_rename_move_assign_delete_and_their_audit(
        api: tuple[AdminApi, FakeCompliance], store: SqliteStore) -> None:
    a, comp = api
    st, hq = await call(a, a.create_org, "POST", "/org", {"name": " 总部 "})
    assert st == 201 and hq["name"] == "总部" and hq["parent_id"] == ""
    st, office = await call(a, a.create_org, "POST", "/org", {"name": "办公厅", "parent_id": hq["id"]})
    assert st == 201 and office["parent_id"] == hq["id"]
    st, out = await call(a, a.assign_unit, "PUT", "/users/zhangwei/unit", {"unit_id": office["id"]},
                         {"name": "zhangwei"})
    assert st == 200 and out["previous_unit_id"] == ""
    comp.store = FakeFactors()  # type: ignore[attr-defined]
    st, people = await call(a, a.list_users, "GET", "/users")
    assert {u["username"]: (u["unit_id"], u["unit_path"]) for u in people["users"]} == {
        "lina": ("", ""), "secadm": ("", ""), "zhangwei": (office["id"], "总部 / 办公厅")}
    st, listed = await call(a, a.list_org, "GET", "/org")
    assert [(u["name"], u["member_count"]) for u in listed["units"]] == [("总部", 0), ("办公厅", 1)]
    assert listed["max_depth"] == org.MAX_DEPTH
    st, out = await call(a, a.update_org, "PATCH", "/org/x", {"name": "综合办公室"},
                         {"unit_id": office["id"]})
    assert st == 200 and out["name"] == "综合办公室"
    st, out = await call(a, a.update_org, "PATCH", "/org/x", {"parent_id": ""}, {"unit_id": office["id"]})
    assert st == 200 and out["parent_id"] == ""
    st, out = await call(a, a.assign_unit, "DELETE", "/users/zhangwei/unit", None, {"name": "zhangwei"})
    assert st == 200 and out["previous_unit_id"] == office["id"]
    st, out = await call(a, a.delete_org, "DELETE", "/org/x", None, {"unit_id": office["id"]})
    assert st == 200 and await snapshot(store) == [(hq["id"], "", "总部", 0)]
    events = [(r["event"], r.get("outcome", "ok"), r["actor"]) for r in comp.audited]
    assert events == [("org.create", "ok", SYS.id), ("org.create", "ok", SYS.id),
                      ("org.assign", "ok", SYS.id), ("user.list", "ok", SYS.id),
                      ("org.list", "ok", SYS.id),
                      ("org.rename", "ok", SYS.id), ("org.move", "ok", SYS.id),
                      ("org.unassign", "ok", SYS.id), ("org.delete", "ok", SYS.id)]
    assert comp.audited[5]["old_name"] == "办公厅" and comp.audited[5]["name"] == "综合办公室"


async def test_bad_input_is_a_clear_4xx_audited_and_changes_nothing(
        api: tuple[AdminApi, FakeCompliance], store: SqliteStore) -> None:
    a, comp = api
    _, hq = await call(a, a.create_org, "POST", "/org", {"name": "总部"})
    _, sub = await call(a, a.create_org, "POST", "/org", {"name": "办公厅", "parent_id": hq["id"]})
    _, leaf = await call(a, a.create_org, "POST", "/org", {"name": "秘书处", "parent_id": sub["id"]})
    await call(a, a.assign_unit, "PUT", "/users/lina/unit", {"unit_id": leaf["id"]}, {"name": "lina"})
    before = await snapshot(store)
    comp.audited.clear()
    cases: list[tuple[Any, str, Any, dict[str, str], int, str, str]] = [
        (a.create_org, "POST", {"name": "  "}, {}, 400, "INVALID_ARGUMENT", "needs a name"),
        (a.create_org, "POST", {"name": "x" * 65}, {}, 400, "INVALID_ARGUMENT", "at most 64"),
        (a.create_org, "POST", {"name": 7}, {}, 400, "INVALID_ARGUMENT", "name is a string"),
        (a.create_org, "POST", {"name": "x", "parent_id": "ou_nope"}, {}, 404, "NOT_FOUND", "ou_nope"),
        (a.create_org, "POST", {"name": "办公厅", "parent_id": hq["id"]}, {}, 409, "CONFLICT",
         "already a unit named"),
        (a.update_org, "PATCH", {"parent_id": leaf["id"]}, {"unit_id": hq["id"]}, 400,
         "INVALID_ARGUMENT", "under itself"),
        (a.update_org, "PATCH", {"parent_id": hq["id"]}, {"unit_id": hq["id"]}, 400,
         "INVALID_ARGUMENT", "under itself"),
        (a.update_org, "PATCH", {}, {"unit_id": hq["id"]}, 400, "INVALID_ARGUMENT", "new name"),
        (a.update_org, "PATCH", {"name": "x"}, {"unit_id": "ou_nope"}, 404, "NOT_FOUND", "ou_nope"),
        (a.delete_org, "DELETE", None, {"unit_id": sub["id"]}, 409, "NOT_EMPTY", "1 sub-unit"),
        (a.delete_org, "DELETE", None, {"unit_id": leaf["id"]}, 409, "NOT_EMPTY", "1 member"),
        (a.assign_unit, "PUT", {"unit_id": "ou_nope"}, {"name": "zhangwei"}, 404, "NOT_FOUND",
         "ou_nope"),
        (a.assign_unit, "PUT", {}, {"name": "zhangwei"}, 400, "INVALID_ARGUMENT", "unit_id"),
        (a.assign_unit, "PUT", {"unit_id": leaf["id"]}, {"name": "nobody"}, 404, "NOT_FOUND",
         "nobody"),
        (a.assign_unit, "PUT", {"unit_id": leaf["id"]}, {"name": "secadm"}, 403, "FORBIDDEN",
         "administrative"),
    ]
    from tongxin.errors import RequestError
    for handler, method, body, match, status, error, text in cases:
        try:
            got, out = await call(a, handler, method, "/x", body, match)
        except RequestError as err:  # the guard turns these into 400 INVALID_ARGUMENT
            got, out = 400, {"error": "INVALID_ARGUMENT", "message": err.message}
        assert (got, out["error"]) == (status, error), (body, match, out)
        assert text in out["message"], out
        assert await snapshot(store) == before
    assert (await store.org_assignments()) == {"u_li": leaf["id"]}
    denied = [r for r in comp.audited if r.get("outcome") == "denied"]
    assert {r["event"] for r in denied} >= {"org.create", "org.move", "org.delete", "org.assign"}
    assert all(r["actor"] == SYS.id and r["reason"] for r in denied)


async def test_deleting_a_user_takes_them_out_of_their_unit(
        api: tuple[AdminApi, FakeCompliance], store: SqliteStore) -> None:
    a, _ = api
    _, unit = await call(a, a.create_org, "POST", "/org", {"name": "总部"})
    await store.org_assign("u_zhang", unit["id"], 5)

    class Accounts:
        async def revoke_user(self, user_id: str) -> int:
            return 0

    a.node.accounts = cast(Any, Accounts())
    st, _ = await call(a, a.user_action("delete"), "DELETE", "/users/zhangwei", None,
                       {"name": "zhangwei"})
    assert st == 200 and await store.org_assignments() == {}
    st, _ = await call(a, a.delete_org, "DELETE", "/org/x", None, {"unit_id": unit["id"]})
    assert st == 200


async def test_groups_are_listed_paged_and_searched_without_content(
        api: tuple[AdminApi, FakeCompliance], store: SqliteStore) -> None:
    a, comp = api
    for i, name in enumerate(["项目组 A", "项目组 B", "Lunch", "项目组 C"]):
        cid = f"g:{i:02d}"
        await store.create_conversation(
            ConversationRow(cid, 2, name, 100 + i, "u_zhang", 0, 0),
            [("u_zhang", 3), ("u_li", 1)],
            Entry(cid, "u_zhang", "d", "c", 1, 1, b"secret words"))
    await store.create_conversation(ConversationRow("d:1", 1, "", 1, "u_li", 0, 0),
                                    [("u_zhang", 1), ("u_li", 1)],
                                    Entry("d:1", "u_li", "d", "c", 1, 1, b""))
    st, page1 = await call(a, a.list_groups, "GET", "/groups?q=项目组&limit=2")
    assert st == 200 and [g["name"] for g in page1["groups"]] == ["项目组 A", "项目组 B"]
    assert page1["more"] is True and page1["groups"][0]["created_by_username"] == "zhangwei"
    assert page1["groups"][0]["member_count"] == 2
    st, page2 = await call(a, a.list_groups, "GET",
                           f"/groups?q=项目组&limit=2&after={page1['next_after']}")
    assert [g["name"] for g in page2["groups"]] == ["项目组 C"] and page2["more"] is False
    st, every = await call(a, a.list_groups, "GET", "/groups")
    assert [g["id"] for g in every["groups"]] == ["g:00", "g:01", "g:02", "g:03"]  # no direct chats
    st, bad = await call(a, a.list_groups, "GET", "/groups?limit=ten")
    assert st == 400 and bad["error"] == "INVALID_ARGUMENT"
    st, members = await call(a, a.group_members, "GET", "/groups/g:00/members", None,
                             {"conversation_id": "g:00"})
    assert st == 200 and [(m["username"], m["role"]) for m in members["members"]] == [
        ("zhangwei", "owner"), ("lina", "member")]
    assert "secret" not in json.dumps(members) + json.dumps(every)
    for missing in ("g:nope", "d:1"):
        st, out = await call(a, a.group_members, "GET", "/x", None, {"conversation_id": missing})
        assert st == 404 and out["error"] == "NOT_FOUND"
    assert [r["event"] for r in comp.audited].count("group.list") == 3  # a refused limit reads nothing
    assert comp.audited[-1]["event"] == "group.members" and comp.audited[-1]["target"] == "g:00"


# ---- tongxin admin org (the CLI) ---------------------------------------------------


def test_cli_resolves_units_by_id_or_path() -> None:
    from tongxin.cli.org import resolve
    from tongxin.org.units import UnitNotFound

    units = list(CHAIN.units.values())
    assert resolve(units, "") == ""
    assert resolve(units, "c") == "c"
    assert resolve(units, "总部 / 办公厅/秘书处") == "c"
    with pytest.raises(UnitNotFound):
        resolve(units, "总部/秘书处")  # not a child of 总部


def test_cli_changes_the_tree_refuses_bad_changes_and_audits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tongxin.cli.main import main

    monkeypatch.setenv("TONGXIN_HOME", str(tmp_path / "home"))
    assert main(["admin", "org", "add", "总部"]) == 0
    assert main(["admin", "org", "add", "办公厅", "--parent", "总部"]) == 0
    assert main(["admin", "org", "add", "办公厅", "--parent", "总部"]) == 1
    assert main(["admin", "org", "move", "总部", "--parent", "总部/办公厅"]) == 1
    assert main(["admin", "org", "remove", "总部"]) == 1
    assert main(["admin", "org", "add", "x", "--parent", "nowhere"]) == 1
    err = capsys.readouterr().err
    assert "already a unit named '办公厅'" in err and "under itself" in err
    assert "1 sub-unit" in err and "no organisation unit 'nowhere'" in err
    assert main(["admin", "org", "list"]) == 0
    out = capsys.readouterr().out
    assert [line.split("\t")[0] for line in out.splitlines()] == ["总部", "  办公厅"]
    assert main(["admin", "org", "remove", "总部/办公厅"]) == 0
    assert main(["admin", "org", "list"]) == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["总部"]
    assert main(["audit", "tail"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    org_events = [(r["event"], r["outcome"]) for r in records if r["event"].startswith("org.")]
    assert org_events == [("org.create", "ok"), ("org.create", "ok"), ("org.create", "denied"),
                          ("org.move", "denied"), ("org.delete", "denied"), ("org.create", "denied"),
                          ("org.list", "ok"), ("org.delete", "ok"), ("org.list", "ok")]
    assert all(r["actor"].startswith("cli:") for r in records if r["event"].startswith("org."))
