"""Say where a DR playbook stopped and how to go on.

The DR playbooks (dr-switchover, dr-failover, dr-failback, dr-drill) name
their tasks "Step N - ...". When a run ends with a failed or unreachable
host, this callback prints, after Ansible's recap: the step and task that
failed and on which hosts, what that step leaves behind (the state), and the
command that resumes the run (the same playbook and options: each step finds
finished work and changes nothing). Other playbooks are left alone.
"""

from __future__ import annotations

import re
import shlex
import sys
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: tongxin_dr
    type: notification
    short_description: where a Tongxin DR playbook stopped, and how to resume
    description:
      - After a failed run of playbooks/dr-*.yml, prints the step that failed, the state it
        leaves and the command that resumes the run.
"""

# What each step leaves when it fails, by playbook and step number.
STATES: dict[str, dict[str, str]] = {
    "dr-switchover": {
        "1": "writes may be stopped where service was (nodes standby, databases read-only); "
             "no site takes writes until the run goes on",
        "2": "writes are stopped; the target's copy may not have caught up yet",
        "3": "the target's database may already take writes; its nodes are not serving yet",
        "4": "the new serving sites are recorded; some of their nodes may not be ready",
        "5": "service runs at the new sites; the old side does not follow them yet",
        "6": "service runs at the new sites; the old side's nodes may not stand by yet",
        "7": "the switchover is done but not in the audit trail",
    },
    "dr-failover": {
        "1": "the lost sites' reachable hosts may be fenced; the DR site is not serving yet",
        "2": "nothing promoted: the takeover was refused or could not be measured",
        "3": "the DR database may take writes; its nodes are not serving yet",
        "4": "the DR site is recorded as serving; some of its nodes may not be ready",
        "5": "the DR site serves; the report or the audit record is missing",
    },
    "dr-failback": {
        "1": "the returning sites are being fenced; the DR site serves",
        "2": "the returning databases are stopped; the DR site serves",
        "3": "the returning cluster is being rebuilt or made to follow the DR site; the DR site serves",
        "4": "the switch back is under way (see its step)",
    },
}

STEP_RE = re.compile(r"^Step (\d+)\b")


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "tongxin_dr"
    CALLBACK_NEEDS_ENABLED = False

    def __init__(self) -> None:
        super().__init__()
        self.playbook = ""
        self.play = ""
        self.failed: list[tuple[str, str, str]] = []  # (play, task, host)

    def v2_playbook_on_start(self, playbook: Any) -> None:
        name = str(getattr(playbook, "_file_name", ""))
        self.playbook = name.rsplit("/", 1)[-1].removesuffix(".yml")

    def v2_playbook_on_play_start(self, play: Any) -> None:
        self.play = play.get_name().strip()

    def _record(self, result: Any, ignore: bool = False) -> None:
        if ignore or not self.playbook.startswith("dr-"):
            return
        self.failed.append((self.play, result.task_name or "", result._host.get_name()))

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._record(result, ignore_errors)

    def v2_runner_on_unreachable(self, result: Any) -> None:
        ignore = bool(getattr(result._task, "ignore_unreachable", False))
        self._record(result, ignore)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        if not self.failed:
            return
        play, task, _host = self.failed[0]
        hosts = sorted({h for p, t, h in self.failed if (p, t) == (play, task)})
        m = STEP_RE.match(task) or STEP_RE.match(play)
        step = m.group(1) if m else ""
        state = STATES.get(self.playbook, {}).get(step, "see the task's message above")
        resume = " ".join(shlex.quote(a) for a in ["ansible-playbook", *sys.argv[1:]])
        self._display.display("")
        self._display.display(f"{self.playbook}: stopped at {'step ' + step if step else 'planning'}"
                              f" - {task} (on {', '.join(hosts)})", color="red")
        self._display.display(f"  state: {state}", color="red")
        self._display.display("  fix the cause above, then resume (finished steps change nothing):",
                              color="red")
        self._display.display(f"  {resume}", color="red")
