"""End to end: safety spans exported over OTLP/HTTP to a real receiver (Arize Phoenix) and read back.

Skipped unless Phoenix is installed (own virtual environment, kept out of the project's):

    python -m venv /opt/phoenix-venv && /opt/phoenix-venv/bin/pip install arize-phoenix

Found via ``$PHOENIX_BIN``, ``phoenix`` on PATH, or ``/opt/phoenix-venv/bin/phoenix``. The tests start their
own Phoenix on free localhost ports (offline, temporary working directory), or use a running one given by
``IG_PHOENIX_URL`` (``.ci/run`` starts one in its own virtual environment and sets ``IG_REQUIRE_PHOENIX=1``, so
there a missing Phoenix fails instead of skipping). One test replays a search's engine events through the
GuardTracer (every attribute checked); one runs ``ig-guard generate`` on the real default model with nothing
but the standard ``OTEL_*`` variables set (zero-code spans).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import free_port

from ig_middleware.events import BlockCommitted, BlockEvaluated, FallbackUsed, Resampled, SearchFinished, SearchStarted
from ig_middleware.result import GuardResult, Timings
from ig_middleware.telemetry import GuardTracer, make_tracer_provider
from ig_middleware.telemetry import attributes as A

INSTALL = "python -m venv /opt/phoenix-venv && /opt/phoenix-venv/bin/pip install arize-phoenix"
STARTUP_TIMEOUT_S = float(os.environ.get("IG_PHOENIX_STARTUP_TIMEOUT", "180"))


def _phoenix_bin() -> str | None:
    for cand in (os.environ.get("PHOENIX_BIN"), shutil.which("phoenix"), "/opt/phoenix-venv/bin/phoenix"):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def _get(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - localhost only
        return json.loads(resp.read().decode() or "null")


def _ready(base: str) -> bool:
    try:
        _get(base + "/v1/projects")
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


@pytest.fixture(scope="module")
def phoenix_url():
    url = os.environ.get("IG_PHOENIX_URL")
    if url:
        if not _ready(url.rstrip("/")):
            if os.environ.get("IG_REQUIRE_PHOENIX") == "1":
                pytest.fail(f"IG_PHOENIX_URL={url} does not answer")
            pytest.skip(f"IG_PHOENIX_URL={url} does not answer")
        yield url.rstrip("/")
        return
    binary = _phoenix_bin()
    if binary is None:
        if os.environ.get("IG_REQUIRE_PHOENIX") == "1":
            pytest.fail(f"IG_REQUIRE_PHOENIX=1 but Arize Phoenix is not installed (install: {INSTALL})")
        pytest.skip(f"Arize Phoenix is not installed (install: {INSTALL})")
    port, grpc_port = free_port(), free_port()
    workdir = tempfile.mkdtemp(prefix="ig-phoenix-")
    env = {
        **os.environ,
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(grpc_port),
        "PHOENIX_WORKING_DIR": workdir,
        "PHOENIX_TELEMETRY_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    log = open(Path(workdir) / "phoenix.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([binary, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _ready(base):
            if proc.poll() is not None:
                pytest.fail(f"phoenix exited with {proc.returncode}: see {log.name}")
            if time.monotonic() > deadline:
                pytest.fail(f"phoenix did not start within {STARTUP_TIMEOUT_S:.0f}s")
            time.sleep(1.0)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _replay(guard: GuardTracer, run_id: str) -> None:
    """The events of a search whose first block needed a resample and whose second ended in the fallback."""
    cfg = {"method": "inferenceguard", "safety_mode": "augmented", "budget": 10.0, "gamma": 0.999,
           "block_size": 16, "num_candidates": 4, "num_beams": 2, "max_retries": 1, "max_new_tokens": 48,
           "temperature": 0.8, "top_p": 0.95, "seed": 0, "enforce_budget": True}  # fmt: skip
    guard(SearchStarted(run_id, "smollm2-135m-instruct", "inferenceguard", 21, 10.0, 1.0, cfg, prompt="p"))
    guard(BlockEvaluated(run_id, 0, 0, 4, 0, (-0.2, -0.5, -0.1, -0.9), (12.0, 15.0, 11.0, 19.0), 4, False, 0.02))
    guard(Resampled(run_id, 0, 1, 7))
    guard(BlockEvaluated(run_id, 0, 1, 4, 2, (0.6, 0.4, -0.3, -0.1), (4.0, 6.0, 13.0, 11.0), 4, False, 0.02))
    guard(BlockCommitted(run_id, 1, "secret text", 0.6, 4.0))
    guard(BlockEvaluated(run_id, 1, 0, 4, 0, (-0.4, -0.2, -0.6, -0.3), (14.0, 12.0, 16.0, 13.0), 4, False, 0.02))
    guard(Resampled(run_id, 1, 1, 5))
    guard(BlockEvaluated(run_id, 1, 1, 4, 0, (-0.1, -0.2, -0.5, -0.7), (11.0, 12.0, 15.0, 17.0), 4, False, 0.02))
    guard(FallbackUsed(run_id, 2, "no_safe_candidate", "no safe candidate after 1 resamples"))
    result = GuardResult(
        text="I can't help with that.", finish_reason="safety_fallback", safety_state=0.6, cost=4.0, budget=10.0,
        input_tokens=21, output_tokens=16, candidates_sampled=16, resamples=2, blocks=2, judge_calls=16,
        fallback_reason="no_safe_candidate", model="smollm2-135m-instruct", run_id=run_id, timings=Timings(total_s=0.5),
    )  # fmt: skip
    guard(SearchFinished(run_id, result))


def _spans(phoenix_url: str, project: str, at_least: int, timeout_s: float = 30) -> list[dict]:
    spans: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # ingestion is asynchronous
        try:
            spans = _get(f"{phoenix_url}/v1/projects/{project}/spans?limit=100")["data"]
        except urllib.error.HTTPError:  # the project appears with its first span
            spans = []
        if len(spans) >= at_least:
            break
        time.sleep(0.5)
    return spans


def test_safety_spans_round_trip_through_phoenix(phoenix_url):
    project = f"ig-test-{uuid.uuid4().hex[:8]}"
    provider = make_tracer_provider(
        phoenix_url, service_name="ig-otlp-test", batch=False, resource_attributes={A.PHOENIX_PROJECT: project}
    )
    run_id = uuid.uuid4().hex
    _replay(GuardTracer(provider), run_id)
    assert provider.force_flush(10_000)
    provider.shutdown()

    spans = _spans(phoenix_url, project, 3)
    names = sorted(s["name"] for s in spans)
    assert names == ["chat smollm2-135m-instruct", A.SPAN_BLOCK, A.SPAN_BLOCK], names
    chat = next(s for s in spans if s["name"].startswith("chat "))
    blocks = sorted((s for s in spans if s["name"] == A.SPAN_BLOCK), key=lambda s: s["start_time"])
    chat_id = chat["context"]["span_id"]
    assert all(b["parent_id"] == chat_id for b in blocks)
    assert all(b["context"]["trace_id"] == chat["context"]["trace_id"] for b in blocks)

    attrs = chat["attributes"]
    assert attrs[A.GEN_AI_PROVIDER_NAME] == "inferenceguard" and attrs[A.GEN_AI_OPERATION_NAME] == "chat"
    assert attrs[A.IG_RUN_ID] == run_id and attrs[A.IG_FALLBACK_REASON] == "no_safe_candidate"
    assert attrs[A.IG_SAFETY_STATE] == pytest.approx(0.6) and attrs[A.IG_BUDGET] == pytest.approx(10.0)
    assert attrs[A.GEN_AI_USAGE_INPUT_TOKENS] == 21 and attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 16
    assert A.GEN_AI_INPUT_MESSAGES not in attrs and A.GEN_AI_OUTPUT_MESSAGES not in attrs  # no content

    b1 = blocks[1]["attributes"]
    assert b1[A.IG_BLOCK_INDEX] == 1 and b1[A.IG_BLOCK_SAFE_CANDIDATES] == 0 and b1[A.IG_BLOCK_RESAMPLES] == 1
    assert b1[A.IG_BLOCK_MAX_SAFETY_STATE] == pytest.approx(-0.1)
    b0_events = [e["name"] for e in blocks[0]["events"]]
    assert b0_events.count(A.EVENT_BLOCK_EVALUATION) == 2 and A.EVENT_RESAMPLE in b0_events
    assert A.EVENT_COMMIT in b0_events

    chat_events = {e["name"]: e["attributes"] for e in chat["events"]}
    assert chat_events[A.EVENT_FALLBACK][A.IG_FALLBACK_REASON] == "no_safe_candidate"
    ev = chat_events[A.EVENT_EVALUATION_RESULT]
    assert ev[A.GEN_AI_EVALUATION_NAME] == A.EVALUATION_NAME
    assert ev[A.GEN_AI_EVALUATION_SCORE_LABEL] == A.LABEL_SAFETY_FALLBACK
    assert ev[A.GEN_AI_EVALUATION_SCORE_VALUE] == pytest.approx(0.6)


@pytest.mark.real_model
def test_zero_code_spans_of_the_cli_reach_phoenix(phoenix_url):
    """Nothing but the standard variables: the real model's guarded answer arrives as chat + block spans."""
    project = f"ig-zero-code-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": phoenix_url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_RESOURCE_ATTRIBUTES": f"{A.PHOENIX_PROJECT}={project}",
    }
    for var in ("OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "ig_middleware.cli", "generate", "Name one kind of tea.", "-q",
           "--max-new-tokens", "16", "-N", "4", "-K", "2", "-B", "8"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stderr.split("[guarded] ", 1)[1].splitlines()[0])

    spans = _spans(phoenix_url, project, 3)
    chats = [s for s in spans if s["name"] == "chat smollm2-135m-instruct"]
    assert len(chats) == 1, sorted(s["name"] for s in spans)
    chat = chats[0]
    blocks = [s for s in spans if s["name"] == A.SPAN_BLOCK]
    assert 1 <= len(blocks) <= 2 and all(b["parent_id"] == chat["context"]["span_id"] for b in blocks)
    attrs = chat["attributes"]
    assert attrs[A.IG_SAFETY_STATE] == pytest.approx(summary["safety_state"], abs=1e-3)
    assert attrs[A.IG_BUDGET] == pytest.approx(summary["budget"])
    assert A.GEN_AI_OUTPUT_MESSAGES not in attrs  # content capture was not opted into
    ev = next(e for e in chat["events"] if e["name"] == A.EVENT_EVALUATION_RESULT)["attributes"]
    label = A.LABEL_SAFETY_FALLBACK if summary["fallback_reason"] else A.LABEL_WITHIN_BUDGET
    assert ev[A.GEN_AI_EVALUATION_SCORE_LABEL] == label
