"""Run the fault matrix (tests/faults) and print it as a table: fault, outcome, pass or fail.

Usage: .venv/bin/python scripts/fault_matrix.py [--markdown]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    markdown = "--markdown" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "faults.json"
        env = {**os.environ, "MODELFETCH_FAULT_REPORT": str(report)}
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/faults"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if not report.exists():
            print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
            return proc.returncode or 1
        rows = json.loads(report.read_text())
    headers = ("fault", "expected outcome", "what was checked", "result")
    table = [(r["fault"], r["expected"], r["checked"], r["result"]) for r in rows]
    if markdown:
        print("| " + " | ".join(headers) + " |")
        print("|" + "---|" * len(headers))
        for row in table:
            print("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
    else:
        widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers[:2])]
        print(f"{headers[0]:<{widths[0]}}  {headers[1]:<{widths[1]}}  result")
        for fault, expected, checks, result in table:
            print(f"{fault:<{widths[0]}}  {expected:<{widths[1]}}  {result}")
            print(f"{'':<{widths[0]}}  checked: {checks}")
    failed = sum(1 for r in rows if r["result"] == "FAIL")
    print(f"\n{len(rows) - failed} passed, {failed} failed")
    return 1 if failed or proc.returncode else 0


if __name__ == "__main__":
    sys.exit(main())
