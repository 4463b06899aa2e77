"""Ansible connection to lab podman containers, with pipelining.

containers.podman.podman runs each module as four or five `podman` processes
(make a temp dir, copy the module, chmod, run it, remove the dir), because it
never passes stdin to `podman exec` and so declares pipelining unsupported.
Each `podman exec` costs a quarter of a second or more on a small host, which
made a whole-site converge of the lab take most of CI's time. Passing
`--interactive` when Ansible has data for the command's stdin is all
pipelining needs: a module then costs one `podman exec`. Everything else
(connect, put_file, fetch_file through the container's mount) is the
collection's own code.
"""

from __future__ import annotations

import shlex

from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.connection import ensure_connect
from ansible_collections.containers.podman.plugins.connection.podman import (
    Connection as PodmanConnection,
)

# Read by Ansible's plugin loader from the source (it is not imported), so it
# has to be a literal; the options are the ones the parent class reads.
DOCUMENTATION = """
    name: tongxin_podman
    short_description: Run modules in a lab podman container, pipelined
    description:
      - Like containers.podman.podman, but modules are piped to
        C(podman exec --interactive) instead of copied into the container.
    options:
      remote_addr:
        description: Name or id of the container.
        default: inventory_hostname
        vars:
          - name: ansible_host
          - name: inventory_hostname
          - name: ansible_podman_host
      remote_user:
        description: User that runs commands inside the container.
        ini:
          - section: defaults
            key: remote_user
        env:
          - name: ANSIBLE_REMOTE_USER
        vars:
          - name: ansible_user
      podman_extra_args:
        description: Extra arguments for every podman command line.
        default: ''
        vars:
          - name: ansible_podman_extra_args
        env:
          - name: ANSIBLE_PODMAN_EXTRA_ARGS
      pipelining:
        description:
          - Pipe modules to the container instead of copying them in. Async
            tasks are never piped (they go the collection's way).
        type: boolean
        default: true
        env:
          - name: ANSIBLE_PIPELINING
        vars:
          - name: ansible_pipelining
      podman_executable:
        description: The podman executable.
        default: podman
        vars:
          - name: ansible_podman_executable
        env:
          - name: ANSIBLE_PODMAN_EXECUTABLE
"""


class Connection(PodmanConnection):  # type: ignore[misc]
    transport = "tongxin_podman"
    # On by default through the `pipelining` option rather than
    # always_pipeline_modules: that flag also pipes async tasks (it is meant
    # for connections with native async), and a daemonised async job would
    # hold the exec session's stdout open until it ends.
    has_pipelining = True

    @ensure_connect  # type: ignore[misc]
    def exec_command(
        self, cmd: str, in_data: bytes | None = None, sudoable: bool = False
    ) -> tuple[int, bytes, bytes]:
        # The grandparent records the command; the parent's exec_command would
        # drop in_data's stdin on the floor without --interactive.
        super(PodmanConnection, self).exec_command(cmd, in_data=in_data, sudoable=sudoable)
        args = shlex.split(to_native(cmd, errors="surrogate_or_strict"))
        exec_args = ["exec"]
        if in_data is not None:
            exec_args.append("--interactive")
        if self.user:
            exec_args.extend(("--user", self.user))
        rc, out, err = self._podman(exec_args, args, in_data)
        return rc, out, err
