"""Child process for tests/test_records.py: write records concurrently with its siblings.

Usage: python _records_writer.py DB_PATH WRITER_ID COUNT START_AT
Waits until the wall clock reaches START_AT (so all writers start together), then emits
COUNT attempt events and, for each, a download's `attempting` and `success` progress
events, flushing every 25 events so that the processes' transactions interleave.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from modelfetch.events import AttemptEvent, ProgressEvent
from modelfetch.records import Records


def main(argv: list[str]) -> int:
    path, writer, count, start_at = Path(argv[1]), argv[2], int(argv[3]), float(argv[4])
    time.sleep(max(0.0, start_at - time.time()))
    records = Records(path)
    for i in range(count):
        name = f"w{writer}-{i}"
        records.listener(ProgressEvent("model", name, "ipfs", "attempting"))
        records.listener(
            AttemptEvent(
                "model", name, "ipfs", "success", gateway="https://ipfs.io", latency_ms=float(i)
            )
        )
        records.listener(
            ProgressEvent("model", name, "ipfs", "success", bytes_downloaded=i, total_bytes=i)
        )
        if i % 25 == 24:
            records.flush()
    records.close()
    return 1 if records.dropped_events else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
