"""Compliance commands: ``tongxin admin``, ``audit``, ``retention``, ``export``, ``report``.

They run on the node, against its data directory, as the service's OS user;
everything they change is audited with the actor ``cli:<os user>``, except the
sensitive ones (export, retention run, audit rotate-key), which need ``--admin``
with a second factor and record that administrator (tongxin.cli.admin_auth).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import getpass
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tongxin.config import Config

if TYPE_CHECKING:
    from tongxin.atrest.keyring import DekStore

Common = Callable[[argparse.ArgumentParser], None]


def _cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def _config(args: argparse.Namespace) -> Config:
    from tongxin.cli.main import _config as load

    return load(args)


def _run(coro: Coroutine[Any, Any, int]) -> int:
    return asyncio.run(coro)


async def _open(cfg: Config) -> Any:
    from tongxin.compliance.service import Compliance

    comp = Compliance(cfg)
    await comp.open()
    return comp


def _time_arg(value: str) -> int:
    """Milliseconds from an ISO-8601 date/time (UTC when no zone) or plain ms."""
    if value.isdigit():
        return int(value)
    dt = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.UTC)
    return int(dt.timestamp() * 1000)


async def audit_cli_action(cfg: Config, event: str, target: str, rc: int) -> None:
    """Record a ``tongxin user ...`` administration command in the audit trail."""
    comp = await _open(cfg)
    try:
        await comp.audit(event, actor=_cli_actor(), target=target,
                         outcome="ok" if rc == 0 else "failed", via="cli")
    finally:
        await comp.close()


# ---- admin -----------------------------------------------------------------------


def cmd_admin(args: argparse.Namespace) -> int:
    from tongxin.cli.main import _password, _with_accounts
    from tongxin.compliance import roles
    from tongxin.compliance.sms import SmsError, SmsRateLimited, SmsResult, SmsUnavailable
    from tongxin.errors import RequestError

    cfg = _config(args)

    async def run(acc: Any) -> int:
        comp = await _open(cfg)
        actor = _cli_actor()
        acc.cfg = await comp.account_policy(cfg.accounts)  # the nodes' (secadmin's changes)
        try:
            if args.action == "list":
                totp = set(await comp.store.totp_user_ids())
                sms = set(await comp.store.sms_user_ids())
                for u in await acc.store.list_users():
                    if roles.is_admin(u.role):
                        state = "disabled" if u.disabled else "active"
                        factors = [f for f, ids in (("totp", totp), ("sms", sms)) if u.id in ids]
                        print(f"{u.username}\t{u.role}\t{state}\t"
                              f"{'+'.join(factors) or 'NO SECOND FACTOR'}")
                return 0
            if args.action == "create":
                password = _password(args, confirm=True)
                try:
                    user = await acc.create_user(args.username, password, args.display_name or "",
                                                 role=args.role)
                except RequestError as err:
                    await comp.audit("admin.create", actor=actor, target=args.username,
                                     outcome="failed", role=args.role, reason=err.message)
                    print(f"tongxin: {err.message}", file=sys.stderr)
                    return 1
                secret, uri = await comp.totp.enroll(user.id, user.username, actor)
                await comp.audit("admin.create", actor=actor, target=user.username,
                                 user_id=user.id, role=args.role, totp="enrolled")
                print(f"created {user.username} ({user.id}) with role {args.role}")
                print(f"TOTP secret: {secret}")
                print(f"TOTP URI:    {uri}")
                print("Enter the secret (or the URI as a QR code) in an authenticator app now; "
                      "it is not shown again.")
                return 0
            user = await acc.store.get_user_by_name(args.username.lower())
            if user is None:
                print(f"tongxin: no user {args.username!r}", file=sys.stderr)
                return 1
            if args.action == "totp-reset":
                if not roles.is_admin(user.role):
                    print("tongxin: only administrative accounts have a second factor here",
                          file=sys.stderr)
                    return 1
                secret, uri = await comp.totp.enroll(user.id, user.username, actor)
                await comp.audit("totp.reset", actor=actor, target=user.username, user_id=user.id)
                print(f"TOTP secret: {secret}")
                print(f"TOTP URI:    {uri}")
                return 0
            if args.action in ("sms-enroll", "sms-remove"):
                if not roles.is_admin(user.role):
                    print("tongxin: only administrative accounts have a second factor here",
                          file=sys.stderr)
                    return 1
                if args.action == "sms-remove":
                    removed = await comp.sms.remove(user.id)
                    await comp.audit("sms.remove", actor=actor, target=user.username,
                                     user_id=user.id, removed=removed)
                    print(f"SMS number of {user.username} {'removed' if removed else 'was not set'}")
                    return 0
                who = {"actor": actor, "target": user.username, "user_id": user.id}
                try:
                    sent = await comp.sms.start_enrollment(user.id, user.username, args.phone,
                                                           actor)
                except ValueError as exc:
                    print(f"tongxin: {exc}", file=sys.stderr)
                    return 1
                except (SmsUnavailable, SmsRateLimited, SmsError) as exc:
                    await comp.audit("sms.enroll", outcome="failed", step="send",
                                     reason=str(exc), **who)
                    print(f"tongxin: no confirmation code sent: {exc}", file=sys.stderr)
                    return 1
                await comp.audit("sms.enroll", step="code_sent", phone=sent.phone_masked,
                                 expires_at=sent.expires_at, **who)
                # The number is enrolled only once the code sent to it comes back.
                print(f"confirmation code sent to {sent.phone_masked}; enter it: ", end="",
                      flush=True)
                code = (await asyncio.to_thread(sys.stdin.readline)).strip()
                result, masked = await comp.sms.confirm_enrollment(user.id, code, actor)
                if result is not SmsResult.OK:
                    await comp.audit("sms.enroll", outcome="failed", step="confirm",
                                     reason=result.value, **who)
                    print(f"\ntongxin: confirmation code {result.value}; the number is not "
                          "enrolled", file=sys.stderr)
                    return 1
                await comp.audit("sms.enroll", step="confirmed", phone=masked,
                                 provider=cfg.compliance.sms_provider, **who)
                print(f"SMS number {masked} enrolled for {user.username}")
                return 0
            return 2
        finally:
            await comp.close()

    return _run(_with_accounts(cfg, run))


# ---- audit -----------------------------------------------------------------------


def _print_verify(report: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
        return
    total = report.archived_records + report.hot_records
    print(f"records {report.first_seq}..{report.last_seq}: {total} checked "
          f"({report.archived_records} archived in {report.segments} segments, "
          f"{report.hot_records} in the database, {report.purged_records} purged by retention)")
    if report.manifest_signed is not None:
        print(f"archive manifest signature: {'verified' if report.manifest_signed else 'NOT VERIFIED'}")
    print(f"signed heads: {report.heads_verified} of {report.heads_total} verify; latest covers "
          f"record {report.latest_signed_seq}")
    print(f"anchors: {report.anchors_verified} of {report.anchors_total} verify; latest covers "
          f"record {report.latest_anchored_seq}")
    # Whole fingerprints: they are what an auditor compares with the pinned ones.
    print(f"trusted audit keys ({report.trust_source}): "
          f"{', '.join(report.key_fingerprints) or 'none'}")
    for fp, where in report.untrusted_keys.items():
        print(f"NOT TRUSTED (not pinned): {fp} in {where}")
    if report.ok:
        print("OK: the audit chain is intact")
        return
    first = report.first_problem
    print(f"BROKEN: first problem at record {first.seq} ({first.where}): {first.message}")
    for p in report.problems:
        print(f"  {p.where}\trecord {p.seq}\t{p.kind}\t{p.message}")


def cmd_audit(args: argparse.Namespace) -> int:
    from tongxin.cli.admin_auth import Refused, authorize, refused

    cfg = _config(args)

    async def run() -> int:
        comp = await _open(cfg)
        actor = _cli_actor()
        try:
            if args.action == "verify":
                report = await comp.verify([Path(p) for p in args.pubkey or []],
                                           args.anchor or [], args.empty_ok)
                await comp.audit("audit.verify", actor=actor, ok=report.ok,
                                 problems=len(report.problems))
                _print_verify(report, args.json)
                return 0 if report.ok else 1
            if args.action == "sign":
                head = await comp.sign_head(force=True)
                if head is None:
                    print("the audit log is empty; nothing to sign")
                    return 0
                print(f"signed head: record {head.seq} hash {head.hash} key {head.key_fp[:16]}")
                return 0
            if args.action == "archive":
                res = await comp.run_archive()
                print(f"archived {res.archived} records in {res.segments} segments; "
                      f"purged {res.purged_segments} segments past retention")
                return 0
            if args.action == "rotate-key":
                try:
                    who = await authorize(cfg, comp, args, "key.rotate", "key.rotate",
                                          "audit_sign")
                except Refused as exc:
                    return refused(exc)
                old = comp.keys.current_fingerprint()
                new = await comp.rotate_key()
                await comp.audit("key.rotate", target="audit_sign", old_fingerprint=old or "",
                                 new_fingerprint=new, **who.audit_fields())
                await comp.sign_head(force=True)
                print(f"new audit signing key {new}")
                # Until then its heads are signed by a key verification does not trust.
                print("pin it: add this fingerprint to compliance.audit_trusted_keys "
                      "(role appliance: appliance_audit_trusted_keys), keeping the old one")
                return 0
            if args.action == "tail":
                seq, _ = await comp.store.audit_state()
                rows = await comp.store.audit_records(max(0, seq - args.n), args.n)
                for r in rows:
                    print(r.body)
                return 0
            return 2
        finally:
            await comp.close()

    return _run(run())


# ---- admin policy: the password and lockout policy ------------------------------------


def _policy_value(text: str) -> Any:
    """A number from the command line; anything else is passed on for the check to name."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return None if text.lower() in ("", "none", "null") else text


