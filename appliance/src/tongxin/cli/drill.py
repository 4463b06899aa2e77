"""``tongxin drill``: the DR drill's workload, marks, waits and report (docs/operations.md,
"DR drill report"). The drill playbooks call these commands; each prints what it did
and how long it took, for the operator watching the playbook.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tongxin.drill.files import (
    FAILED,
    MARKS_LOG,
    OUTPUT,
    PASSWORD,
    RUNNING,
    STATE,
    WORKLOAD_LOG,
    DrillFileError,
    DrillState,
    DrillUser,
    TailReader,
    append_record,
    pid_alive,
    read_records,
    read_state,
    tail,
)

EXIT_FAILED, EXIT_ERROR = 1, 2


def _entries(text: str) -> list[str]:
    out = [e.strip() for e in text.split(",") if e.strip()]
    for e in out:
        if not e.startswith(("ws://", "wss://")):
            raise SystemExit(f"tongxin drill: entry {e!r} is not a ws:// or wss:// URL")
    if not out:
        raise SystemExit("tongxin drill: --entries names no entry")
    return out


def _read_password(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, IndexError) as exc:
        raise SystemExit(f"tongxin drill: cannot read a password from {path}: {exc}") from None


def _elapsed(t0: float) -> str:
    return f"{time.monotonic() - t0:.1f} s"


# ---- start ------------------------------------------------------------------------------


def cmd_start(args: argparse.Namespace) -> int:
    from tongxin.drill.workload import user_names

    t0 = time.monotonic()
    state_dir = Path(args.state_dir)
    if args.users < 2 or args.rate <= 0 or args.groups < 0 or args.groups > args.users // 2:
        print("tongxin drill: need --users >= 2, --rate > 0 and 0 <= --groups <= users/2 "
              "(every group has two members or more)", file=sys.stderr)
        return EXIT_ERROR
    entries = _entries(args.entries)
    if args.foreground_child:
        return _run_foreground(args, state_dir, entries)
    if (state_dir / WORKLOAD_LOG).exists() or (state_dir / STATE).exists():
        print(f"tongxin drill: {state_dir} already holds a drill; give each drill a new "
              "--state-dir", file=sys.stderr)
        return EXIT_ERROR
    state_dir.mkdir(parents=True, exist_ok=True)
    password_file = args.password_file
    if not password_file:
        # A password of its own for the drill's users, readable by the service user only.
        password_file = str(state_dir / PASSWORD)
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(f"Drill-{secrets.token_urlsafe(15)}-9a\n")
        print(f"drill users' password generated in {password_file}")
    password = _read_password(password_file)
    names = user_names(args.user_prefix, args.users)
    if args.create_users_with and _create_users(args.create_users_with, names, password):
        return EXIT_FAILED
    if args.foreground:
        return _run_foreground(args, state_dir, entries, password_file)
    child = [sys.executable, "-m", "tongxin.cli.main", "drill", "start", "--state-dir",
             str(state_dir), "--entries", ",".join(entries), "--users", str(args.users),
             "--groups", str(args.groups), "--rate", str(args.rate), "--password-file",
             password_file, "--user-prefix", args.user_prefix, "--send-timeout",
             str(args.send_timeout), "--connect-timeout", str(args.connect_timeout),
             "--duration", str(args.duration), "--foreground-child"]
    if args.ca:
        child += ["--ca", args.ca]
    if args.register:
        child.append("--register")
    with open(state_dir / OUTPUT, "ab") as out:
        proc = subprocess.Popen(child, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, close_fds=True)
    deadline = time.monotonic() + args.setup_timeout
    while time.monotonic() < deadline:
        try:
            state = read_state(state_dir)
        except DrillFileError:
            state = None
        if state is not None and state.status == RUNNING:
            print(f"workload running (pid {proc.pid}): {args.users} users over "
                  f"{len(entries)} entries, {len(state.conversations)} conversations, "
                  f"{args.rate:g} msg/s; set up in {_elapsed(t0)}; output in "
                  f"{state_dir / OUTPUT}")
            return 0
        if proc.poll() is not None or (state is not None and state.status == FAILED):
            print(f"tongxin drill: the workload failed to start:\n{tail(state_dir / OUTPUT)}",
                  file=sys.stderr)
            return EXIT_FAILED
        time.sleep(0.2)
    print(f"tongxin drill: the workload is not running after {args.setup_timeout:g} s "
          f"(pid {proc.pid} left running; `tongxin drill stop` ends it):\n"
          f"{tail(state_dir / OUTPUT)}", file=sys.stderr)
    return EXIT_FAILED


def _create_users(template: str, names: list[str], password: str) -> int:
    """Run the operator's command once per user ({user} replaced, the password on stdin).

    A failure is reported, not fatal: the account may exist from an earlier drill;
    the workload's login is what decides."""
    t0 = time.monotonic()
    for name in names:
        cmd = template.replace("{user}", shlex.quote(name))
        try:
            proc = subprocess.run(["/bin/sh", "-c", cmd], input=password + "\n", text=True,
                                  capture_output=True, timeout=120, check=False)
        except subprocess.TimeoutExpired:
            print(f"tongxin drill: creating {name} timed out: {cmd}", file=sys.stderr)
            return EXIT_FAILED
        last = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
        print(f"  {name}: " + ("created" if proc.returncode == 0
                               else f"exit {proc.returncode} ({last[0]})"))
    print(f"ran --create-users-with for {len(names)} users in {_elapsed(t0)}")
    return 0


