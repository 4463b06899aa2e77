"""Drive an OpenTofu environment (terraform/environments/<env>) from Python.

``tongxin provision`` (tongxin.cli.provision) runs init/plan/apply/output/destroy
through python-terraform pointed at the ``tofu`` binary, and writes the
environment's ``inventory`` output where the playbooks read it.

python-terraform 0.10.1 (the last release, 2019) was written for Terraform
0.11/0.12 and builds some flags modern tofu rejects or treats differently;
those calls are wrapped here (see :class:`Environment`), the rest goes through
the library unchanged.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Where terraform/scripts/build-tools.sh puts tofu and the provider mirror.
_CACHE_SUBDIR = "tofu"


class ProvisionError(Exception):
    """A provisioning step failed or was asked for something impossible."""


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``${TONGXIN_CACHE:-~/.cache/tongxin}/tofu`` (build-tools.sh's layout)."""
    env = os.environ if environ is None else environ
    root = env.get("TONGXIN_CACHE") or str(Path(env.get("HOME") or Path.home()) / ".cache" / "tongxin")
    return Path(root) / _CACHE_SUBDIR


def find_tofu(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """The tofu binary: *explicit*, else $TONGXIN_TOFU, else the build cache, else PATH.

    Raises ProvisionError naming every place looked at when none is executable.
    """
    env = os.environ if environ is None else environ
    tried: list[str] = []
    for candidate in (explicit, env.get("TONGXIN_TOFU")):
        if candidate:
            path = Path(candidate)
            if path.is_file() and os.access(path, os.X_OK):
                return path
            # An explicit choice that does not work is an error, not a reason to
            # silently use some other tofu.
            raise ProvisionError(f"tofu binary {candidate} does not exist or is not executable")
    cached = cache_dir(env) / "bin" / "tofu"
    tried.append(str(cached))
    if cached.is_file() and os.access(cached, os.X_OK):
        return cached
    on_path = shutil.which("tofu", path=env.get("PATH"))
    tried.append("tofu on PATH")
    if on_path:
        return Path(on_path)
    raise ProvisionError(
        "no tofu binary: looked at " + ", ".join(tried)
        + " (run terraform/scripts/build-tools.sh, or set TONGXIN_TOFU)"
    )


def tofu_environ(tofu: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables tofu needs here, added to (a copy of) *environ*.

    TF_CLI_CONFIG_FILE: the filesystem-mirror config next to a build-tools.sh
    tofu, unless the caller chose a config file that exists (without the
    mirror ``tofu init`` would try a registry, which is unreachable; a
    TF_CLI_CONFIG_FILE naming a missing file, which some shells here export,
    would make every command print a configuration error before its output).
    TF_IN_AUTOMATION: no "run tofu apply next" hints in the output.
    """
    env = dict(os.environ if environ is None else environ)
    chosen = env.get("TF_CLI_CONFIG_FILE")
    if not (chosen and Path(chosen).is_file()):
        rc = tofu.parent.parent / "tofurc"
        if rc.is_file():
            env["TF_CLI_CONFIG_FILE"] = str(rc)
    env.setdefault("TF_IN_AUTOMATION", "1")
    return env


def parse_var(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` from the command line (VALUE may contain '=')."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ProvisionError(f"--var {text!r}: expected NAME=VALUE")
    if not name.replace("_", "").isalnum():
        raise ProvisionError(f"--var {text!r}: {name!r} is not a variable name")
    return name, value


@contextmanager
def _environ(env: Mapping[str, str]) -> Iterator[None]:
    """Run python-terraform under *env*: it copies os.environ for every
    command and has no parameter for the environment, so os.environ is
    replaced for the duration and put back after."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclass
class Environment:
    """One OpenTofu root module (an environment directory) and how to run it.

    ``workspace``: a tofu workspace (TF_WORKSPACE) so that a test can apply
    the same environment as an operator without sharing state with them.
    """

    directory: Path
    tofu: Path
    var_files: Sequence[Path] = ()
    variables: Mapping[str, str] = field(default_factory=dict)
    workspace: str | None = None
    environ: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        self.directory = Path(self.directory).resolve()
        if not (self.directory.is_dir() and any(self.directory.glob("*.tf"))):
            raise ProvisionError(f"{self.directory} is not an OpenTofu environment (no *.tf files)")
        self.var_files = [Path(f).resolve() for f in self.var_files]
        for f in self.var_files:
            if not f.is_file():
                raise ProvisionError(f"variable file {f} does not exist")
        if self.workspace is not None and not self.workspace.replace("-", "").replace("_", "").isalnum():
            raise ProvisionError(f"workspace {self.workspace!r}: letters, digits, '-' and '_' only")

    # ---- python-terraform -------------------------------------------------------

    def _terraform(self) -> Any:
        try:
            from python_terraform import Terraform
        except ImportError as exc:  # an operator tool: not every node installs it
            raise ProvisionError(
                "python-terraform is not installed (pip install 'tongxin[provision]')"
            ) from exc
        # state=None: python-terraform would otherwise pass -state=..., a
        # legacy flag of the local backend that tofu only still tolerates;
        # state lives where the backend (and TF_WORKSPACE) says. The variables
        # go per call (_options), not here, because init must not get them
        # from the constructor's defaults for every command.
        return Terraform(working_dir=str(self.directory), terraform_bin_path=str(self.tofu))

    def _env(self) -> dict[str, str]:
        env = tofu_environ(self.tofu, self.environ)
        if self.workspace:
            env["TF_WORKSPACE"] = self.workspace
        return env

    def _options(self) -> dict[str, Any]:
        # A list value becomes one -var-file=... per file (None: no flag).
        # -var NAME=VALUE is not passed through python-terraform's `var`: it
        # turns that dict into a temporary JSON var file, which is left in /tmp
        # when tofu crashes; _var_args passes the flags as given instead.
        return {"var_file": [str(f) for f in self.var_files] or None}

    def _var_args(self) -> list[str]:
        return [f"-var={k}={v}" for k, v in sorted(self.variables.items())]

    def _run(self, command: str, *args: str, capture: bool, **options: Any) -> tuple[int, str, str]:
        from python_terraform import IsFlagged

        tf = self._terraform()
        flags = {k: (IsFlagged if v is True else v) for k, v in options.items()}
        with _environ(self._env()), warnings.catch_warnings():
            # Its failure path logs through the deprecated Logger.warn.
            warnings.simplefilter("ignore", DeprecationWarning)
            code, out, err = tf.cmd(command, *args, capture_output=capture, **flags)
        return int(code), out or "", err or ""

    def _check(self, what: str, result: tuple[int, str, str], ok: Sequence[int] = (0,)) -> tuple[int, str]:
        code, out, err = result
        if code not in ok:
            detail = (err or out).strip().splitlines()[-20:]
            tail = "\n" + "\n".join(detail) if detail else ""
            raise ProvisionError(f"tofu {what} failed (exit {code}){tail}")
        return code, out

    # ---- the commands ----------------------------------------------------------------

    def init(self, *, capture: bool = True) -> None:
        """``tofu init -input=false -no-color``.

        Not python-terraform's ``init()``: it always adds -reconfigure and
        -backend=true and the apply defaults (-var-file, -state, -target),
        so that a backend change silently drops state. Plain init, through
        ``cmd``.
        """
        # Two workspaces of one environment (the Molecule site and lab
        # scenarios, run in parallel) share its .terraform directory and lock
        # file, which concurrent inits would write at once; the workspaces'
        # states are separate, so only init is serialised.
        data_dir = self.directory / ".terraform"
        data_dir.mkdir(exist_ok=True)
        with open(data_dir / "tongxin-init.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._check("init", self._run("init", capture=capture, input=False, no_color=True))

    def plan(self, *, capture: bool = True) -> bool:
        """``tofu plan -detailed-exitcode``: True if there are changes (exit 2)."""
        code, _ = self._check(
            "plan",
            self._run("plan", *self._var_args(), capture=capture, input=False, no_color=True,
                      detailed_exitcode=True, **self._options()),
            ok=(0, 2),
        )
        return code == 2

    def apply(self, *, capture: bool = True) -> None:
        """``tofu apply -auto-approve``.

        Not python-terraform's ``apply()``: it sends ``-auto-approve=false``
        unless skip_plan is set, and then tofu waits for a "yes" on stdin.
        """
        self._check("apply", self._run("apply", *self._var_args(), capture=capture, input=False,
                                       no_color=True, auto_approve=True, **self._options()))

    def destroy(self, *, capture: bool = True) -> None:
        """``tofu destroy -auto-approve``.

        Not python-terraform's ``destroy()``: it passes ``-force``, which
        Terraform 0.15 removed and tofu rejects ("flag provided but not
        defined: -force").
        """
        self._check("destroy", self._run("destroy", *self._var_args(), capture=capture, input=False,
                                         no_color=True, auto_approve=True, **self._options()))

    def outputs(self) -> dict[str, Any]:
        """Every output value, by name (``tofu output -json``)."""
        _, out = self._check("output", self._run("output", capture=True, json=True, no_color=True))
        try:
            data = json.loads(out or "{}")
        except json.JSONDecodeError as exc:
            raise ProvisionError(
                f"tofu output -json printed something that is not JSON ({exc}): {out[:300]!r}"
            ) from exc
        if not isinstance(data, dict):
            raise ProvisionError("tofu output -json did not print an object")
        return {name: entry.get("value") for name, entry in data.items() if isinstance(entry, dict)}


def write_inventory(outputs: Mapping[str, Any], path: Path | None) -> Path:
    """Write the ``inventory`` output to *path* (default: the ``inventory_path``
    output) atomically; return where it went."""
    content = outputs.get("inventory")
    if not isinstance(content, str) or not content.strip():
        raise ProvisionError("the environment has no 'inventory' output (apply it first)")
    if path is None:
        where = outputs.get("inventory_path")
        if not isinstance(where, str) or not where:
            raise ProvisionError(
                "no inventory path: pass --inventory or give the environment an inventory_path output"
            )
        path = Path(where)
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(content if content.endswith("\n") else content + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