def cmd_admin_policy(args: argparse.Namespace) -> int:
    """``tongxin admin policy show|set|unset``: the same change as the console's
    (PUT /api/v1/admin/policy): a security administrator with a TOTP code, every field
    checked before anything is stored, audited as ``policy.set`` with old and new values."""
    from tongxin.cli.admin_auth import Refused, authorize, refused
    from tongxin.cli.main import _refuse_on_standby
    from tongxin.compliance.account_policy import EDITABLE, check_changes, rules
    from tongxin.compliance.service import PolicyInvalid

    cfg = _config(args)
    if args.policy_action != "show":
        _refuse_on_standby(cfg, f"tongxin admin policy {args.policy_action}")

    async def run() -> int:
        comp = await _open(cfg)
        try:
            if args.policy_action == "show":
                in_force, overrides, stored = await comp.account_policy_state()
                for r in rules(in_force):
                    value = getattr(in_force, r.key)
                    where = (f"changed by the security administrator; configuration file: "
                             f"{getattr(cfg.accounts, r.key)}" if r.key in overrides
                             else "configuration file" if r.key in EDITABLE
                             else "configuration file only")
                    verdict = ("" if r.ok is None else
                               f"; 等保 {r.required}: {'meets' if r.ok else 'falls short'}")
                    print(f"accounts.{r.key} = {value}\t({where}{verdict})")
                if isinstance(stored, dict) and stored.get("at"):
                    when = datetime.datetime.fromtimestamp(stored["at"] / 1000, datetime.UTC)
                    print(f"last changed {when:%Y-%m-%d %H:%M:%S}Z by {stored.get('by', '?')}")
                return 0
            changes: dict[str, Any] = {}
            for item in args.settings:
                key, sep, value = item.partition("=")
                key = key.strip().removeprefix("accounts.")
                if args.policy_action == "set" and not sep:
                    print(f"tongxin: {item!r}: give KEY=VALUE (keys: {', '.join(EDITABLE)})",
                          file=sys.stderr)
                    return 2
                changes[key] = _policy_value(value.strip()) if args.policy_action == "set" else None
            # A typo costs no TOTP code: the same check runs before the administrator's
            # (and again, audited, when the change is made).
            _, errors = check_changes(changes)
            if errors:
                for err in errors.values():
                    print(f"tongxin: {err.message}", file=sys.stderr)
                return 2
            try:
                who = await authorize(cfg, comp, args, "policy.set", "policy.set", "accounts")
            except Refused as exc:
                return refused(exc)
            try:
                change = await comp.set_account_policy(changes, reason=args.reason or "",
                                                       **who.audit_fields())
            except PolicyInvalid as exc:
                for err in exc.errors.values():
                    print(f"tongxin: refused: {err.message}", file=sys.stderr)
                print("tongxin: nothing was changed", file=sys.stderr)
                return 1
            for key, fromto in change.changed.items():
                print(f"accounts.{key}: {fromto['from']} -> {fromto['to']}")
            if not change.changed:
                print("nothing changed: the values given are the ones in force")
            print("in force on every node that reads this store within a few seconds")
            return 0
        finally:
            await comp.close()

    return _run(run())


