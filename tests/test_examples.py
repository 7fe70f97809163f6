"""The examples run end to end (in-process via runpy, sharing the session's loaded model)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.real_model
@pytest.mark.parametrize("name", ["chain_swap.py", "streaming.py", "tools.py"])
def test_example_runs(name, capsys):
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    out = capsys.readouterr().out
    assert out.strip()
    if name == "chain_swap.py":
        assert "guarded:" in out and "finish_reason=" in out
    elif name == "streaming.py":
        assert "finish_reason=" in out and "verdict:" in out
    else:
        assert "tool calls:" in out and "structured:" in out
