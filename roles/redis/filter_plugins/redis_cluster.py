"""Filters of role redis for scaling a cluster: reading CLUSTER NODES and
pairing new instances into primaries and replicas.

Kept as filters rather than Jinja loops because the plan (which new instance
replicates which, on another host where possible) is a small algorithm and
CLUSTER NODES a fixed text format; the tasks stay declarative around them.
"""

from __future__ import annotations

from typing import Any


def redis_parse_cluster_nodes(text: str) -> list[dict[str, Any]]:
    """Parse CLUSTER NODES output.

    Each line: <id> <ip:port@cport[,hostname]> <flags> <master> <ping-sent>
    <pong-recv> <config-epoch> <link-state> <slot> <slot> ... A slot entry is
    a number, a range a-b, or [slot->-id] / [slot-<-id] for one being migrated
    (those count as open, not held).
    """
    nodes = []
    for line in str(text).replace("\r", "").splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        flags = fields[2].split(",")
        slots = 0
        open_slots = 0
        for entry in fields[8:]:
            if entry.startswith("["):
                open_slots += 1
            elif "-" in entry:
                low, high = entry.split("-", 1)
                slots += int(high) - int(low) + 1
            else:
                slots += 1
        nodes.append(
            {
                "id": fields[0],
                "addr": fields[1].split("@", 1)[0],
                "flags": flags,
                "primary": "master" in flags,
                "replica_of": fields[3] if fields[3] != "-" else "",
                "slots": slots,
                "open_slots": open_slots,
                "trouble": [f for f in flags if f in ("fail", "fail?", "handshake", "noaddr")],
                "link": fields[7],
            }
        )
    return nodes


def redis_scale_pairs(new_nodes: list[str], replicas: int) -> list[dict[str, Any]]:
    """Group new instances (ip:port, in inventory order) into primaries with
    `replicas` replicas each.

    The instances are first taken host by host in turn (round robin over the
    addresses' hosts), so the primaries spread over as many hosts as there
    are; each replica then goes to a primary on another host that still
    needs one (the next one in turn), and only when there is none to one on
    its own host. The caller checks that len(new_nodes) is a multiple of
    replicas + 1.
    """
    per_host: dict[str, list[str]] = {}
    for node in new_nodes:
        per_host.setdefault(str(node).rpartition(":")[0], []).append(str(node))
    queues = list(per_host.values())
    ordered: list[str] = []
    while any(queues):
        for queue in queues:
            if queue:
                ordered.append(queue.pop(0))
    count = len(ordered) // (int(replicas) + 1)
    pairs: list[dict[str, Any]] = [{"primary": node, "replicas": []} for node in ordered[:count]]
    for index, node in enumerate(ordered[count:]):
        host = node.rpartition(":")[0]
        # Shifted by one: the replicas, taken host by host like the
        # primaries, land on the next host's primary rather than their own.
        turn = [pairs[(index + 1 + k) % count] for k in range(count)]
        open_pairs = [p for p in turn if len(p["replicas"]) < int(replicas)]
        elsewhere = [p for p in open_pairs if p["primary"].rpartition(":")[0] != host]
        (elsewhere or open_pairs)[0]["replicas"].append(node)
    return pairs


class FilterModule:
    """Role redis's filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "redis_parse_cluster_nodes": redis_parse_cluster_nodes,
            "redis_scale_pairs": redis_scale_pairs,
        }
