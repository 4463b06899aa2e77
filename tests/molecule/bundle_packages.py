"""Check that the offline bundle carries every Debian package a role installs.

The roles name their packages in ``vars/Debian.yml`` (``*_packages`` lists, some
installed only with a feature on) and in ``vars/main.yml`` (maps such as the
filesystem tools). A package missing from ``appliance/scripts/bundle-debs.txt``
installs fine on a host with a mirror and fails on the offline hosts the bundle
is for (issue 19: role pki's python3-cryptography was missing). Run by
``tests/molecule/run.sh --lint``; exits 1 and names what is missing.

    python tests/molecule/bundle_packages.py [--root DIR]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

# Packages of Debian 12's base install (Priority: required or important), which
# bundle.sh leaves out on purpose; a role may still name them for other families.
IN_BASE = {
    "e2fsprogs": "Priority: required",
}
# Packages a role takes from the host's own repositories on purpose: the hosts
# that need them run an older release than the bundle's Debian 12 packages fit.
FROM_HOST = {
    # role appliance, runtime oci: hosts whose Python is older than 3.11 (docs/ansible.md)
    "podman": "appliance_oci_packages",
}


def _names(value: object) -> Iterator[str]:
    """Package names in a vars value: strings in lists, through nested maps; templated
    strings are computed from other lists and skipped."""
    if isinstance(value, str):
        if "{{" not in value and value.strip():
            yield value.strip()
    elif isinstance(value, list):
        for item in value:
            yield from _names(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _names(item)


def role_packages(roles: Path) -> dict[str, set[str]]:
    """Package name -> the roles that name it."""
    found: dict[str, set[str]] = {}
    for vars_file in sorted(roles.glob("*/vars/*.yml")):
        if vars_file.stem not in ("Debian", "main"):
            continue
        data = yaml.safe_load(vars_file.read_text(encoding="utf-8")) or {}
        for key, value in data.items():
            if not key.endswith("packages") or isinstance(value, str):
                continue
            for name in _names(value):
                found.setdefault(name, set()).add(vars_file.parts[-3])
    return found


def bundle_packages(listing: Path) -> set[str]:
    out = set()
    for line in listing.read_text(encoding="utf-8").splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            out.add(name)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2])
    args = ap.parse_args(argv)
    needed = role_packages(args.root / "roles")
    carried = bundle_packages(args.root / "appliance/scripts/bundle-debs.txt")
    missing = {n: r for n, r in needed.items() if n not in carried and n not in IN_BASE and n not in FROM_HOST}
    for name, roles in sorted(missing.items()):
        print(f"bundle-debs.txt lacks {name} (role {', '.join(sorted(roles))})", file=sys.stderr)
    if not missing:
        print(f"bundle-debs.txt carries all {len(needed)} packages the roles name")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
