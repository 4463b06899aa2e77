"""The variable tables of docs/ansible.md, generated from each role's
meta/argument_specs.yml (descriptions, types) and defaults/main.yml (the
default as written there).

    role_docs.py                 print the tables
    role_docs.py --write FILE    replace the text between the markers in FILE
    role_docs.py --check FILE    exit 1 if FILE's tables are out of date

Markers: <!-- role-variables:begin --> and <!-- role-variables:end -->.
Run with the tools venv (PyYAML): tests/molecule/.venv/bin/python.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = ["common", "redis", "appliance", "lb", "monitoring", "pki", "database", "kafka", "bundle", "backup", "logs"]
BEGIN = "<!-- role-variables:begin -->"
END = "<!-- role-variables:end -->"


def _text(value: object) -> str:
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


def _cell(text: str) -> str:
    text = re.sub(r"C\(([^)]*)\)", r"`\1`", text)  # ansible-doc markup
    return text.replace("|", "\\|").replace("\n", " ").strip()


def _default(raw: object) -> str:
    if raw is None:
        return ""
    if isinstance(raw, str):
        shown = raw.strip()
        if "{{" in shown or "{%" in shown:
            return "(computed: see the role's text)" if len(shown) > 60 else f"`{shown}`"
        return f"`{shown}`" if shown else '`""`'
    flat = yaml.safe_dump(raw, default_flow_style=True, width=10_000).strip()
    flat = flat.removesuffix("...").strip()
    return f"`{flat}`" if len(flat) <= 60 else "(see defaults/main.yml)"


def role_table(role: str) -> str:
    base = ROOT / "roles" / role
    spec = yaml.safe_load((base / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]
    defaults = yaml.safe_load((base / "defaults" / "main.yml").read_text()) or {}
    lines = [f"### {role}", "", _cell(_text(spec.get("short_description", ""))) + ".", ""]
    lines += ["| variable | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, opt in spec["options"].items():
        kind = opt.get("type", "str")
        if kind == "list" and "elements" in opt:
            kind = f"list of {opt['elements']}"
        lines.append(f"| `{name}` | {kind} | {_cell(_default(defaults.get(name)))} | "
                     f"{_cell(_text(opt.get('description', '')))} |")
    missing = sorted(set(defaults) - set(spec["options"]))
    if missing:
        raise SystemExit(f"{role}: defaults without an argument spec: {', '.join(missing)}")
    return "\n".join(lines) + "\n"


def tables() -> str:
    return "\n".join(role_table(r) for r in ROLES)


def main(argv: list[str]) -> int:
    if len(argv) == 1:
        sys.stdout.write(tables())
        return 0
    mode, path = argv[1], Path(argv[2])
    text = path.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    new = f"{head}{BEGIN}\n\n{tables()}\n{END}{tail}"
    if mode == "--write":
        path.write_text(new)
        return 0
    if new != text:
        print(f"{path}: the role variable tables are out of date; run "
              f"tests/molecule/.venv/bin/python tests/molecule/role_docs.py --write {path}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