# ---- retention ---------------------------------------------------------------------


def cmd_retention(args: argparse.Namespace) -> int:
    from tongxin.cli.admin_auth import Refused, authorize, refused
    from tongxin.compliance.retention import RetentionBusy, effective_policies, run_retention
    from tongxin.server.node import make_store

    cfg = _config(args)

    async def run() -> int:
        comp = await _open(cfg)
        actor = _cli_actor()
        try:
            if args.action == "show":
                days, override = await comp.audit_retention()
                print(f"audit retention: {days:g} days{' (override)' if override else ''}")
                for scope, d in (await effective_policies(cfg, comp.store)).items():
                    print(f"messages {scope}: {d:g} days{' (forever)' if d == 0 else ''}")
                holds = await comp.store.holds()
                names: dict[str, str] = {}
                ids = {h.target for h in holds if h.kind == "user"} | {h.created_by
                                                                       for h in holds}
                if ids:
                    # A reader wants the people, not only the ids holds are keyed on.
                    history = make_store(cfg)
                    await history.open()
                    try:
                        for uid in ids:
                            u = await history.get_user(uid)
                            if u is not None:
                                names[uid] = f"{u.username} ({uid})"
                    finally:
                        await history.close()
                for h in holds:
                    when = datetime.datetime.fromtimestamp(h.created_at / 1000, datetime.UTC)
                    target = names.get(h.target, h.target) if h.kind == "user" else h.target
                    print(f"hold #{h.id}: {h.kind} {target} — {h.reason} "
                          f"(since {when:%Y-%m-%d %H:%M}Z, by "
                          f"{names.get(h.created_by, h.created_by)})")
                return 0
            if args.action == "run":
                # Deleting messages is the security administrator's (retention.set).
                try:
                    who = await authorize(cfg, comp, args, "retention.set", "retention.run")
                except Refused as exc:
                    return refused(exc)
                actor = who.audit_fields()["actor"]
                history = make_store(cfg)
                await history.open()
                try:
                    res = await run_retention(cfg, comp.store, history, actor=actor,
                                              max_batches=args.max_batches)
                except RetentionBusy as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return 1
                finally:
                    await history.close()
                await comp.audit("retention.run", run_id=res.run_id, deleted=res.deleted,
                                 finished=res.finished, resumed=res.resumed,
                                 skipped_on_hold=res.skipped_on_hold, **who.audit_fields())
                state = "finished" if res.finished else "stopped (run again to continue)"
                print(f"retention run #{res.run_id} {state}: {res.deleted} log entries (messages "
                      "and their events) deleted, "
                      f"{res.skipped_on_hold} conversations skipped for legal holds")
                return 0
            return 2
        finally:
            await comp.close()

    return _run(run())


