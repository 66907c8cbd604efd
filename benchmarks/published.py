"""How a benchmark publishes its figures: stamped with the command, date and machine, printed as a table and
written as JSON (benchmarks/results/)."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def publish(results: dict[str, Any], path: Path, table: Callable[[dict[str, Any]], str], sharing: str) -> None:
    """Stamp `results` (the command that made them, the date, the machine: `sharing` says what shared its
    cores), print `table(results)` and write them to `path`."""
    results["command"] = " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    results["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "note": f"{sharing} share the machine's cores"}
    print(table(results))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")
