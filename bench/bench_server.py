"""The guarded server's cost over calling the engine in process, its throughput, and its queue under overload.

One process, the embedded default model, the shipped judge and critic, one uvicorn server on loopback:

1. Overhead: the same requests (same prompt, seed and config, so the same answers) through the in-process
   chat model path the server uses (``ChatInferenceGuard.astream``) and over HTTP with the ``openai`` SDK,
   interleaved round-robin; ratio of medians (target <= 1.05 at the default config).
2. Throughput: ``--requests`` answers from 1 client one after another vs. from 8 concurrent clients.
3. Overload: ``--overload`` concurrent clients against ``max_queue=8``: answered vs. refused (429) and how long
   a refusal takes.

    python bench/bench_server.py                       # default config (N=16, K=4, B=32), 64 tokens
    python bench/bench_server.py --tokens 32 --rounds 2 --json docs/img/bench_server.json
    python bench/bench_server.py --base-url http://127.0.0.1:8011/v1 --max-running 8   # over a vLLM server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from _common import PROMPTS, free_port, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64, help="forced answer length (min = max new tokens)")
    ap.add_argument("--rounds", type=int, default=2, help="passes over the prompts for the overhead")
    ap.add_argument("--requests", type=int, default=8, help="answers per throughput setting")
    ap.add_argument("--overload", type=int, default=24, help="concurrent clients in the overload run")
    ap.add_argument("--base-url", help="sample on this vLLM server instead of the local model")
    ap.add_argument("--max-running", type=int, default=1, help="searches at once (raise it for --base-url)")
    ap.add_argument("--overhead-only", action="store_true", help="skip the throughput and overload runs")
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args()

    import openai
    import uvicorn

    from ig_middleware import GuardConfig, GuardedEngine
    from ig_middleware.server import ServerSettings, create_app

    cfg = GuardConfig(max_new_tokens=args.tokens, min_new_tokens=args.tokens, seed=0)
    backend = None
    if args.base_url:
        from ig_middleware.remote import OpenAICompletionsBackend

        backend = OpenAICompletionsBackend(args.base_url, "smollm2-135m-instruct", timeout_s=600)
    engine = GuardedEngine(config=cfg, backend=backend)
    settings = ServerSettings(max_queue=8, max_running=args.max_running, queue_timeout_s=3600, request_timeout_s=None)
    app = create_app(settings, engine=engine)
    service = app.state.service
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
    model = service.settings.model_name

    def over_http(prompt: str, seed: int) -> tuple[float, str]:
        t = time.perf_counter()
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], seed=seed)
        return time.perf_counter() - t, r.choices[0].message.content

    def in_process(prompt: str, seed: int) -> tuple[float, str]:
        async def run() -> str:
            msg = None
            async for c in service.chat_model.astream(prompt, seed=seed, timeout=None):
                msg = c if msg is None else msg + c
            return msg.content if isinstance(msg.content, str) else str(msg.content)

        t = time.perf_counter()
        text = asyncio.run(run())
        return time.perf_counter() - t, text

    over_http(PROMPTS[0], 99)  # warm-up: weights, judge, critic, HTTP connection
    times: dict[str, list[float]] = {"in_process": [], "http": []}
    same = 0
    for r in range(args.rounds):
        for i, prompt in enumerate(PROMPTS):
            seed = 100 * r + i
            if (r + i) % 2:  # alternate which path goes first, so drift hits both alike
                t_http, b = over_http(prompt, seed)
                t_in, a = in_process(prompt, seed)
            else:
                t_in, a = in_process(prompt, seed)
                t_http, b = over_http(prompt, seed)
            times["in_process"].append(t_in)
            times["http"].append(t_http)
            same += a == b
    median = {k: statistics.median(v) for k, v in times.items()}
    pairs = [h / i for h, i in zip(times["http"], times["in_process"], strict=True)]
    print("overhead", json.dumps({"per_pair_ratio": [round(x, 3) for x in pairs]}), flush=True)
    print("overhead", json.dumps({"median_s": median, "ratio": median["http"] / median["in_process"],
                                  "same_answers": same}), flush=True)  # fmt: skip

    if args.overhead_only:
        server.should_exit = True
        return

    def throughput(clients: int) -> float:
        t = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda i: over_http(PROMPTS[i % len(PROMPTS)], 1000 + i), range(args.requests)))
        return args.requests / (time.perf_counter() - t)

    rps = {"1_client": throughput(1), "8_clients": throughput(8)}
    print("throughput", json.dumps(rps), flush=True)

    def attempt(i: int) -> tuple[int, float]:
        t = time.perf_counter()
        try:
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": PROMPTS[i % 3]}], seed=i,
                extra_body={"inferenceguard": {"num_candidates": 4, "num_beams": 1}},
            )  # fmt: skip
            return 200, time.perf_counter() - t
        except openai.RateLimitError:
            return 429, time.perf_counter() - t

    with ThreadPoolExecutor(args.overload) as pool:
        outcomes = list(pool.map(attempt, range(args.overload)))
    refused = [s for code, s in outcomes if code == 429]
    answered = [s for code, s in outcomes if code == 200]
    server.should_exit = True

    out = {
        "model": engine.lm.name,
        "backend": engine.backend.name,
        "config": {
            "N": cfg.num_candidates,
            "K": cfg.num_beams,
            "B": cfg.block_size,
            "tokens": args.tokens,
            "critic": engine.critic is not None,
        },  # fmt: skip
        "median_s": median,
        "http_over_in_process": median["http"] / median["in_process"],
        "same_answers": f"{same}/{len(times['http'])}",
        "requests_per_s": rps,
        "8_over_1_client": rps["8_clients"] / rps["1_client"],
        "overload": {
            "clients": args.overload,
            "max_queue": 8,
            "max_running": args.max_running,
            "answered": len(answered),
            "refused_429": len(refused),
            "lost": args.overload - len(answered) - len(refused),
            "median_refusal_s": statistics.median(refused) if refused else None,
            "max_answer_s": max(answered) if answered else None,
        },  # fmt: skip
    }
    report(out, args.json)


if __name__ == "__main__":
    main()
