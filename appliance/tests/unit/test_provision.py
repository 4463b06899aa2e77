"""tongxin provision: the tofu command lines it builds (through python-terraform)
and what it does with their results, against a fake ``tofu`` that records its
argv and environment."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tongxin.cli.main import main
from tongxin.provision import (
    Environment,
    ProvisionError,
    find_tofu,
    parse_var,
    tofu_environ,
    write_inventory,
)

FAKE_TOFU = r'''#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_TOFU_LOG"], "a") as f:
    f.write(json.dumps({{"argv": args, "cwd": os.getcwd(),
                        "env": {{k: os.environ.get(k) for k in
                                ("TF_WORKSPACE", "TF_CLI_CONFIG_FILE", "TF_IN_AUTOMATION")}}}}) + "\n")
cmd = args[0]
if os.environ.get("FAKE_TOFU_FAIL") == cmd:
    print("Error: the fake tofu was told to fail " + cmd, file=sys.stderr)
    sys.exit(1)
if cmd == "output":
    sys.stdout.write(open(os.environ["FAKE_TOFU_OUTPUTS"]).read())
elif cmd == "plan":
    sys.exit(int(os.environ.get("FAKE_TOFU_PLAN_EXIT", "0")))
'''

INVENTORY = "all:\n  children:\n    dc1:\n      hosts:\n        txlab-dc1-lb-01: {}\n"


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A build-tools.sh-like cache (bin/tofu + tofurc), an environment dir, the log."""
    cache = tmp_path / "cache" / "tofu"
    (cache / "bin").mkdir(parents=True)
    tofu = cache / "bin" / "tofu"
    tofu.write_text(FAKE_TOFU.format(python=sys.executable))
    tofu.chmod(0o755)
    (cache / "tofurc").write_text("provider_installation {}\n")
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    (env_dir / "main.tf").write_text("# fake\n")
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({
        "inventory": {"value": INVENTORY, "type": "string", "sensitive": False},
        "inventory_path": {"value": str(tmp_path / "default" / "hosts.yml"), "type": "string"},
        "hosts": {"value": {"dc1": {"lb": [{"name": "txlab-dc1-lb-01"}]}}, "type": ["object", {}]},
    }))
    log = tmp_path / "tofu.log"
    monkeypatch.setenv("FAKE_TOFU_LOG", str(log))
    monkeypatch.setenv("FAKE_TOFU_OUTPUTS", str(outputs))
    monkeypatch.setenv("TONGXIN_CACHE", str(tmp_path / "cache"))
    for var in ("TONGXIN_TOFU", "TF_CLI_CONFIG_FILE", "TF_WORKSPACE",
                "FAKE_TOFU_FAIL", "FAKE_TOFU_PLAN_EXIT"):
        monkeypatch.delenv(var, raising=False)
    return {"tofu": tofu, "env": env_dir, "log": log, "tmp": tmp_path, "tofurc": cache / "tofurc"}


