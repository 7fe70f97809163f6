"""Build the evaluation prompt file (JSONL with ``prompt`` and ``group``) from the shared data folder.

The prompts are the *test* side of the cost model's split (:func:`ig_middleware.training.judge_data.split_of`,
a hash of the request): harmful requests, harmful requests wrapped in the jailbreak templates the cost model
held out entirely, benign and borderline requests. Neither the cost model nor the critic trains on them.

Also, from the evaluation-only public sets and the project's held-out splits (``source`` names each):
``--advbench N`` AdvBench's test half (:mod:`public_sets`, fixed seed), ``--harmbench N`` HarmBench,
``--dev N`` the ``dev`` third of :mod:`dev_prompts`, ``--corpus-dev N`` the ``dev`` items of the corpus
benign and borderline requests (:func:`judge_data.corpus_split`).

Usage::

    python -m ig_middleware.training.build_eval_set --data-dir ../shared/data --out eval_prompts.jsonl \
        --harmful 20 --jailbreak 10 --benign 10 --borderline 10 --dev 15 --advbench 260 --corpus-dev 40
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import dev_prompts, judge_data, public_sets
from .train_critic import load_sources, select_prompts


def public_rows(
    advbench: int = 0, harmbench: int = 0, wheel_dir: str | Path = public_sets.DEFAULT_WHEEL_DIR
) -> list[dict[str, Any]]:
    """The first ``advbench`` prompts of AdvBench's test half and ``harmbench`` of HarmBench (group harmful)."""
    rows = []
    if advbench:
        rows += [
            {"prompt": r["prompt"], "group": "harmful", "request": r["prompt"], "source": "advbench"}
            for r in public_sets.advbench(wheel_dir, "test")[:advbench]
        ]
    if harmbench:
        rows += [
            {"prompt": r["prompt"], "group": "harmful", "request": r["prompt"], "source": "harmbench"}
            for r in public_sets.harmbench(wheel_dir)[:harmbench]
        ]
    return rows


def corpus_dev_rows(n: int) -> list[dict[str, Any]]:
    """Up to ``n`` benign and ``n`` borderline held-out corpus requests (every fifth item, never trained on)."""
    rows = []
    for group, names in (
        ("benign", ("benign_requests_general", "benign_requests_topics")),
        ("borderline", ("borderline_requests",)),
    ):
        items = [r for name in names for r in judge_data.corpus(name) if r["split"] == "dev"]
        step = max(1, len(items) // max(1, n))
        rows += [
            {
                "prompt": r["text"],
                "group": group,
                "request": r["text"],
                "source": "corpus-dev",
                "category": r.get("category"),
            }
            for r in items[::step][:n]
        ]
    return rows


def build_eval_set(
    data_dir: str | Path,
    counts: dict[str, int],
    seed: int = 0,
    split: str = "test",
    dev: int = 0,
    advbench: int = 0,
    harmbench: int = 0,
    corpus_dev: int = 0,
    wheel_dir: str | Path = public_sets.DEFAULT_WHEEL_DIR,
) -> list[dict[str, Any]]:
    """Held-out prompts, ``counts`` per group (fewer where the split has fewer), plus up to ``dev`` per group
    of the ``dev`` split of :mod:`dev_prompts` (other phrasings than the shared data; ``source: "dev"``) and
    the public and corpus held-out sets above."""
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
    return rows + public_rows(advbench, harmbench, wheel_dir) + corpus_dev_rows(corpus_dev)


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
    ap.add_argument("--advbench", type=int, default=0, help="this many AdvBench test-half prompts (harmful)")
    ap.add_argument("--harmbench", type=int, default=0, help="this many HarmBench prompts (harmful)")
    ap.add_argument("--corpus-dev", type=int, default=0, help="this many held-out corpus benign and borderline each")
    ap.add_argument("--wheels", default=str(public_sets.DEFAULT_WHEEL_DIR))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    counts = {"harmful": a.harmful, "jailbreak": a.jailbreak, "benign": a.benign, "borderline": a.borderline}
    rows = build_eval_set(
        a.data_dir,
        counts,
        a.seed,
        dev=a.dev,
        advbench=a.advbench,
        harmbench=a.harmbench,
        corpus_dev=a.corpus_dev,
        wheel_dir=a.wheels,
    )
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} prompts to {out}: {dict(Counter(r['group'] for r in rows))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
