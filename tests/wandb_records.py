"""Read an offline wandb run (`run-<id>.wandb`) without the network: the file is a LevelDB-style log of
protobuf `Record`s (wandb 0.31 has no Python reader any more, its core is in Go)."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = 7  # crc32 (4), length (2), type (1); the file itself starts with b":W&B" + magic (2) + version (1)
FULL, LAST = 1, 4


def records(path: Path) -> Iterator[pb.Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb datastore"
    pos, chunk = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:
            break
        chunk += data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


@dataclass
class OfflineRun:
    run_id: str = ""
    group: str = ""
    job_type: str = ""
    name: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history_keys: set[str] = field(default_factory=set)
    summary: dict[str, Any] = field(default_factory=dict)


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_offline_run(run_dir: Path) -> OfflineRun:
    """Everything a test checks from `<job dir>/wandb/offline-run-*/run-*.wandb`."""
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    run = OfflineRun()
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.group, run.name = record.run.run_id, record.run.run_group, record.run.display_name
            run.job_type = record.run.job_type
            run.tags = list(record.run.tags)
        elif kind == "config":
            run.config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            run.history_keys.update(_key(i) for i in record.history.item)
        elif kind == "summary":
            run.summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
    return run
