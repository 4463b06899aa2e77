"""Check that site.yml's tags select what docs/ansible.md says they do.

``--tags certs`` must run the pki role and the copies of certificates that
other services read (the lb hosts', Redis's and Kafka's TLS files, the
appliance's Redis and Kafka CAs, the journal upload's and receiver's) and no other role's work; ``--tags <role>`` must run that role's tasks and no
other role's (the read-only preflight, argument validation and tasks tagged always -
the roles' OS family facts - run whatever the tags).
Reads ``ansible-playbook --list-tasks`` over the lab inventory; exits 1 and
names what is wrong. Run by ``tests/molecule/run.sh --lint``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROLES = ["bundle", "common", "pki", "database", "redis", "kafka", "appliance", "lb", "monitoring", "logs"]


def tasks(tag: str) -> list[tuple[str, str]]:
    """(role, task name) of every task --tags TAG would run, validation and preflight left out."""
    out = subprocess.run(
        ["ansible-playbook", "-i", str(ROOT / "inventories" / "lab"), str(ROOT / "playbooks" / "site.yml"),
         "--list-tasks", "--tags", tag],
        capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        m = re.match(r"\s{6}(?:(\w+) : )?(.*?)\tTAGS: \[(.*)\]$", line)
        # The preflight and what is tagged always (a role's OS family facts) run
        # whatever the tags: read-only.
        if not m or {"preflight", "always"} & set(m.group(3).split(", ")):
            continue
        if m.group(2).startswith("Validating arguments against arg spec"):
            continue
        found.append((m.group(1) or "", m.group(2)))
    return found


def main() -> int:
    problems = []
    certs = tasks("certs")
    roles = {r for r, _ in certs}
    if roles != {"pki", "lb", "redis", "kafka", "appliance", "logs"}:
        problems.append(f"--tags certs runs the roles {sorted(roles)}, expected pki, lb, redis, kafka, appliance and logs")
    # Besides pki, only the copies of certificates that other roles' services read.
    copies = {
        "lb": ["Copy the certificate", "Copy the private key", "Create the certificate directory"],
        "redis": ["Copy the CA certificate, this host's certificate and key", "Create the TLS directory"],
        "kafka": ["Copy the CA certificate (the trust store)", "Create the TLS directory",
                  "Keep the key store readable by the kafka group only",
                  "Make the key store (the key as PKCS#8, then the certificate)"],
        "appliance": ["Install the CA that Redis's certificates are checked against",
                      "Install the CA that the Kafka brokers' certificates are checked against"],
        # the includes whose TLS copies are tagged certs inside
        "logs": ["Receive the other hosts' journals", "Upload this host's journal"],
    }
    for role, want in copies.items():
        got = sorted(t for r, t in certs if r == role)
        if got != want:
            problems.append(f"--tags certs runs these {role} tasks: {got}, expected {want}")
    for role in ROLES:
        # The exporters' play includes the monitoring role from a task of its own.
        got = {r or "monitoring" for r, _ in tasks(role)}
        if got != {role}:
            problems.append(f"--tags {role} runs tasks of {sorted(got) or 'no role'}, expected {role} only")
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"site.yml: --tags certs and --tags <role> select the right tasks ({len(ROLES)} roles)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
