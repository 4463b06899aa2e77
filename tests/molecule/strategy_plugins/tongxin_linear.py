"""Mitogen's ``mitogen_linear`` strategy without its CPU pinning.

Mitogen pins Ansible's processes to CPUs, planned for one playbook alone on a
machine: on two CPUs it keeps its connection multiplexer on CPU 0 and puts the
controller, every worker and every child they start (``podman exec``, and so
each module and command run in a test host) on CPU 1. Three scenarios at a
time then shared one core while the other idled. The base ``Policy`` pins
nothing, so the kernel spreads the work.
"""

from __future__ import annotations

import ansible_mitogen.affinity

ansible_mitogen.affinity.policy = ansible_mitogen.affinity.Policy()

# Imported after the policy is replaced: the strategy reads the module-level
# policy whenever it starts a process.
from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule  # noqa: E402

__all__ = ["StrategyModule"]