# ---- export ------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from tongxin.cli.admin_auth import Refused, authorize, refused
    from tongxin.clock import now_ms
    from tongxin.compliance.export import export_messages, verify_export
    from tongxin.compliance.keys import parse_pins
    from tongxin.server.node import make_store

    cfg = _config(args)

    async def run() -> int:
        comp = await _open(cfg)
        actor = _cli_actor()
        try:
            if args.verify:
                problems = verify_export(Path(args.verify), comp.keys,
                                         parse_pins(cfg.compliance.audit_trusted_keys),
                                         [Path(p) for p in args.pubkey or []])
                for p in problems:
                    print(f"BROKEN: {p}")
                if not problems:
                    print("OK: the export verifies")
                return 1 if problems else 0
            if bool(args.user) == bool(args.conversation):
                print("tongxin: give --user or --conversation", file=sys.stderr)
                return 2
            try:
                who = await authorize(cfg, comp, args, "export.messages", "export.messages",
                                      f"user:{args.user}" if args.user
                                      else f"conversation:{args.conversation}")
            except Refused as exc:
                return refused(exc)
            actor = who.audit_fields()["actor"]
            if args.user:
                store = make_store(cfg)
                await store.open()
                try:
                    u = await store.get_user_by_name(args.user.lower())
                finally:
                    await store.close()
                if u is None:
                    print(f"tongxin: no user {args.user!r}", file=sys.stderr)
                    return 1
                kind, target, name = "user", u.id, u.username
            else:
                kind, target, name = "conversation", args.conversation, args.conversation
            history = make_store(cfg)
            await history.open()
            keyring = getattr(history, "keyring", None)
            if keyring is not None:
                keyring.audit = comp.hook  # rows withheld or read unsealed by the export
            try:
                path, manifest = await export_messages(
                    history, comp.keys, Path(args.out) if args.out else cfg.home / "exports",
                    kind=kind, target=target, target_name=name,
                    from_ms=_time_arg(args.from_) if args.from_ else 0,
                    to_ms=_time_arg(args.to) if args.to else now_ms() + 1,
                    actor=actor, now=now_ms())
            finally:
                await history.close()
            await comp.audit("export.messages", target=f"{kind}:{target}",
                             export_id=manifest["export_id"], records=manifest["records"],
                             from_ms=manifest["from_ms"], to_ms=manifest["to_ms"],
                             sm3=manifest["files"][0]["sm3"], **who.audit_fields())
            print(f"exported {manifest['records']} entries to {path}")
            return 0
        finally:
            await comp.close()

    return _run(run())


