"""Read an offline W&B run's ``.wandb`` file back: the records the SDK wrote, in order.

The file is a LevelDB-style log (32 KiB blocks of checksummed chunks after a 7-byte
``:W&B`` header) of ``wandb_internal_pb2.Record`` protobufs. No Python reader ships with
the SDK any more, so the tests keep this small one.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, payload = 7, b""
    while pos + CHUNK_HEADER.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER.size:  # block trailer padding
            pos += left
            continue
        _, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        pos += CHUNK_HEADER.size
        if kind == 0:  # zero padding to the end of the block
            pos += left - CHUNK_HEADER.size
            continue
        payload += data[pos : pos + length]
        pos += length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            yield record
            payload = b""


def history(path: Path) -> list[dict]:
    """Every ``wandb.log`` row of the run, values decoded from JSON."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return rows


def run_name(path: Path) -> str:
    for record in records(path):
        if record.WhichOneof("record_type") == "run":
            return record.run.display_name
    raise AssertionError(f"no run record in {path}")