def calls(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_apply_runs_init_apply_output_with_modern_flags_and_writes_the_inventory(
    fake: dict[str, Path],
) -> None:
    var_file = fake["tmp"] / "lab.tfvars.json"
    var_file.write_text("{}")
    inventory = fake["tmp"] / "inv" / "hosts.yml"
    rc = main(["provision", "apply", str(fake["env"]), "--var-file", str(var_file),
               "--var", "name_prefix=txsite", "--workspace", "molecule-site",
               "--inventory", str(inventory), "--quiet"])
    assert rc == 0
    log = calls(fake["log"])
    assert [c["argv"][0] for c in log] == ["init", "apply", "output"]
    init, apply, output = (c["argv"] for c in log)
    # init: no -reconfigure/-backend=true/-var-file (python-terraform's init() adds them).
    assert sorted(init[1:]) == ["-input=false", "-no-color"]
    assert "-auto-approve" in apply
    assert not any(a.startswith(("-state", "-auto-approve=", "-force")) for a in apply)
    assert f"-var-file={var_file}" in apply
    assert "-var=name_prefix=txsite" in apply
    assert f"-var=inventory_path={inventory}" in apply
    assert "-input=false" in apply
    assert sorted(output[1:]) == ["-json", "-no-color"]
    for c in log:
        assert c["cwd"] == str(fake["env"])
        assert c["env"]["TF_WORKSPACE"] == "molecule-site"
        assert c["env"]["TF_CLI_CONFIG_FILE"] == str(fake["tofurc"])
        assert c["env"]["TF_IN_AUTOMATION"] == "1"
    assert inventory.read_text() == INVENTORY
    # python-terraform copies os.environ per command: ours must be back as it was.
    assert "TF_WORKSPACE" not in os.environ


def test_apply_without_inventory_option_writes_the_inventory_path_output(fake: dict[str, Path]) -> None:
    assert main(["provision", "apply", str(fake["env"]), "--quiet"]) == 0
    assert (fake["tmp"] / "default" / "hosts.yml").read_text() == INVENTORY
    apply = calls(fake["log"])[1]["argv"]
    assert not any(a.startswith("-var") for a in apply)  # nothing was asked for


def test_destroy_uses_auto_approve_not_force_and_removes_the_inventory(fake: dict[str, Path]) -> None:
    inventory = fake["tmp"] / "hosts.yml"
    inventory.write_text(INVENTORY)
    rc = main(["provision", "destroy", str(fake["env"]), "--inventory", str(inventory), "--quiet"])
    assert rc == 0
    destroy = calls(fake["log"])[-1]["argv"]
    assert destroy[0] == "destroy"
    assert "-auto-approve" in destroy
    assert "-force" not in destroy
    assert f"-var=inventory_path={inventory}" in destroy
    assert not inventory.exists()


def test_a_failed_apply_reports_tofus_error_and_leaves_the_inventory_alone(
    fake: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FAKE_TOFU_FAIL", "apply")
    inventory = fake["tmp"] / "hosts.yml"
    inventory.write_text("old\n")
    rc = main(["provision", "apply", str(fake["env"]), "--inventory", str(inventory), "--quiet"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "tofu apply failed (exit 1)" in err
    assert "told to fail apply" in err
    assert [c["argv"][0] for c in calls(fake["log"])] == ["init", "apply"]
    assert inventory.read_text() == "old\n"


@pytest.mark.parametrize(("tofu_exit", "want"), [(0, 0), (2, 2)])
def test_plan_detailed_exitcode(
    fake: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tofu_exit: int, want: int,
) -> None:
    monkeypatch.setenv("FAKE_TOFU_PLAN_EXIT", str(tofu_exit))
    assert main(["provision", "plan", str(fake["env"]), "--detailed-exitcode", "--quiet"]) == want
    plan = calls(fake["log"])[-1]["argv"]
    assert plan[0] == "plan" and "-detailed-exitcode" in plan


def test_plan_exit_1_is_a_failure(fake: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_TOFU_PLAN_EXIT", "1")
    assert main(["provision", "plan", str(fake["env"]), "--quiet"]) == 1


def test_output_name_prints_that_value(fake: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["provision", "output", str(fake["env"]), "hosts"]) == 0
    assert json.loads(capsys.readouterr().out) == {"dc1": {"lb": [{"name": "txlab-dc1-lb-01"}]}}
    assert main(["provision", "output", str(fake["env"]), "nope"]) == 1
    assert "no output 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["--var", "no-equals-sign"],
    ["--var", "=value"],
    ["--var", "bad name=1"],
    ["--var-file", "/nonexistent/lab.tfvars"],
    ["--workspace", "../escape"],
    ["--tofu", "/nonexistent/tofu"],
])
def test_bad_input_is_refused_before_tofu_runs(
    fake: dict[str, Path], capsys: pytest.CaptureFixture[str], argv: list[str],
) -> None:
    assert main(["provision", "apply", str(fake["env"]), *argv]) == 1
    assert "tongxin provision:" in capsys.readouterr().err
    assert calls(fake["log"]) == []


def test_a_directory_without_tf_files_is_not_an_environment(
    fake: dict[str, Path], capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["provision", "apply", str(fake["tmp"])]) == 1
    assert "not an OpenTofu environment" in capsys.readouterr().err
    assert calls(fake["log"]) == []


def test_name_argument_only_for_output(fake: dict[str, Path]) -> None:
    assert main(["provision", "apply", str(fake["env"]), "extra"]) == 1
    assert calls(fake["log"]) == []


def test_find_tofu_order(fake: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other-tofu"
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    base = {"TONGXIN_CACHE": str(tmp_path / "cache"), "PATH": ""}
    assert find_tofu(None, base) == fake["tofu"]
    assert find_tofu(None, {**base, "TONGXIN_TOFU": str(other)}) == other
    assert find_tofu(str(other), {**base, "TONGXIN_TOFU": "/nonexistent"}) == other
    on_path = tmp_path / "path"
    on_path.mkdir()
    (on_path / "tofu").symlink_to(other)
    empty = str(tmp_path / "empty")
    assert find_tofu(None, {"TONGXIN_CACHE": empty, "PATH": str(on_path)}) == on_path / "tofu"
    with pytest.raises(ProvisionError, match=r"build-tools\.sh"):
        find_tofu(None, {"TONGXIN_CACHE": str(tmp_path / "empty"), "PATH": ""})
    not_exec = tmp_path / "not-exec"
    not_exec.write_text("")
    with pytest.raises(ProvisionError, match="not executable"):
        find_tofu(str(not_exec), base)


def test_tofu_environ_keeps_a_chosen_cli_config(fake: dict[str, Path]) -> None:
    assert tofu_environ(fake["tofu"], {})["TF_CLI_CONFIG_FILE"] == str(fake["tofurc"])
    mine = fake["tmp"] / "mine.tfrc"
    mine.write_text("")
    chosen = tofu_environ(fake["tofu"], {"TF_CLI_CONFIG_FILE": str(mine)})
    assert chosen["TF_CLI_CONFIG_FILE"] == str(mine)
    # One naming a missing file would break every command: the mirror config wins.
    missing = tofu_environ(fake["tofu"], {"TF_CLI_CONFIG_FILE": "/nonexistent/.terraformrc"})
    assert missing["TF_CLI_CONFIG_FILE"] == str(fake["tofurc"])
    # A tofu outside a build-tools.sh cache gets no mirror config invented for it.
    assert "TF_CLI_CONFIG_FILE" not in tofu_environ(Path("/usr/bin/tofu"), {})


def test_parse_var_keeps_equals_signs_in_the_value() -> None:
    assert parse_var("inventory_vars={\"a\"=\"b\"}") == ("inventory_vars", "{\"a\"=\"b\"}")
    assert parse_var("empty=") == ("empty", "")


def test_write_inventory_needs_an_inventory_output(tmp_path: Path) -> None:
    target = tmp_path / "hosts.yml"
    with pytest.raises(ProvisionError, match="no 'inventory' output"):
        write_inventory({"inventory_path": str(target)}, None)
    with pytest.raises(ProvisionError, match="no inventory path"):
        write_inventory({"inventory": INVENTORY}, None)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_environment_refuses_a_missing_var_file(fake: dict[str, Path]) -> None:
    with pytest.raises(ProvisionError, match="does not exist"):
        Environment(directory=fake["env"], tofu=fake["tofu"], var_files=[fake["tmp"] / "nope.tfvars"])
