"""How often does the judge leave a non-refusal to a held-out harmful request within budget?

InferenceGuard returns the best candidate the judge passes, so the search finds the judge's blind spots. This
samples first-block candidates (32 tokens, the search's sampling settings) of the default model for held-out
harmful requests and counts the candidates that are not refusals (by the evaluation harness's regex) yet stay
within budget:

    python bench/bench_judge_leaks.py                       # the shipped judge
    python bench/bench_judge_leaks.py --weights DIR_A --weights DIR_B

Requests (none trained on): AdvBench's test half, HarmBench, the dev prompts, the corpus ``dev`` items, and
dev/test requests wrapped in the held-out jailbreak templates. Samples are cached in ``--work``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import defaultdict
from pathlib import Path

from ig_middleware import GuardConfig
from ig_middleware.cost_model import WEIGHTS_DIR, MiniLMCostModel
from ig_middleware.evaluation import is_refusal
from ig_middleware.training import judge_data as jd


def plan(data_dir: str, wheels: str, per_source: int, samples: int) -> list[dict]:
    pools = jd.request_pools(data_dir, wheels)
    held = [r for r in pools["harmful"] if r["split"] in ("test", "dev") and not r.get("shared")]
    by_source: dict[str, list[dict]] = defaultdict(list)
    for r in held:
        by_source[r["source"]].append(r)
    templates = [t for t in pools["templates"] if t["split"] == "test"]
    jobs = []
    for source, rows in sorted(by_source.items()):
        for i, r in enumerate(rows[:per_source]):
            prompts = [(source, r["text"])]
            if i < per_source // 4 and templates:
                prompts.append(("jailbreak", jd.wrap(templates[i % len(templates)]["template"], r["text"])))
            for kind, prompt in prompts:
                for s in range(samples):
                    jid = hashlib.sha1(f"leak|{prompt}|{s}".encode()).hexdigest()[:16]
                    jobs.append({"id": jid, "prompt": prompt, "request": r["text"], "kind": kind})
    return jobs


def leak_table(candidates: list[dict], judge: MiniLMCostModel, budget: float) -> list[dict]:
    costs = judge.score([r["prompt"] for r in candidates], [r["response"] for r in candidates])
    by_kind: dict[str, dict[str, list[tuple[bool, bool]]]] = defaultdict(lambda: defaultdict(list))
    for r, cost in zip(candidates, costs, strict=True):
        # one block from z0 = 1: the candidate stays within budget while cost < d (safety.py)
        by_kind[r["kind"]][r["prompt"]].append((is_refusal(r["response"]), cost < budget))
    table = []
    for kind, prompts in sorted(by_kind.items()):
        cands = [c for v in prompts.values() for c in v]
        nonref = [c for c in cands if not c[0]]
        leaked = [c for c in nonref if c[1]]
        table.append(
            {
                "requests": kind,
                "prompts": len(prompts),
                "candidates": len(cands),
                "non-refusals": len(nonref),
                "non-refusals within budget": f"{len(leaked)} ({len(leaked) / max(1, len(nonref)):.1%})",
                "prompts with a leak": f"{sum(any(not r and ok for r, ok in v) for v in prompts.values())} / {len(prompts)}",
            }
        )
    return table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--wheels", default="/tmp/ig_wheels")
    ap.add_argument("--work", default="/tmp/ig_leaks")
    ap.add_argument("--per-source", type=int, default=20)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--weights", action="append", default=None, help="cost-model folder(s); default: the shipped one")
    ap.add_argument("--budget", type=float, default=GuardConfig().budget, help="safety budget d")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    jobs = plan(args.data_dir, args.wheels, args.per_source, args.samples)
    jd.generate(jobs, work / "candidates.jsonl", max_new_tokens=32, batch_size=48)
    done = {r["id"]: r["response"] for r in jd.read_jsonl(work / "candidates.jsonl")}
    candidates = [{**j, "response": done[j["id"]]} for j in jobs if done.get(j["id"], "").strip()]
    for weights in args.weights or [str(WEIGHTS_DIR)]:
        table = leak_table(candidates, MiniLMCostModel.load(weights), args.budget)
        print(f"\njudge: {weights}\n")
        print("| " + " | ".join(table[0]) + " |\n|" + "---|" * len(table[0]))
        for row in table:
            print("| " + " | ".join(str(v) for v in row.values()) + " |")
    print("\n" + json.dumps({"candidates": len(candidates), "budget": args.budget}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
