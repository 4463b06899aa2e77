"""DR drill tooling: a measured chat workload, timeline marks, RPO/RTO and the evidence report.

A drill playbook drives it through ``tongxin drill`` (tongxin.cli.drill):

* ``start``  — the workload (tongxin.drill.workload) logs N users in across the
  entry points and sends 1:1 and group messages at a steady rate, appending
  every attempt, ACK, error, login and disconnect to ``<state dir>/workload.jsonl``;
* ``mark``   — the playbook records a timeline event (``disaster``, ...) in
  ``marks.jsonl``;
* ``wait``   — blocks until a condition on those logs holds (tongxin.drill.measure);
* ``stop`` and ``report`` — reads every conversation back through the entries,
  runs the acknowledged-vs-delivered checker (tongxin.checker) and writes
  ``dr-drill-<kind>-<UTC>.json`` (schema: report.schema.json) and an HTML page.

Nothing here imports the server: the drill only speaks the wire protocol and
``GET /healthz``, so it measures any installation from outside.
"""
