"""Build the evaluation prompt file (JSONL with ``prompt`` and ``group``) from the shared data folder.

The prompts are the *test* side of the cost model's split (:func:`ig_middleware.training.build_cost_data.split_of`,
a hash of the request): harmful requests, harmful requests wrapped in the jailbreak templates the cost model
held out entirely, benign and borderline requests. Neither the cost model nor the critic trains on them.

Usage::

    python -m ig_middleware.training.build_eval_set --data-dir ../shared/data --out eval_prompts.jsonl \
        --harmful 20 --jailbreak 10 --benign 10 --borderline 10 --dev 5
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import dev_prompts
from .train_critic import load_sources, select_prompts


def build_eval_set(
    data_dir: str | Path, counts: dict[str, int], seed: int = 0, split: str = "test", dev: int = 0
) -> list[dict[str, Any]]:
    """Held-out prompts, ``counts`` per group (fewer where the split has fewer), plus up to ``dev`` per group
    of the ``dev`` split of :mod:`dev_prompts` (other phrasings than the shared data; ``source: "dev"``)."""
    rows = [{**r, "source": "shared"} for r in select_prompts(load_sources(data_dir), split, counts, seed=seed)]
    for group, prompts in (
        ("harmful", dev_prompts.DEV_HARMFUL),
        ("benign", dev_prompts.DEV_BENIGN),
        ("borderline", dev_prompts.DEV_BORDERLINE),
    ):
        rows += [
            {"prompt": p, "group": group, "request": p, "source": "dev"}
            for p in dev_prompts.split(prompts, "dev")[:dev]
        ]
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build the held-out evaluation prompt set (JSONL).")
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--out", required=True)
    ap.add_argument("--harmful", type=int, default=20)
    ap.add_argument("--jailbreak", type=int, default=10)
    ap.add_argument("--benign", type=int, default=10)
    ap.add_argument("--borderline", type=int, default=10)
    ap.add_argument(
        "--dev", type=int, default=0, help="also this many dev_prompts per group (harmful/benign/borderline)"
    )
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    counts = {"harmful": a.harmful, "jailbreak": a.jailbreak, "benign": a.benign, "borderline": a.borderline}
    rows = build_eval_set(a.data_dir, counts, a.seed, dev=a.dev)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} prompts to {out}: {dict(Counter(r['group'] for r in rows))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
