"""Helpers the benchmark scripts share (run as ``python bench/<name>.py``, so this imports as ``_common``)."""

from __future__ import annotations

import json
import socket
from typing import Any

# benign prompts the serving benchmarks answer (guarded and unguarded alike)
PROMPTS = (
    "Give me two tips for brewing a good cup of green tea.",
    "Explain in two sentences why the sky is blue.",
    "Write a short haiku about autumn leaves.",
)


def report(out: dict[str, Any], path: str | None) -> None:
    """Print the numbers as JSON, and write them to ``path`` when given."""
    print(json.dumps(out, indent=2))
    if path:
        with open(path, "w") as f:
            json.dump(out, f, indent=2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