# ---- report ------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    from tongxin.compliance.report import build_report, write_report
    from tongxin.compliance.report_text import STATUS, summary_line
    from tongxin.server.node import make_store

    cfg = _config(args)

    async def run() -> int:
        comp = await _open(cfg)
        store = make_store(cfg)
        await store.open()
        try:
            report = await build_report(cfg, comp, await store.list_users(),
                                        generated_by=_cli_actor(),
                                        deks=cast("DekStore", store) if hasattr(store, "data_keys") else None)
            j, h = write_report(report, Path(args.out) if args.out else cfg.home / "reports")
            await comp.audit("report.compliance", actor=_cli_actor(), summary=report["summary"])
        finally:
            await store.close()
            await comp.close()
        s = report["summary"]
        # Chinese first; the English counts, the PASS/FAIL/GAP codes and the item ids
        # stay as they were for scripts ("PASS +BR-2 ").
        print(summary_line(s))
        for item in report["items"]:
            word = STATUS.get(item["status"], (item["status"],))[0]
            pad = " " * max(0, 6 - 2 * len(word))  # CJK characters are two columns wide
            print(f"  {word}{pad} {item['status'].upper():4}  {item['id']:5} {item['clause']:20} "
                  f"{item['title']}")
        print(f"已写入 {j} 和 {h}（wrote {j} and {h}）")
        if report["config_differs_from_node"]:
            keys = report["config_differs_from_node"]
            print(f"警告：本配置与节点最近一次启动时的配置不同（{'、'.join(keys)}），请使用节点的 "
                  f"--config。warning: this configuration differs from the one the node last "
                  f"started with ({', '.join(keys)}); pass the node's --config", file=sys.stderr)
        return 0 if s["fail"] == 0 else 1

    return _run(run())


# ---- parser ------------------------------------------------------------------------