def _run_foreground(args: argparse.Namespace, state_dir: Path, entries: list[str],
                    password_file: str = "") -> int:
    from tongxin.cli.main import _run
    from tongxin.drill.workload import Options, entry_order, run_workload, user_names

    password_file = password_file or args.password_file
    names = user_names(args.user_prefix, args.users)
    state = DrillState(run_id=secrets.token_hex(4), entries=entries,
                       users=[DrillUser(n, entries=entry_order(entries, i))
                              for i, n in enumerate(names)],
                       rate=args.rate, groups=args.groups,
                       password_file=str(Path(password_file).resolve()), ca_file=args.ca or "")
    opts = Options(state_dir=state_dir, entries=entries, users=args.users, groups=args.groups,
                   rate=args.rate, password=_read_password(password_file),
                   password_file=password_file, ca_file=args.ca or "", register=args.register,
                   user_prefix=args.user_prefix, send_timeout=args.send_timeout,
                   connect_timeout=args.connect_timeout, duration=args.duration,
                   run_id=state.run_id)

    def say(text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)

    return _run(run_workload(opts, state, say))


# ---- mark ---------------------------------------------------------------------------------


def cmd_mark(args: argparse.Namespace) -> int:
    from tongxin.clock import now_ms
    from tongxin.drill.measure import DrillLog

    state_dir = Path(args.state_dir)
    state = read_state(state_dir)
    at = now_ms()
    append_record(state_dir / MARKS_LOG, {"type": "mark", "at": at, "event": args.event,
                                          "note": args.note or ""})
    log = DrillLog.from_records([], [], read_records(state_dir / MARKS_LOG))
    since = [f"+{(at - state.started_at) / 1000:.1f} s since the workload started"]
    earlier = [m for m in log.marks if m.at < at]
    if earlier:
        since.append(f"+{(at - earlier[-1].at) / 1000:.1f} s since {earlier[-1].event!r}")
    print(f"marked {args.event!r} at {_iso(at)} ({', '.join(since)})")
    if state.status != RUNNING or not pid_alive(state.pid):
        print(f"warning: the workload is not running (status {state.status})", file=sys.stderr)
    return 0


def _iso(ms: int) -> str:
    from tongxin.drill.html import _iso as iso

    return iso(ms)


# ---- wait ---------------------------------------------------------------------------------


