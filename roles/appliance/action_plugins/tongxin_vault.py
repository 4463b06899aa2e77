# Tongxin: keep the controller's secret files ansible-vault encrypted at rest.
#
#   tongxin_vault:
#     dest: DIR          controller directory of the secret files (made 0700)
#     src: DIR           optional: clear files (a tmpfs directory) to encrypt
#                        into DEST, each only when DEST has no file of its name
#     only: [NAME, ...]  optional: only these file names
#     check_only: true   only check: a vault password is loaded and opens
#                        every encrypted file of DEST; write nothing
#
# Without src, the clear files of DEST are encrypted in place (a cache written
# before the vault was turned on). Runs in the controller's Ansible process,
# whatever the task's host: it encrypts with the vault secret the play was
# started with (--vault-id, --vault-password-file, ANSIBLE_VAULT_PASSWORD_FILE,
# ansible.cfg), so the files open exactly where the playbooks run, and the
# password never becomes a variable. An action plugin rather than a module or
# a command: only the controller's process holds the loaded secret.
from __future__ import annotations

import os
import tempfile

from ansible.errors import AnsibleActionFail
from ansible.parsing.vault import VaultLib, is_encrypted, match_encrypt_secret
from ansible.plugins.action import ActionBase

_NO_SECRET = (
    "The controller's secrets are kept ansible-vault encrypted (tongxin_controller_vault is true), but this run "
    "has no vault password: run the playbook with --vault-id / --vault-password-file, or set "
    "ANSIBLE_VAULT_PASSWORD_FILE (docs/security.md, 'Secrets on the controller'). Nothing was changed."
)


def _regular_files(directory: str, only: list[str] | None) -> list[str]:
    if not os.path.isdir(directory):
        return []
    names = sorted(n for n in os.listdir(directory) if os.path.isfile(os.path.join(directory, n))
                   and not os.path.islink(os.path.join(directory, n)) and not n.startswith('.'))
    return [n for n in names if only is None or n in only]


def _write_private(path: str, data: bytes) -> None:
    # The ciphertext lands beside its final name and replaces it at once: a
    # crash leaves the old file or the new one, never half of one.
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.tongxin-vault-')
    try:
        with os.fdopen(fd, 'wb') as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(('dest', 'src', 'only', 'check_only'))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        dest = args.get('dest')
        if not dest:
            raise AnsibleActionFail('tongxin_vault: dest (a controller directory) is required')
        dest = os.path.expanduser(str(dest))
        src = args.get('src')
        only = args.get('only')
        only = [str(n) for n in only] if only is not None else None
        check_only = bool(args.get('check_only', False))

        secrets = list(getattr(self._loader, '_vault', VaultLib()).secrets or [])
        if not secrets:
            raise AnsibleActionFail(_NO_SECRET)
        vault = VaultLib(secrets)

        # Every file already encrypted must open with this run's password: a
        # wrong one is refused here, before anything is written.
        clear_in_dest = []
        for name in _regular_files(dest, only):
            with open(os.path.join(dest, name), 'rb') as fh:
                data = fh.read()
            if is_encrypted(data):
                try:
                    vault.decrypt(data)
                except Exception as exc:  # AnsibleVaultError and friends: one message
                    raise AnsibleActionFail(
                        f"{os.path.join(dest, name)} does not open with this run's vault password ({exc}). "
                        "Run with the password the controller's secrets were encrypted with. Nothing was changed."
                    ) from None
            else:
                clear_in_dest.append(name)

        if src:
            todo = [(os.path.join(str(src), n), os.path.join(dest, n))
                    for n in _regular_files(str(src), only) if not os.path.exists(os.path.join(dest, n))]
        else:
            todo = [(os.path.join(dest, n), os.path.join(dest, n)) for n in clear_in_dest]

        result['clear'] = clear_in_dest
        result['encrypted'] = [os.path.basename(d) for _, d in todo]
        if check_only:
            result['changed'] = False
            return result
        result['changed'] = bool(todo)
        if not todo or self._task.check_mode:
            return result

        _vault_id, secret = match_encrypt_secret(secrets)
        os.makedirs(dest, mode=0o700, exist_ok=True)
        for path_in, path_out in todo:
            with open(path_in, 'rb') as fh:
                data = fh.read()
            _write_private(path_out, vault.encrypt(data, secret=secret, vault_id=None))
        return result
