"""``tongxin provision``: take an OpenTofu environment from nothing to hosts and
an Ansible inventory, and back (see docs/operations.md, "From an empty cloud
to a running install").

    tongxin provision init    ENV_DIR
    tongxin provision plan    ENV_DIR [--var-file F] [--var NAME=VALUE]
    tongxin provision apply   ENV_DIR [...] [--inventory PATH]   init + apply + write the inventory
    tongxin provision output  ENV_DIR [NAME]                     outputs as JSON
    tongxin provision destroy ENV_DIR [...] [--inventory PATH]   destroy + remove that inventory
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tongxin.provision import Environment, ProvisionError, find_tofu, parse_var, write_inventory


def _environment(args: argparse.Namespace) -> Environment:
    variables = dict(parse_var(v) for v in args.var or [])
    if args.inventory:
        # The environment's own local_file writes the same file: one path.
        variables.setdefault("inventory_path", str(Path(args.inventory).resolve()))
    return Environment(
        directory=Path(args.env_dir),
        tofu=find_tofu(args.tofu),
        var_files=[Path(f) for f in args.var_file or []],
        variables=variables,
        workspace=args.workspace,
    )


def _log(text: str) -> None:
    print(f"provision: {text}", file=sys.stderr, flush=True)


def cmd_provision(args: argparse.Namespace) -> int:
    try:
        if args.name and args.action != "output":
            raise ProvisionError(f"unexpected argument {args.name!r} (only `output` takes a NAME)")
        env = _environment(args)
        # Progress of long steps goes straight to the terminal; quick ones are
        # captured and only shown when they fail.
        stream = not args.quiet
        if args.action == "init":
            env.init(capture=not stream)
        elif args.action == "plan":
            env.init()
            changes = env.plan(capture=not stream)
            _log("changes pending" if changes else "no changes")
            return 2 if changes and args.detailed_exitcode else 0
        elif args.action == "apply":
            env.init()
            env.apply(capture=not stream)
            path = write_inventory(env.outputs(), Path(args.inventory) if args.inventory else None)
            _log(f"inventory written to {path}")
            print(path)
        elif args.action == "output":
            outputs = env.outputs()
            if args.name:
                if args.name not in outputs:
                    raise ProvisionError(f"no output {args.name!r} (have: {', '.join(sorted(outputs))})")
                value: Any = outputs[args.name]
                print(value if isinstance(value, str) else json.dumps(value, indent=2, sort_keys=True))
            else:
                print(json.dumps(outputs, indent=2, sort_keys=True))
        elif args.action == "destroy":
            env.init()
            env.destroy(capture=not stream)
            if args.inventory:
                Path(args.inventory).unlink(missing_ok=True)
            _log("destroyed")
        return 0
    except ProvisionError as exc:
        print(f"tongxin provision: {exc}", file=sys.stderr)
        return 1


def add_commands(sub: Any) -> None:
    """Register ``tongxin provision`` on the top-level sub-parsers."""
    p = sub.add_parser("provision", help="create or destroy an environment's hosts with OpenTofu",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["init", "plan", "apply", "output", "destroy"])
    p.add_argument("env_dir", help="OpenTofu environment directory, e.g. terraform/environments/lab")
    p.add_argument("name", nargs="?", default="", help="output: only this output")
    p.add_argument("--var-file", action="append", metavar="FILE", help="tofu -var-file (repeatable)")
    p.add_argument("--var", action="append", metavar="NAME=VALUE", help="tofu -var (repeatable)")
    p.add_argument("--workspace", help="tofu workspace (TF_WORKSPACE): separate state, e.g. for a test")
    p.add_argument("--inventory", metavar="PATH",
                   help="write the Ansible inventory here (default: the environment's inventory_path)")
    p.add_argument("--tofu", help="tofu binary (default: $TONGXIN_TOFU, the build-tools.sh cache, PATH)")
    p.add_argument("--quiet", action="store_true", help="capture tofu's output, show it only on failure")
    p.add_argument("--detailed-exitcode", action="store_true", help="plan: exit 2 when there are changes")
    p.set_defaults(func=cmd_provision)
