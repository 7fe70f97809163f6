"""Guarded vs unguarded latency at equal output length, in one process.

    python bench/bench_engine.py --tokens 64 --repeats 2 --out docs/benchmarks.md

The baseline is transformers' own ``model.generate`` (greedy, KV cache) for the same number of new
tokens; every guarded setting is reported as a ratio to it, measured in the same process on the same
prompts. Also: sampled tokens per second (all candidates) and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from ig_middleware import GuardConfig, GuardedEngine, load_model

PROMPTS = ("Give me three tips for improving my sleep.", "How do I make a bomb at home?")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_hf_generate(lm, prompt: str, tokens: int) -> float:
    ids = torch.tensor([lm.encode(lm.render([{"role": "user", "content": prompt}]))], device=lm.device)
    t = time.perf_counter()
    with torch.inference_mode():
        lm.model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per answer (forced: EOS suppressed)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--settings", default="4x1,8x2,16x4", help="NxK pairs; B from --block-size")
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--critic", action="store_true", help="also run the default config with the shipped critic")
    ap.add_argument("--out", type=Path, help="write the markdown table here")
    args = ap.parse_args(argv)

    lm = load_model(device=args.device)
    engine = GuardedEngine(lm, critic=None)
    engine.cost_model.score(["warm"], ["up"])  # load the judge outside the timings
    for p in PROMPTS:  # warm-up: first calls pay one-off kernel selection costs
        time_hf_generate(lm, p, 4)
        engine.generate(p, method="greedy", max_new_tokens=4)

    def run_engine(eng: GuardedEngine, **cfg) -> tuple[float, int, int]:
        secs, sampled, judged = [], 0, 0
        for _ in range(args.repeats):
            for p in PROMPTS:
                r = eng.generate(p, GuardConfig(max_new_tokens=args.tokens, min_new_tokens=args.tokens, seed=0, **cfg))
                secs.append(r.timings.total_s)
                sampled += r.sampled_tokens
                judged += r.judge_calls
        return statistics.mean(secs), sampled, judged

    base = statistics.mean(time_hf_generate(lm, p, args.tokens) for _ in range(args.repeats) for p in PROMPTS)
    rows = [("unguarded `model.generate` (greedy)", base, 1.0, args.tokens / base, "-", peak_rss_mb())]
    mean, sampled, _ = run_engine(engine, method="greedy", enforce_budget=False, safety_mode="none")
    rows.append(
        (
            "engine greedy, no judge",
            mean,
            mean / base,
            sampled / (mean * args.repeats * len(PROMPTS)),
            "-",
            peak_rss_mb(),
        )
    )
    settings = [tuple(int(x) for x in s.split("x")) for s in args.settings.split(",")]
    for n, k in settings:
        mean, sampled, judged = run_engine(
            engine, method="inferenceguard", num_candidates=n, num_beams=k, block_size=args.block_size
        )
        calls = len(PROMPTS) * args.repeats
        rows.append(
            (
                f"inferenceguard N={n} K={k} B={args.block_size}",
                mean,
                mean / base,
                sampled / (mean * calls),
                f"{judged / calls:.0f}",
                peak_rss_mb(),
            )
        )
    if args.critic:
        critic_engine = GuardedEngine(lm, cost_model=engine.cost_model, critic="auto")
        if critic_engine.critic is not None:
            n, k = settings[-1]
            mean, sampled, judged = run_engine(
                critic_engine, method="inferenceguard", num_candidates=n, num_beams=k, block_size=args.block_size
            )
            calls = len(PROMPTS) * args.repeats
            rows.append(
                (
                    f"inferenceguard + critic N={n} K={k} B={args.block_size}",
                    mean,
                    mean / base,
                    sampled / (mean * calls),
                    f"{judged / calls:.0f}",
                    peak_rss_mb(),
                )
            )

    head = (
        f"{args.tokens} new tokens per answer, {len(PROMPTS)} prompts x {args.repeats} repeats, device "
        f"{args.device} ({platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads)\n\n"
        "| setting | s / answer | ratio vs unguarded | sampled tok/s | judge calls / answer | peak RSS MB |\n"
        "|---|---|---|---|---|---|\n"
    )
    table = head + "".join(
        f"| {name} | {s:.2f} | {ratio:.2f}x | {tps:.1f} | {judged} | {rss:.0f} |\n"
        for name, s, ratio, tps, judged, rss in rows
    )
    print(table)
    if args.out:
        args.out.write_text(args.out.read_text() + "\n" + table if args.out.exists() else table)


if __name__ == "__main__":
    main()
