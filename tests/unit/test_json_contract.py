"""The JSON each command prints has exactly the keys docs/json.md documents."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from conftest import Local

DOC = Path(__file__).resolve().parents[2] / "docs" / "json.md"


def documented() -> dict[str, set[str]]:
    """Keys per section of docs/json.md ("session", "hpclab up --json", ...)."""
    sections: dict[str, set[str]] = {}
    current = None
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            sections[current] = set()
        elif current and (m := re.match(r"^- `([a-z_]+)`:", line)):
            sections[current].add(m.group(1))
    return sections


def test_every_command_prints_the_documented_keys(local: Local) -> None:
    doc = documented()
    session = doc["session"]
    assert {"id", "url", "local_port", "job_id", "state"} <= session

    up = local.json("up", "local", "--detach", "--no-browser")
    assert set(up) == session | doc["hpclab up --json"]
    assert set(up["timings"]) == {"connect", "submit", "queued", "jupyter", "tunnel", "ready"}
    assert set(up["stats"]) == {"ssh_connects", "ssh_commands", "scheduler_queries"}

    (row,) = local.json("list")
    assert set(row) == session | doc["hpclab list --json"]

    attached = local.json("attach", up["id"], "--detach", "--no-browser")
    assert set(attached) == session

    assert set(local.json("url", up["id"])) == doc["hpclab url --json"]

    with socket.socket() as service:  # a port that listens on "the node" (this machine)
        service.bind(("127.0.0.1", 0))
        service.listen()
        forwarded = local.json("forward", up["id"], str(service.getsockname()[1]))
    assert set(forwarded) == doc["hpclab forward --json"]
    (row,) = local.json("list")
    assert set(row["forwards"][0]) == {"node_port", "local_port", "url"}

    (stopped,) = local.json("stop", up["id"])
    assert set(stopped) == doc["hpclab stop --json"]

    up = local.json("up", "local", "--detach", "--no-browser")
    for record in (local.state / "state" / "sessions").glob("*.json"):
        record.unlink()
    (orphan,) = local.json("cleanup", "--yes")
    assert set(orphan) == doc["hpclab cleanup --json"]
