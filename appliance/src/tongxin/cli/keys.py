"""``tongxin keys``: the master key of encryption at rest (docs/operations.md, "Keys").

    keys init     create the master key file (0600) if there is none
    keys status   provider, current KEK, data keys per KEK (an unfinished rotation shows)
    keys rotate   new KEK, every data key re-wrapped in batches while nodes keep serving;
                  run again after an interruption and it finishes the interrupted rotation

``keys org-root``, ``keys escrow-key``, ``keys escrow-sign`` and ``keys escrow-split`` are
offline file operations for the compliance escrow (tongxin.cli.org_root).

The others run on a node as the service's OS user. ``init`` and ``rotate`` are key management
(``key.rotate``, the security administrator's): they need ``--admin USERNAME`` with the
password and a current TOTP code, like the admin API's step-up (tongxin.cli.admin_auth);
``init`` also takes ``--break-glass REASON`` while no security administrator with a TOTP
exists (a first install). Every run is audited with the administrator as actor,
refusals and failures included; ``status`` only reads.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from tongxin.cli import org_root
from tongxin.config import Config


def _config(args: argparse.Namespace) -> Config:
    from tongxin.cli.main import _config as load

    return load(args)


def cmd_keys(args: argparse.Namespace) -> int:
    from tongxin.atrest.errors import AtRestError
    from tongxin.cli.admin_auth import Refused, refused

    cfg = _config(args)
    if args.action in org_root.ACTIONS:
        return org_root.run(args, cfg.crypto.suite)
    try:
        if args.action == "status":
            return asyncio.run(_keys(cfg, args, None))
        return asyncio.run(_authorised(cfg, args))
    except Refused as exc:
        return refused(exc)
    except AtRestError as exc:
        print(f"tongxin: {exc}", file=sys.stderr)
        return 1


async def _authorised(cfg: Config, args: argparse.Namespace) -> int:
    """init and rotate: an administrator authorises, the compliance store records."""
    from tongxin.cli.admin_auth import authorize
    from tongxin.compliance.service import Compliance

    comp = Compliance(cfg)
    # Before `keys init` there may be no master key: opening the keyring would make one.
    await comp.open(load_keyring=args.action != "init" or cfg.master_key_file.exists()
                    or bool(cfg.keys.kms_command))
    try:
        actor = await authorize(cfg, comp, args, "key.rotate", f"keys.{args.action}",
                                "master key", break_glass_ok=args.action == "init")

        async def record(event: str, outcome: str, **details: Any) -> None:
            await comp.audit(event, target="master key", outcome=outcome,
                             **actor.audit_fields(), **details)

        return await _keys(cfg, args, record)
    finally:
        await comp.close()


Audit = Callable[..., Coroutine[Any, Any, None]]


async def _keys(cfg: Config, args: argparse.Namespace, audit: Audit | None) -> int:
    """``audit`` records as the authorising administrator (None: ``status``, no records)."""
    from tongxin.atrest.keyring import DekStore
    from tongxin.atrest.providers import make_provider
    from tongxin.atrest.records import init_key_file
    from tongxin.atrest.rotate import key_status, rotate_audited
    from tongxin.server.node import make_store

    if args.action == "init":
        if cfg.keys.kms_command:
            print("tongxin: keys.kms_command is set: the KMS holds the master key", file=sys.stderr)
            return 1
        made = await asyncio.to_thread(init_key_file, cfg.master_key_file, cfg.crypto.suite)
        if made and audit is not None:
            await audit("keys.init", "ok", file=str(cfg.master_key_file))
        print(f"{'created' if made else 'kept the existing'} master key file "
              f"{cfg.master_key_file}")
        return 0
    store = make_store(cfg)
    store.atrest_config = None  # type: ignore[attr-defined]  # no DEK made for a status query
    await store.open()
    try:
        provider = await asyncio.to_thread(make_provider, cfg.master_key_file,
                                           cfg.keys.kms_command, cfg.crypto.suite)
        deks: DekStore = store  # type: ignore[assignment]  # both stores implement it
        if args.action == "status":
            st = await key_status(provider, deks)
            print(f"provider: {st.provider}")
            print(f"current KEK: {st.current_kek}")
            for kek, n in sorted(st.by_kek.items()):
                mark = " (current)" if kek == st.current_kek else ""
                print(f"data keys under KEK {kek}: {n}{mark}")
            if st.pending:
                print(f"rotation unfinished: {st.pending} data keys still under older KEKs; "
                      "run `tongxin keys rotate` again")
            return 3 if st.pending else 0

        def progress(n: int) -> None:
            print(f"re-wrapped {n} data keys", flush=True)

        res = await rotate_audited(provider, deks, audit, batch=args.batch, progress=progress,
                                   max_batches=args.max_batches)
        state = "complete" if res.complete else "stopped early (run again to finish)"
        print(f"rotation to KEK {res.kek_id} {state}: {res.rewrapped} data keys re-wrapped"
              + (f", retired KEKs {', '.join(res.retired)}" if res.retired else ""))
        return 0 if res.complete else 3
    finally:
        await store.close()


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def add_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    from tongxin.cli.admin_auth import add_arguments as add_admin_arguments

    k = sub.add_parser("keys", help="master key of encryption at rest: init, status, rotate; "
                       "compliance escrow: org-root, escrow-key, escrow-sign, escrow-split")
    common(k)
    k.add_argument("action", choices=["init", "status", "rotate", *org_root.ACTIONS])
    k.add_argument("--batch", type=_positive, default=100, help="data keys re-wrapped per batch")
    k.add_argument("--max-batches", type=_positive, default=None,
                   help="stop after this many batches (run again to go on)")
    add_admin_arguments(k, "key.rotate", break_glass=True)
    org_root.add_arguments(k)
    k.set_defaults(func=cmd_keys)