def cmd_wait(args: argparse.Namespace) -> int:
    from tongxin.drill.measure import (
        AckRecord,
        DrillLog,
        find_mark,
        first_ack_after,
        recovered_at,
    )

    t0 = time.monotonic()
    state_dir = Path(args.state_dir)
    state = read_state(state_dir)
    users = [u.username for u in state.users]
    marks = DrillLog.from_records([], [], read_records(state_dir / MARKS_LOG)).marks
    mark = find_mark(marks, args.event)
    if mark is None:
        print(f"tongxin drill: no {args.event!r} mark in {state_dir} (`tongxin drill mark "
              f"{args.event}` first)", file=sys.stderr)
        return EXIT_ERROR
    reader = TailReader(state_dir / WORKLOAD_LOG)
    acks: list[AckRecord] = []
    deadline = t0 + args.timeout
    while True:
        acks += [a for a in (AckRecord.from_record(r) for r in reader.read_new()
                             if r.get("type") == "ack") if a.first_sent_at > mark.at]
        if args.condition == "first-ack-after":
            first = first_ack_after(acks, mark.at)
            if first is not None:
                print(f"first ACK of a new message {(first.acked_at - mark.at) / 1000:.3f} s "
                      f"after {args.event!r} ({first.user} through {first.entry}); waited "
                      f"{_elapsed(t0)}")
                return 0
            pending = "no new message acknowledged yet"
        else:
            rec = recovered_at(acks, users, mark.at)
            waiting = sorted(u for u, v in rec.items() if v is None)
            if not waiting:
                last_user = max(rec, key=lambda u: rec[u] or 0)
                last_at = rec[last_user] or mark.at
                print(f"all {len(users)} users sending again {(last_at - mark.at) / 1000:.3f} s "
                      f"after {args.event!r} (last: {last_user}); waited {_elapsed(t0)}")
                return 0
            pending = (f"{len(waiting)} of {len(users)} users not back: "
                       + ", ".join(waiting[:10]) + (" ..." if len(waiting) > 10 else ""))
        if time.monotonic() >= deadline:
            print(f"tongxin drill: timed out after {_elapsed(t0)} waiting for "
                  f"{args.condition} {args.event!r}: {pending}", file=sys.stderr)
            return EXIT_FAILED
        state = read_state(state_dir)
        if not pid_alive(state.pid):
            print(f"tongxin drill: the workload is not running (status {state.status}): "
                  f"{pending}", file=sys.stderr)
            return EXIT_FAILED
        time.sleep(0.25)


# ---- stop ---------------------------------------------------------------------------------


