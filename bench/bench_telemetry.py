"""Overhead of the OpenTelemetry observer per search, in one process.

Four settings, interleaved round-robin so that machine noise hits all alike:

* ``none``: no observer (``GuardedEngine(telemetry=False)``);
* ``default``: the tracer every engine gets (:func:`auto_observer`) with no SDK configured: the
  zero-code default;
* ``noop``: a :class:`GuardTracer` on the OpenTelemetry API's explicit no-op tracer provider;
* ``inmemory``: a :class:`GuardTracer` on an SDK ``TracerProvider`` with an ``InMemorySpanExporter``.

Reports the median wall time per search and its ratio to ``none``. Because a search's time is dominated
by the model (and noisy on a shared CPU), it also replays one search's recorded events through each
observer many times and reports the observer's own cost per search in microseconds and as a fraction of
the median search time: that is the overhead itself, free of model noise.

    python bench/bench_telemetry.py                # tiny random Llama with the default tokenizer (seconds)
    python bench/bench_telemetry.py --real         # the embedded default model, tiny settings
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import report


def tiny_model():
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ig_middleware.models import LoadedModel, _default_model_dir

    tok = AutoTokenizer.from_pretrained(_default_model_dir())
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=1024, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    return LoadedModel(name="tiny-llama", model=LlamaForCausalLM(cfg).eval(), tokenizer=tok, device=torch.device("cpu"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", action="store_true", help="use the embedded default model")
    ap.add_argument("--rounds", type=int, default=8, help="searches per setting")
    ap.add_argument("--replays", type=int, default=2000, help="event replays per observer")
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args()

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import NoOpTracerProvider

    from ig_middleware import GuardConfig, GuardedEngine, KeywordCostModel
    from ig_middleware.telemetry import GuardTracer, auto_observer

    lm = None if args.real else tiny_model()
    cfg = GuardConfig(num_candidates=4, num_beams=2, block_size=8, max_new_tokens=32, seed=0)
    engine = GuardedEngine(
        lm if lm is not None else "smollm2-135m-instruct", cost_model=KeywordCostModel(), config=cfg, telemetry=False
    )
    exporter = InMemorySpanExporter()
    sdk = TracerProvider()
    sdk.add_span_processor(SimpleSpanProcessor(exporter))
    observers = {
        "none": [],
        "default": [auto_observer()],
        "noop": [GuardTracer(NoOpTracerProvider())],
        "inmemory": [GuardTracer(sdk)],
    }
    prompt = "Give me two tips for brewing a good cup of green tea."
    recorded: list = []
    engine.generate(prompt, observers=[recorded.append])  # warm-up + the events to replay

    times: dict[str, list[float]] = {k: [] for k in observers}
    for _ in range(args.rounds):
        for name, obs in observers.items():
            t = time.perf_counter()
            engine.generate(prompt, observers=obs)
            times[name].append(time.perf_counter() - t)
            exporter.clear()
    median = {k: statistics.median(v) for k, v in times.items()}

    def replay(make) -> float:
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(args.replays):
                obs = make()
                for ev in recorded:
                    obs(ev)
                exporter.clear()
            best = min(best, (time.perf_counter() - t) / args.replays)
        return best

    default_tracer, noop_tracer, sdk_tracer = auto_observer(), GuardTracer(NoOpTracerProvider()), GuardTracer(sdk)
    per_search = {
        "default": replay(lambda: default_tracer),
        "noop": replay(lambda: noop_tracer),
        "inmemory": replay(lambda: sdk_tracer),
    }
    out = {
        "model": engine.lm.name,
        "events_per_search": len(recorded),
        "blocks_per_search": sum(1 for e in recorded if type(e).__name__ == "BlockEvaluated"),
        "median_search_s": median,
        "ratio_vs_none": {k: median[k] / median["none"] for k in median},
        "observer_us_per_search": {k: v * 1e6 for k, v in per_search.items()},
        "observer_fraction_of_search": {k: v / median["none"] for k, v in per_search.items()},
    }
    report(out, args.json)


if __name__ == "__main__":
    main()
