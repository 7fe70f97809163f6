"""The InferenceGuard search over a vLLM server vs. unguarded vLLM, and guarded requests/s under concurrency.

Needs a running vLLM serving the embedded model (``integrations/vllm/vllm.sh install export start``). In one
process, against that server:

1. Unguarded: one ``/v1/completions`` request per answer (the same chat prompt as token ids, ``n=1``,
   ``max_tokens = min_tokens = --tokens``), as a client would call vLLM directly.
2. Guarded: ``GuardedEngine(backend=OpenAICompletionsBackend(...))`` at the default search config (N=16, K=4,
   B=32, the shipped judge; no latent critic over the API), answers forced to the same length.
   Interleaved round-robin; ratio of medians (target <= 3x).
3. Throughput: ``--requests`` guarded answers from 1 caller vs. 8 concurrent callers (requests/s).

    python bench/bench_vllm.py --base-url http://127.0.0.1:8011/v1
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from _common import PROMPTS, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", default="http://127.0.0.1:8011/v1")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args()

    import httpx

    from ig_middleware import GuardConfig, GuardedEngine
    from ig_middleware.remote import OpenAICompletionsBackend

    backend = OpenAICompletionsBackend(args.base_url, args.model, timeout_s=600)
    cfg = GuardConfig(max_new_tokens=args.tokens, min_new_tokens=args.tokens, seed=0)
    engine = GuardedEngine(args.model, backend=backend, config=cfg)
    lm = engine.lm
    client = httpx.Client(timeout=600)

    def unguarded(prompt: str, seed: int) -> float:
        ids = lm.encode(lm.render([{"role": "user", "content": prompt}]))
        t = time.perf_counter()
        r = client.post(args.base_url + "/completions", json={
            "model": args.model, "prompt": ids, "max_tokens": args.tokens, "min_tokens": args.tokens,
            "temperature": cfg.temperature, "top_p": cfg.top_p, "seed": seed, "logprobs": 0,
        })  # fmt: skip
        r.raise_for_status()
        return time.perf_counter() - t

    failures: list[str] = []

    def guarded(prompt: str, seed: int) -> float:
        t = time.perf_counter()
        result = engine.generate(prompt, seed=seed)
        if result.fallback_reason not in (None, "no_safe_candidate"):  # a failure, not a verdict: report it
            failures.append(f"{result.fallback_reason}: {result.fallback_detail}")
        return time.perf_counter() - t

    guarded(PROMPTS[0], 99)  # warm-up: judge weights, tokenizer, server graphs
    times: dict[str, list[float]] = {"unguarded": [], "guarded": []}
    for r in range(args.rounds):
        for i, prompt in enumerate(PROMPTS):
            times["unguarded"].append(unguarded(prompt, 100 * r + i))
            times["guarded"].append(guarded(prompt, 100 * r + i))
    median = {k: statistics.median(v) for k, v in times.items()}

    def throughput(callers: int) -> float:
        t = time.perf_counter()
        with ThreadPoolExecutor(callers) as pool:
            list(pool.map(lambda i: guarded(PROMPTS[i % 3], 1000 + i), range(args.requests)))
        return args.requests / (time.perf_counter() - t)

    rps = {"1_caller": throughput(1), "8_callers": throughput(8)}
    out = {
        "server": args.base_url,
        "config": {
            "N": cfg.num_candidates,
            "K": cfg.num_beams,
            "B": cfg.block_size,
            "tokens": args.tokens,
            "critic": False,
            "judge": type(engine.cost_model).__name__,
        },  # fmt: skip
        "median_s": median,
        "guarded_over_unguarded": median["guarded"] / median["unguarded"],
        "guarded_requests_per_s": rps,
        "8_over_1_caller": rps["8_callers"] / rps["1_caller"],
        "failed_searches": failures,
    }
    report(out, args.json)


if __name__ == "__main__":
    main()