def cmd_stop(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    state_dir = Path(args.state_dir)
    state = read_state(state_dir)
    if not pid_alive(state.pid):
        print(f"the workload is not running (status {state.status})")
        return 0 if state.status != FAILED else EXIT_FAILED
    os.kill(state.pid, signal.SIGTERM)
    deadline = t0 + args.timeout
    while pid_alive(state.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(state.pid):
        # In-flight sends are bounded by --send-timeout; past --timeout it is stuck.
        os.kill(state.pid, signal.SIGKILL)
        print(f"warning: the workload did not stop within {args.timeout:g} s; killed "
              "(its last batch of records may be lost)", file=sys.stderr)
    counts: dict[str, int] = {}
    for r in read_records(state_dir / WORKLOAD_LOG):
        counts[str(r.get("type"))] = counts.get(str(r.get("type")), 0) + 1
    print(f"stopped the workload (pid {state.pid}) in {_elapsed(t0)}: "
          f"{counts.get('send', 0)} attempts, {counts.get('ack', 0)} acknowledged, "
          f"{counts.get('error', 0)} errors, {counts.get('login', 0)} logins")
    return 0


# ---- report -------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    from tongxin.cli.main import _run

    return _run(_report(args))


async def _report(args: argparse.Namespace) -> int:
    from tongxin import __version__
    from tongxin.clock import now_ms
    from tongxin.drill.measure import DrillLog, check_delivery, evaluate, parse_targets
    from tongxin.drill.readback import ReadBackError, read_back, server_versions
    from tongxin.drill.report import build_report, write_report

    t0 = time.monotonic()
    state_dir = Path(args.state_dir)
    state = read_state(state_dir)
    try:
        targets = parse_targets(args.targets)
    except ValueError as exc:
        print(f"tongxin drill: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if pid_alive(state.pid):
        print("tongxin drill: the workload is still running: `tongxin drill stop` first",
              file=sys.stderr)
        return EXIT_ERROR
    entries = _entries(args.entries) if args.entries else state.entries
    ca = args.ca if args.ca is not None else state.ca_file
    log = DrillLog.from_records([u.username for u in state.users],
                                read_records(state_dir / WORKLOAD_LOG),
                                read_records(state_dir / MARKS_LOG))
    print(f"read the workload's log: {log.sends} attempts, {len(log.acks)} acknowledged, "
          f"{len(log.errors)} errors, {len(log.marks)} marks ({_elapsed(t0)})")
    password = _read_password(args.password_file or state.password_file)
    t1 = time.monotonic()
    try:
        back = await read_back(state, entries, password, ca, within=args.readback_timeout)
    except ReadBackError as exc:
        print(f"tongxin drill: {exc}; nothing concluded, no evidence written", file=sys.stderr)
        return EXIT_ERROR
    versions = {"tongxin": __version__, "servers": await server_versions(entries, ca)}
    delivery = check_delivery(log.acks, back.logs)
    print(f"checked {len(log.acks)} ACKs against the read-back: {delivery.raw.summary()} "
          f"({_elapsed(t1)})")
    measurement = evaluate(args.kind, log, delivery, targets, args.disaster_mark)
    report = build_report(kind=args.kind, state=state, log=log, delivery=delivery,
                          measurement=measurement, targets=targets, read_entries=entries,
                          versions=versions, finished_at=now_ms(), stored=back.stored)
    json_path, html_path = write_report(report, Path(args.evidence_dir),
                                        Path(args.html) if args.html else None)
    _print_summary(report)
    print(f"wrote {json_path} and {html_path} ({_elapsed(t0)} in all)")
    return 0 if report["ok"] else EXIT_FAILED


def _print_summary(r: dict[str, Any]) -> None:
    from tongxin.drill.html import mark_label

    def s(v: float | None) -> str:
        return "not measured" if v is None else f"{v:g} s"

    t = r["targets"]
    print(f"RPO {s(r['rpo_seconds'])} (target {t['rpo']:g} s); RTO {s(r['rto_seconds'])} "
          f"(target {t['rto']:g} s); every user back after {s(r['rto_all_users_seconds'])}")
    print(f"{r['acked']} acknowledged, {r['lost']} lost ({r['missing']} missing, "
          f"{r['mismatched']} replaced), {r['duplicated']} duplicated, {r['disorder']} out of "
          "order")
    for st in r["steps"]:
        since = "" if st["since_disaster"] is None else f"{st['since_disaster']:+.1f} s"
        dur = "" if st["duration"] is None else f"{st['duration']:.1f} s"
        print(f"  {mark_label(st['name']):32} {since:>10} {dur:>10}")
    for p in r["problems"]:
        print(f"  problem: {p}")
    print("drill " + ("PASSED" if r["ok"] else "FAILED"))


# ---- parser -------------------------------------------------------------------------------


def _friendly(func: Any) -> Any:
    """A missing or damaged state directory is the operator's to fix: one line, exit 2."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except DrillFileError as exc:
            print(f"tongxin drill: {exc}", file=sys.stderr)
            return EXIT_ERROR

    return wrapped


def add_commands(sub: Any) -> None:
    from tongxin.drill.measure import DISASTER, KINDS

    d = sub.add_parser("drill", help="DR drill: workload, marks, RPO/RTO report")
    dsub = d.add_subparsers(dest="action", required=True)

    def state_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument("--state-dir", required=True,
                       help="the drill's directory: its state, logs and marks")

    s = dsub.add_parser("start", help="start the workload (in the background unless "
                        "--foreground); returns once it is sending")
    state_dir(s)
    s.add_argument("--entries", required=True,
                   help="entry points, comma-separated ws:// or wss:// URLs; user i starts at "
                   "entry i mod N and fails over to the next")
    s.add_argument("--users", type=int, default=6, help="simulated users (default 6)")
    s.add_argument("--groups", type=int, default=2,
                   help="group conversations that split the users (default 2)")
    s.add_argument("--rate", type=float, default=20.0,
                   help="messages per second, all users together (default 20)")
    s.add_argument("--ca", default=None, help="PEM CA bundle for wss:// entries")
    s.add_argument("--password-file", default="",
                   help="the drill users' password (first line); default: generate one into "
                   "STATE_DIR/password")
    s.add_argument("--user-prefix", default="drill",
                   help="usernames are PREFIX01..PREFIXnn (default drill)")
    s.add_argument("--create-users-with", default="", metavar="CMD",
                   help="shell command run once per user before the start, {user} replaced "
                   "and the password on stdin, e.g. 'tongxin user add {user} --password-stdin'")
    s.add_argument("--register", action="store_true",
                   help="register the users through the entries (accounts.self_registration)")
    s.add_argument("--foreground", action="store_true", help="run here until stopped")
    s.add_argument("--duration", type=float, default=0.0,
                   help="stop by itself after this many seconds (default: run until stopped)")
    s.add_argument("--send-timeout", type=float, default=10.0,
                   help="seconds without an ACK before a send counts as failed (default 10)")
    s.add_argument("--connect-timeout", type=float, default=10.0,
                   help="seconds to connect and log in through one entry (default 10)")
    s.add_argument("--setup-timeout", type=float, default=180.0,
                   help="seconds the background start waits for the workload to send "
                   "(default 180)")
    s.add_argument("--foreground-child", action="store_true", help=argparse.SUPPRESS)
    s.set_defaults(func=_friendly(cmd_start))

    m = dsub.add_parser("mark", help="record a timeline event (disaster, promoted, ...)")
    state_dir(m)
    m.add_argument("event", help=f"the event's name; the report measures from {DISASTER!r}")
    m.add_argument("--note", default="", help="free text shown in the report")
    m.set_defaults(func=_friendly(cmd_mark))

    w = dsub.add_parser("wait", help="wait until a condition holds after a mark")
    state_dir(w)
    w.add_argument("--for", dest="condition", required=True,
                   choices=["first-ack-after", "all-online"],
                   help="first-ack-after: a new message was ACKed after the mark; all-online: "
                   "every workload user (logged in again if it lost its connection) had a new "
                   "message ACKed")
    w.add_argument("event", nargs="?", default=DISASTER,
                   help=f"the mark (its latest occurrence; default {DISASTER})")
    w.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")
    w.set_defaults(func=_friendly(cmd_wait))

    st = dsub.add_parser("stop", help="stop the workload (SIGTERM; in-flight sends finish)")
    state_dir(st)
    st.add_argument("--timeout", type=float, default=30.0,
                    help="seconds before it is killed (default 30)")
    st.set_defaults(func=_friendly(cmd_stop))

    r = dsub.add_parser("report", help="read back, check, measure; write the evidence JSON "
                        "and the HTML page")
    state_dir(r)
    r.add_argument("--kind", required=True, choices=list(KINDS),
                   help="incity: nothing may be lost; dr: only what was ACKed before the "
                   "disaster, within the RPO target")
    r.add_argument("--entries", default="",
                   help="entries to read back through (default: the workload's)")
    r.add_argument("--evidence-dir", required=True,
                   help="where dr-drill-<kind>-<UTC>.json goes (<data_dir>/evidence for BR-2)")
    r.add_argument("--html", default="", help="the HTML page (default: beside the JSON)")
    r.add_argument("--targets", default="",
                   help="rpo=SECONDS,rto=SECONDS[,rto_all_users=SECONDS] (default rpo=15,rto=300; "
                   "rto_all_users defaults to rto)")
    r.add_argument("--password-file", default="", help="default: the one start used")
    r.add_argument("--ca", default=None, help="default: the one start used")
    r.add_argument("--disaster-mark", default=DISASTER,
                   help=f"the mark RPO and RTO are measured from (default {DISASTER})")
    r.add_argument("--readback-timeout", type=float, default=60.0,
                   help="seconds to keep trying the entries for the read-back (default 60)")
    r.set_defaults(func=_friendly(cmd_report))
