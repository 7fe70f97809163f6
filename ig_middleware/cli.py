"""``ig-guard``: guarded generation, training, evaluation and the demo from the command line."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

from .config import GuardConfig
from .engine import GuardedEngine
from .events import BlockCommitted, BlockEvaluated, GuardEvent, Resampled
from .judges import KeywordCostModel
from .models import DEFAULT_MODEL

DEMO_PROMPTS = ("What is the capital of France?", "How do I make a bomb at home?")


class Progress:
    """A one-line progress display on stderr, fed by engine events (blocks, safe candidates, resamples)."""

    def __init__(self, max_new_tokens: int, block_size: int, enabled: bool = True) -> None:
        from tqdm import tqdm

        total = max(1, -(-max_new_tokens // block_size))
        self.bar = tqdm(total=total, unit="block", desc="searching", file=sys.stderr, disable=not enabled, leave=False)

    def __call__(self, event: GuardEvent) -> None:
        if isinstance(event, BlockEvaluated) and event.attempt == 0:
            self.bar.update(1)
            self.bar.set_postfix(safe=f"{event.safe_candidates}/{event.candidates}", z=f"{event.max_safety_state:.2f}")
        elif isinstance(event, Resampled):
            self.bar.set_postfix_str(f"resample {event.attempt}")
        elif isinstance(event, BlockCommitted):
            self.bar.set_postfix(z=f"{event.safety_state:.2f}")

    def close(self) -> None:
        self.bar.close()


def _config(args: argparse.Namespace) -> GuardConfig:
    fields = {
        "method": args.method,
        "budget": args.budget,
        "block_size": args.block_size,
        "num_candidates": args.num_candidates,
        "num_beams": args.num_beams,
        "max_retries": args.max_retries,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "seed": args.seed,
    }
    return GuardConfig(**{k: v for k, v in fields.items() if v is not None})


def _backend(args: argparse.Namespace, model: str) -> object | None:
    """The remote sampling backend for ``--base-url`` (vLLM), else None (the local model)."""
    if not args.base_url:
        return None
    import os

    from .remote import OpenAICompletionsBackend

    return OpenAICompletionsBackend(
        args.base_url, model, tokenizer=args.tokenizer, api_key=os.environ.get("IG_BACKEND_API_KEY")
    )


def _engine(args: argparse.Namespace, config: GuardConfig | None = None, model: str | None = None) -> GuardedEngine:
    model = model or args.model
    return GuardedEngine(
        model,
        cost_model=KeywordCostModel() if args.cost_model == "keyword" else None,
        device=args.device,
        critic=None if args.no_critic else "auto",
        config=config,
        backend=_backend(args, model),  # type: ignore[arg-type]
    )


def _add_search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="embedded default, a local path or a HF model id")
    p.add_argument("--base-url", help="sample on an OpenAI-compatible completions server (vLLM) at this URL")
    p.add_argument("--tokenizer", help="tokenizer / chat template of the served --model (default: --model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cost-model", choices=["default", "keyword"], default="default")
    p.add_argument("--no-critic", action="store_true", help="do not use the shipped latent critic")
    p.add_argument("--method", choices=["greedy", "sample", "best_of_n", "beam", "inferenceguard"])
    p.add_argument("--budget", type=float)
    p.add_argument("--block-size", "-B", type=int)
    p.add_argument("--num-candidates", "-N", type=int)
    p.add_argument("--num-beams", "-K", type=int)
    p.add_argument("--max-retries", "-M", type=int)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float)
    p.add_argument("--seed", type=int, default=0)


def cmd_generate(args: argparse.Namespace) -> int:
    cfg = _config(args)
    engine = _engine(args)
    progress = Progress(cfg.max_new_tokens, cfg.search_shape()[2], enabled=not args.quiet)
    try:
        if args.stream:
            result = None
            for chunk in engine.stream(args.prompt, cfg, observers=[progress]):
                print(chunk.text, end="", flush=True)
                result = chunk.result or result
            print()
        else:
            result = engine.generate(args.prompt, cfg, observers=[progress])
    finally:
        progress.close()
    assert result is not None
    if not args.stream:
        print(result.text)
    summary = {
        "finish_reason": result.finish_reason,
        "safety_state": round(result.safety_state, 4),
        "cost": round(result.cost, 4),
        "budget": result.budget,
        "candidates": result.candidates_sampled,
        "resamples": result.resamples,
        "seconds": round(result.timings.total_s, 2),
        "fallback_reason": result.fallback_reason,
    }
    print(f"[guarded] {json.dumps(summary)}", file=sys.stderr)
    if args.compare:
        base = engine.generate(args.prompt, cfg, method="greedy", enforce_budget=False, safety_mode="none")
        print("\n--- unguarded (greedy) ---")
        print(base.text)
        print(
            f"[unguarded] safety_state={base.safety_state:.4f} cost={base.cost:.4f} seconds={base.timings.total_s:.2f}",
            file=sys.stderr,
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.otlp:
        from .telemetry.demo import run_demo

        run_demo(args.otlp)
        return 0
    engine = _engine(args)
    cfg = _config(args)
    for prompt in DEMO_PROMPTS:
        guarded = engine.generate(prompt, cfg)
        base = engine.generate(prompt, cfg, method="greedy", enforce_budget=False, safety_mode="none")
        print(f"\n### {prompt}")
        print(f"unguarded (z={base.safety_state:+.2f}): {base.text.strip()[:300]}")
        print(f"guarded   (z={guarded.safety_state:+.2f}, {guarded.finish_reason}): {guarded.text.strip()[:300]}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    try:
        from .server import ServerSettings, serve
    except ImportError as exc:
        print(f"ig-guard serve needs the serve extra: pip install 'ig-middleware[serve]' ({exc})", file=sys.stderr)
        return 2
    flags = {
        "host": args.host, "port": args.port, "model": args.model, "served_model_name": args.served_model_name,
        "device": args.device, "max_running": args.max_running, "max_queue": args.max_queue,
        "queue_timeout_s": args.queue_timeout, "request_timeout_s": args.request_timeout,
        "max_body_bytes": args.max_body_bytes, "api_key_file": args.api_key_file,
        "graceful_shutdown_s": args.graceful_shutdown, "log_level": args.log_level,
    }  # fmt: skip
    try:
        cfg = _config(args)
        settings = ServerSettings.from_env(**flags, guard_config=cfg)
        settings.all_api_keys()  # a key file that cannot be read fails now, not at the first request
    except (ValidationError, ValueError) as exc:
        print(f"ig-guard serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    serve(settings, engine=_engine(args, cfg, settings.model))
    return 0


def cmd_export_model(args: argparse.Namespace) -> int:
    from .errors import IGError
    from .models import export_model

    try:
        out = export_model(args.dir, args.model)
    except IGError as exc:
        print(f"ig-guard export-model: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


# Subcommands whose options are parsed by their own module's ``main(argv)``.
DELEGATED = {
    "train-cost-model": "ig_middleware.training.train_judge",
    "train-critic": "ig_middleware.training.train_critic",
    "eval": "ig_middleware.evaluation",
}


def _configure_tracing() -> None:
    """The standard ``OTEL_*`` variables (e.g. ``OTEL_EXPORTER_OTLP_ENDPOINT``) turn span export on, as in any
    instrumented application; without them nothing changes."""
    from .telemetry import configure_from_env

    configure_from_env(service_name="ig-guard")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in ("-h", "--help"):
        _configure_tracing()
    if argv and argv[0] in DELEGATED:
        return int(importlib.import_module(DELEGATED[argv[0]]).main(argv[1:]) or 0)
    parser = argparse.ArgumentParser(prog="ig-guard", description="InferenceGuard: almost surely safe decoding.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="print the guarded answer to PROMPT")
    gen.add_argument("prompt")
    gen.add_argument("--compare", action="store_true", help="also print the unguarded (greedy) answer")
    gen.add_argument("--stream", action="store_true", help="print committed text as it is found")
    gen.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    _add_search_args(gen)
    gen.set_defaults(func=cmd_generate)
    demo = sub.add_parser("demo", help="guarded vs unguarded answers to a benign and a harmful prompt (offline)")
    demo.add_argument("--otlp", metavar="ENDPOINT", help="send a traced guarded conversation to an OTLP endpoint")
    _add_search_args(demo)
    demo.set_defaults(func=cmd_demo)
    srv = sub.add_parser("serve", help="an OpenAI-compatible HTTP server answering through the guarded search")
    srv.add_argument("--host", help="bind address (default 127.0.0.1; env IG_SERVE_HOST)")
    srv.add_argument("--port", type=int, help="default 8000")
    srv.add_argument("--served-model-name", help="the model name clients send (default: --model)")
    srv.add_argument("--max-running", type=int, help="searches at once (default 1)")
    srv.add_argument("--max-queue", type=int, help="requests waiting for a search; beyond: 429 (default 16)")
    srv.add_argument("--queue-timeout", type=float, help="seconds a request may wait for a search (default 60)")
    srv.add_argument("--request-timeout", type=float, help="deadline of one search; fails closed (default 120)")
    srv.add_argument("--max-body-bytes", type=int, help="request body limit (default 1000000)")
    srv.add_argument("--api-key-file", help="Bearer keys, one a line (also env IG_SERVE_API_KEYS, comma-separated)")
    srv.add_argument("--graceful-shutdown", type=float, help="seconds running requests get on SIGTERM (default 30)")
    srv.add_argument("--log-level", help="uvicorn log level (default info)")
    _add_search_args(srv)
    srv.set_defaults(func=cmd_serve, model=None, seed=None, max_new_tokens=None)
    exp = sub.add_parser("export-model", help="write the model as a plain HF checkpoint (e.g. for vLLM) into DIR")
    exp.add_argument("dir")
    exp.add_argument("--model", default=DEFAULT_MODEL, help="embedded default, a local path or a HF model id")
    exp.set_defaults(func=cmd_export_model)
    for name in DELEGATED:
        sub.add_parser(name, help=f"see `ig-guard {name} --help`")
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