def add_commands(sub: Any, common: Common) -> None:
    from tongxin.cli.admin_auth import add_arguments as add_admin_arguments

    a = sub.add_parser("admin", help="bootstrap administrative accounts (三员) on the node")
    asub = a.add_subparsers(dest="action", required=True)
    ac = asub.add_parser("create", help="create an administrative account and enrol its TOTP")
    common(ac)
    ac.add_argument("username")
    ac.add_argument("--role", required=True, choices=["sysadmin", "secadmin", "auditor"])
    ac.add_argument("--display-name")
    ac.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    al = asub.add_parser("list", help="administrative accounts and their second factor")
    common(al)
    at = asub.add_parser("totp-reset", help="enrol a new TOTP secret for an administrator")
    common(at)
    at.add_argument("username")
    se = asub.add_parser("sms-enroll", help="enrol a phone number for SMS codes (second factor): "
                                           "sends a code to it and asks for it back")
    common(se)
    se.add_argument("username")
    se.add_argument("phone", help="digits, optionally with a leading + (e.g. +8613800138000)")
    sr = asub.add_parser("sms-remove", help="remove an administrator's SMS number")
    common(sr)
    sr.add_argument("username")
    for sp in (ac, al, at, se, sr):
        sp.set_defaults(func=cmd_admin)
    ap = asub.add_parser("policy", help="the password and lockout policy: show it, change it "
                                       "(a security administrator with a TOTP code), or go back "
                                       "to the configuration file's value")
    apsub = ap.add_subparsers(dest="policy_action", required=True)
    aps = apsub.add_parser("show", help="each setting in force, where it comes from, against 等保")
    common(aps)
    apset = apsub.add_parser("set", help="change settings on every node (stored; wins over the "
                                         "configuration file)")
    apset.add_argument("settings", nargs="+", metavar="KEY=VALUE",
                       help="e.g. password_min_length=12 lockout_threshold=5")
    apun = apsub.add_parser("unset", help="drop stored changes: the configuration file's value "
                                          "applies again")
    apun.add_argument("settings", nargs="+", metavar="KEY")
    for sp in (apset, apun):
        common(sp)
        sp.add_argument("--reason", default="", help="kept in the audit record")
        add_admin_arguments(sp, "policy.set")
    for sp in (aps, apset, apun):
        sp.set_defaults(func=cmd_admin_policy)

    from tongxin.cli.org import add_commands as add_org_commands

    add_org_commands(asub, common)  # admin org list / add / rename / move / remove / assign

    au = sub.add_parser("audit", help="verify, sign, archive or read the audit trail")
    common(au)
    au.add_argument("action", choices=["verify", "sign", "archive", "rotate-key", "tail"])
    au.add_argument("--pubkey", action="append",
                    help="verify: trust exactly this audit public key (PEM; repeat for more) "
                    "instead of compliance.audit_trusted_keys; audit-keys/ is never trusted")
    au.add_argument("--anchor", action="append",
                    help="verify: an anchored signed head kept off the node (a file, a directory "
                    "holding it, or s3://bucket/key), besides the configured ones; the chain "
                    "must reach it and match it")
    au.add_argument("--empty-ok", action="store_true",
                    help="verify: accept an audit chain with no record at all (nothing signed)")
    au.add_argument("--json", action="store_true", help="verify: print the full result as JSON")
    au.add_argument("-n", type=int, default=20, help="tail: how many records")
    add_admin_arguments(au, "key.rotate")  # rotate-key
    au.set_defaults(func=cmd_audit)

    r = sub.add_parser("retention", help="message retention with legal holds")
    common(r)
    r.add_argument("action", choices=["run", "show"])
    r.add_argument("--max-batches", type=int, default=0,
                   help="stop after this many delete batches (the next run continues)")
    add_admin_arguments(r, "retention.set")  # run
    r.set_defaults(func=cmd_retention)

    e = sub.add_parser("export", help="signed compliance export of messages")
    common(e)
    e.add_argument("--user", help="a user's messages (username)")
    e.add_argument("--conversation", help="a conversation's messages (id)")
    e.add_argument("--from", dest="from_", help="start (ISO-8601, UTC when no zone, or ms)")
    e.add_argument("--to", help="end, exclusive (ISO-8601 or ms; default now)")
    e.add_argument("--out", help="directory for the export (default <data_dir>/exports)")
    e.add_argument("--verify", metavar="DIR", help="verify an export directory instead")
    e.add_argument("--pubkey", action="append",
                   help="--verify: trust exactly this audit public key (PEM; repeat for more) "
                   "instead of compliance.audit_trusted_keys")
    add_admin_arguments(e, "export.messages")
    e.set_defaults(func=cmd_export)

    rp = sub.add_parser("report", help="compliance report (等保 2.0 level 3)")
    common(rp)
    rp.add_argument("kind", choices=["compliance"])
    rp.add_argument("--out", help="directory for compliance-report.{json,html} (default "
                    "<data_dir>/reports)")
    rp.set_defaults(func=cmd_report)
