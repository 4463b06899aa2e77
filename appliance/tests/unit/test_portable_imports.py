"""Issue 17 (ARM 信创 hosts): the package must not need an extension module that exists only
for x86_64. A child interpreter starts with an import blocker installed by a sitecustomize
on its path, imports every module of the tongxin package, and then runs the GM suite's SM2
(sign, verify, encrypt, decrypt, KEM) end to end.

Blocked: gmssl_pyx, the only run-time wheel the offline bundle could not fetch for aarch64
(``MISSING wheels/aarch64: gmssl-pyx==2.1.0`` before SM2 moved to libcrypto). Every other
compiled dependency (cryptography, aiohttp, uvloop, zstandard, PyYAML, protobuf, asyncmy,
pycryptodome, ...) has manylinux aarch64 wheels, which bundle.sh downloads for both
architectures; add a name to X86_ONLY if that ever stops being true.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import tongxin

X86_ONLY = ("gmssl_pyx",)

SITECUSTOMIZE = '''
import sys

X86_ONLY = {blocked!r}


class _X86OnlyBlocker:
    """What a missing wheel looks like to `import`, from the first import on."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in X86_ONLY:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, _X86OnlyBlocker())
'''

CHILD = textwrap.dedent(
    """
    import importlib
    import pkgutil
    import sys

    import tongxin

    for blocked in sys.argv[1:]:
        try:
            importlib.import_module(blocked)
        except ImportError:
            pass
        else:
            raise SystemExit(f"the blocker did not stop {blocked}")

    errors = []
    names = sorted(
        m.name
        for m in pkgutil.walk_packages(tongxin.__path__, "tongxin.", onerror=errors.append)
    )
    assert not errors, errors
    for name in names:
        importlib.import_module(name)  # an ImportError here names the module and the cause
    leaked = [m for m in sys.modules if m.partition(".")[0] in sys.argv[1:]]
    assert not leaked, leaked

    from tongxin.crypto import SM2PrivateKey, get_suite, sm2_unavailable_reason
    from tongxin.crypto.suite import GMSuite

    assert sm2_unavailable_reason() is None, sm2_unavailable_reason()
    suite = get_suite("gm")
    assert isinstance(suite, GMSuite)
    signing = suite.generate_signing_keypair()
    signature = suite.sign(signing.private_key, b"portable")
    suite.verify(signing.public_key, b"portable", signature)
    try:
        suite.verify(signing.public_key, b"portablE", signature)
    except Exception as exc:
        assert type(exc).__name__ == "InvalidSignatureError", exc
    else:
        raise SystemExit("a wrong message verified")
    kem = suite.generate_kem_keypair()
    enc = suite.kem_encapsulate(kem.public_key)
    assert suite.kem_decapsulate(kem.private_key, enc.encapsulated_key) == enc.shared_secret
    key = SM2PrivateKey.from_der(kem.private_key)
    assert key.decrypt(key.public_key().encrypt(b"wrapped key")) == b"wrapped key"
    print("PORTABLE", len(names))
    """
)


def test_every_module_imports_and_gm_sm2_works_without_x86_only_extensions(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(blocked=set(X86_ONLY)))
    src = Path(tongxin.__file__).resolve().parents[1]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), str(src), env.get("PYTHONPATH")]))
    env.pop("TONGXIN_LIBCRYPTO", None)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *X86_ONLY],
        capture_output=True,
        env=env,
        cwd=tmp_path,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    word, count = proc.stdout.decode().split()
    assert word == "PORTABLE" and int(count) > 100
