"""The InferenceGuard search: block-wise beam search over safety-augmented candidates.

Read top to bottom: :class:`GuardedEngine` renders the prompt, prefills the KV cache once, then
:meth:`GuardedEngine._search` runs blocks. Each block expands the K beams' cache rows to N candidates,
samples B tokens for all of them in one batch, scores the new text with the cost model (safety state
``z``) and the task value (reward model, critic, or the LM's own likelihood), and keeps the top K. If no
candidate is safe, tokens seen in unsafe candidates are down-weighted and the block is resampled (up to
M times); then the search answers with the fallback. Nothing whose safety state is exhausted is ever
yielded: every failure (judge error, NaN, timeout) fails closed.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch

from . import safety
from .config import GuardConfig
from .errors import InvalidInputError
from .events import (
    BlockCommitted,
    BlockEvaluated,
    FallbackUsed,
    GuardEvent,
    Observer,
    Resampled,
    SearchFinished,
    SearchStarted,
    plugin_observers,
)
from .judges import CostModel, RewardModel
from .models import DEFAULT_MODEL, LoadedModel, Message, load_model, validate_messages
from .result import FallbackReason, GuardResult, Timings
from .sampling import BackendError, BlockSample, LocalBackend, Sampler, SamplingBackend

Prompt = str | Sequence[Message]


class Critic(Protocol):
    """Latent critic: from the LM's last hidden state and the safety state, P(safe at the end) and the
    expected future task value (see :mod:`ig_middleware.critic`)."""

    def predict(self, hidden: torch.Tensor, safety_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class GuardChunk:
    """One item of :meth:`GuardedEngine.stream`: committed text, and on the last item the result."""

    text: str
    result: GuardResult | None = None


class _FailClosed(Exception):
    def __init__(self, reason: FallbackReason, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail


@dataclass
class _Beam:
    """A kept prefix. ``row`` indexes its KV-cache row while it is active."""

    tokens: list[int]
    text: str
    z: float
    cost: float
    logp: float
    value: float
    score: float
    finished: str | None = None  # "stop" | "length" | None
    hidden: list[torch.Tensor] = field(default_factory=list)  # last hidden state at each block boundary
    texts: list[str] = field(default_factory=list)  # response prefix at each block boundary


class GuardedEngine:
    """Guarded decoding over a local causal LM.

    Args:
        model: a :class:`LoadedModel`, the embedded default name, a local path or a HF model id
            (loaded lazily, shared between engines).
        cost_model: the safety judge; defaults to the trained offline cost model shipped in the package.
        reward_model: the task value; defaults to the LM's mean token log-likelihood (free to compute).
        critic: latent critic used by ``method="inferenceguard"`` to prune before judging; ``"auto"``
            loads the critic shipped for this model (if any), ``None`` disables it.
        config: default :class:`GuardConfig`; per-call overrides are accepted by every method.
        observers: event sinks for every search (per-call ``observers=`` add to them).
        telemetry: attach the installed observer plugins (:data:`~ig_middleware.events.OBSERVER_PLUGINS`),
            i.e. OpenTelemetry spans through the global tracer provider (a no-op until the application
            configures an SDK). ``False`` turns them off.
        tracer_provider: handed to the plugins: the OpenTelemetry provider to use instead of the global one.
        backend: where candidates are sampled (:mod:`ig_middleware.sampling`): default the local
            transformers model named by ``model``; e.g. :class:`~ig_middleware.remote.OpenAICompletionsBackend`
            for a vLLM server (then ``model`` only names it and the latent critic is off).
    """

    def __init__(
        self,
        model: LoadedModel | str = DEFAULT_MODEL,
        *,
        cost_model: CostModel | None = None,
        reward_model: RewardModel | None = None,
        critic: Critic | Literal["auto"] | None = "auto",
        config: GuardConfig | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        observers: Sequence[Observer] = (),
        telemetry: bool = True,
        tracer_provider: Any = None,
        backend: SamplingBackend | None = None,
    ) -> None:
        if backend is None and isinstance(model, LoadedModel):
            backend = LocalBackend(model)
        self._backend = backend
        self.model_name = backend.lm.name if backend is not None else str(model)
        self.device, self.dtype = device, dtype
        self._cost_model = cost_model
        self.reward_model = reward_model
        self._critic = critic
        self.config = config or GuardConfig()
        self.observers: list[Observer] = list(observers)
        if telemetry:
            self.observers += plugin_observers(tracer_provider=tracer_provider)
        self._init_lock = threading.Lock()
        self._judge_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ig-judge")

    # -- lazy parts -------------------------------------------------------------------------------
    @property
    def backend(self) -> SamplingBackend:
        """Where candidates are sampled; the local model is loaded on first use."""
        if self._backend is None:
            with self._init_lock:
                if self._backend is None:
                    self._backend = LocalBackend(load_model(self.model_name, device=self.device, dtype=self.dtype))
        return self._backend

    @property
    def lm(self) -> LoadedModel:
        """The language model (for a remote backend: its tokenizer and config)."""
        return self.backend.lm

    @property
    def cost_model(self) -> CostModel:
        """The safety judge, the trained default unless one was given."""
        if self._cost_model is None:
            with self._init_lock:
                if self._cost_model is None:
                    from .cost_model import load_default_cost_model

                    self._cost_model = load_default_cost_model()
        return self._cost_model

    @property
    def critic(self) -> Critic | None:
        """The latent critic; ``"auto"`` resolves (once) to the one shipped for this model, if any."""
        if isinstance(self._critic, str):
            with self._init_lock:
                if isinstance(self._critic, str):
                    try:
                        from .critic import load_default_critic
                    except ImportError:
                        self._critic = None
                    else:
                        self._critic = load_default_critic(self.model_name)
        return self._critic

    def add_observer(self, observer: Observer) -> None:
        self.observers.append(observer)

    # -- public API -------------------------------------------------------------------------------
    def generate(self, prompt: Prompt, config: GuardConfig | None = None, **kwargs: Any) -> GuardResult:
        """Answer ``prompt`` (a string, or chat messages) within the safety budget.

        Keyword args: ``safety_state`` (remaining share of the budget, default 1.0), ``tools``
        (JSON schemas rendered by the chat template), ``raw`` (string prompt is completion text, not a
        user message), ``observers`` (per-call event sinks), ``run_id``, ``stop`` and any
        :class:`GuardConfig` field as an override.
        """
        result = None
        for chunk in self._run(prompt, config, streaming=False, **kwargs):
            result = chunk.result or result
        assert result is not None
        return result

    def stream(self, prompt: Prompt, config: GuardConfig | None = None, **kwargs: Any) -> Iterator[GuardChunk]:
        """Yield committed text as the search goes; the last chunk carries the :class:`GuardResult`.

        Commit rule (``config.stream_commit``): ``"best"`` commits the best safe beam after every block
        and continues only from it (lowest latency); ``"consensus"`` commits the blocks that all kept
        beams share. Either way only text whose safety state is > 0 is yielded, and a held-back suffix
        guards against half-emitted stop sequences.
        """
        yield from self._run(prompt, config, streaming=True, **kwargs)

    async def agenerate(self, prompt: Prompt, config: GuardConfig | None = None, **kwargs: Any) -> GuardResult:
        """Async twin of :meth:`generate`; the search runs in a worker thread."""
        return await asyncio.to_thread(self.generate, prompt, config, **kwargs)

    async def astream(
        self, prompt: Prompt, config: GuardConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[GuardChunk]:
        """Async twin of :meth:`stream`; chunks are handed over from a worker thread. Closing the
        iterator early cancels the search."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[GuardChunk | BaseException | None] = asyncio.Queue()
        cancel = threading.Event()

        def work() -> None:
            try:
                for chunk in self._run(prompt, config, streaming=True, cancel=cancel, **kwargs):
                    loop.call_soon_threadsafe(queue.put_nowait, chunk)
                    if cancel.is_set():
                        break
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        # the caller's context goes with the search (observers read it, e.g. for the parent span)
        worker = loop.run_in_executor(None, contextvars.copy_context().run, work)
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()
            await worker

    # -- the search -------------------------------------------------------------------------------
    def _run(
        self,
        prompt: Prompt,
        config: GuardConfig | None,
        *,
        streaming: bool,
        safety_state: float = 1.0,
        tools: Sequence[Mapping[str, Any]] | None = None,
        raw: bool = False,
        observers: Sequence[Observer] = (),
        run_id: str | None = None,
        cancel: threading.Event | None = None,
        **overrides: Any,
    ) -> Iterator[GuardChunk]:
        cfg = config or self.config
        if overrides:  # validated like a fresh config, so a bad override names its field
            cfg = GuardConfig.model_validate({**cfg.model_dump(), "fallback": cfg.fallback, **overrides})
        if not (isinstance(safety_state, (int, float)) and math.isfinite(safety_state)):
            raise InvalidInputError("safety_state", "must be a finite number")
        lm = self.lm
        prompt_text, judge_prompt = self._render(lm, prompt, tools, raw)
        prompt_ids = lm.encode(prompt_text)
        if not prompt_ids:
            raise InvalidInputError("prompt", "renders to no tokens")
        context = lm.context_length
        if context is not None and len(prompt_ids) + cfg.max_new_tokens > context:
            # past the context the model samples garbage: say so instead (nothing is truncated silently)
            raise InvalidInputError(
                "prompt",
                f"{len(prompt_ids)} prompt tokens + max_new_tokens {cfg.max_new_tokens} exceed the model's context of "
                f"{context} tokens; shorten the prompt (e.g. keep the system message and the latest turns) or lower "
                "max_new_tokens",
            )
        sinks = [*self.observers, *observers]
        run = _Run(
            engine=self,
            lm=lm,
            cfg=cfg,
            prompt_ids=prompt_ids,
            judge_prompt=judge_prompt,
            z0=float(safety_state),
            run_id=run_id or uuid.uuid4().hex,
            sinks=sinks,
            streaming=streaming,
            cancel=cancel,
        )
        with self.backend.lock():
            yield from run.execute()

    @staticmethod
    def _render(
        lm: LoadedModel, prompt: Prompt, tools: Sequence[Mapping[str, Any]] | None, raw: bool
    ) -> tuple[str, str]:
        if isinstance(prompt, str):
            if not prompt.strip():
                raise InvalidInputError("prompt", "is empty")
            if raw:
                return prompt, prompt
            return lm.render([{"role": "user", "content": prompt}], tools), prompt
        msgs = validate_messages(prompt)
        users = [m["content"] for m in msgs if m["role"] == "user"]
        return lm.render(msgs, tools), (users[-1] if users else msgs[-1]["content"])


class _Run:
    """State of one search (one prompt). Kept apart from the engine so concurrent runs share nothing."""

    def __init__(
        self,
        *,
        engine: GuardedEngine,
        lm: LoadedModel,
        cfg: GuardConfig,
        prompt_ids: list[int],
        judge_prompt: str,
        z0: float,
        run_id: str,
        sinks: list[Observer],
        streaming: bool,
        cancel: threading.Event | None,
    ) -> None:
        self.engine, self.lm, self.cfg = engine, lm, cfg
        self.prompt_ids, self.judge_prompt, self.z0 = prompt_ids, judge_prompt, z0
        self.run_id, self.sinks, self.streaming, self.cancel = run_id, sinks, streaming, cancel
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + cfg.timeout_s if cfg.timeout_s else math.inf
        self.timings = Timings()
        self.generator = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None
        self.eos = lm.eos_token_ids
        # the latent critic reads hidden states, which only an in-process backend has
        self.use_critic = bool(
            cfg.use_critic
            and cfg.method == "inferenceguard"
            and engine.backend.hidden_states
            and engine.critic is not None
        )
        # Baselines without a safety signal and without the guarantee need the judge only for the report.
        self.judge_in_search = cfg.method == "inferenceguard" or cfg.safety_mode != "none" or cfg.enforce_budget
        self.candidates_sampled = self.sampled_tokens = self.judge_calls = self.critic_calls = 0
        self.resamples = self.blocks = 0
        self.committed_tokens: list[int] = []
        self.committed_text = ""
        self.committed_z, self.committed_cost = z0, 0.0
        self.emitted = ""  # text already yielded (committed_text minus the held-back suffix)

    # -- events -----------------------------------------------------------------------------------
    def emit(self, event: GuardEvent) -> None:
        for sink in self.sinks:
            try:
                sink(event)
            except Exception:  # noqa: BLE001 - an observer must never break (or open) the search
                pass

    # -- main loop --------------------------------------------------------------------------------
    def execute(self) -> Iterator[GuardChunk]:
        cfg = self.cfg
        self.emit(
            SearchStarted(
                run_id=self.run_id,
                model=self.lm.name,
                method=cfg.method,
                prompt_tokens=len(self.prompt_ids),
                budget=cfg.budget,
                initial_safety_state=self.z0,
                config=cfg.model_dump(mode="json"),
                prompt=self.judge_prompt,
                backend=self.engine.backend.name,
            )
        )
        try:
            if self.z0 <= 0:
                raise _FailClosed("budget_exhausted", "no safety budget left for this answer")
            final = yield from self._search()
            if self.judge_in_search is False:
                final = self._score_final(final)
            if cfg.enforce_budget and final.z <= 0:
                raise _FailClosed("budget_exhausted", "the selected answer exceeds the budget")
            result = self._result(final.text, final.finished or "length", final, None)
            tail = self._delta(final.text, hold_back=False)
        except _FailClosed as fail:
            self.emit(FallbackUsed(self.run_id, self.blocks, fail.reason, fail.detail))
            fallback = self.cfg.fallback_text(self.judge_prompt)
            text = (self.committed_text.rstrip() + "\n\n" + fallback) if self.committed_text.strip() else fallback
            state = _Beam(self.committed_tokens, self.committed_text, self.committed_z, self.committed_cost, 0, 0, 0)
            result = self._result(text, "safety_fallback", state, fail)
            tail = result.text[len(self.emitted) :] if result.text.startswith(self.emitted) else "\n\n" + fallback
        self.timings.total_s = time.perf_counter() - self.t0
        result.timings = self.timings
        self.emit(SearchFinished(self.run_id, result))
        yield GuardChunk(tail, result)

    def _result(self, text: str, finish: str, beam: _Beam, fail: _FailClosed | None) -> GuardResult:
        out_tokens = len(beam.tokens)
        return GuardResult(
            text=text,
            finish_reason=finish,  # type: ignore[arg-type]
            safety_state=beam.z,
            cost=beam.cost,
            budget=self.cfg.budget,
            input_tokens=len(self.prompt_ids),
            output_tokens=out_tokens,
            candidates_sampled=self.candidates_sampled,
            sampled_tokens=self.sampled_tokens,
            resamples=self.resamples,
            blocks=self.blocks,
            judge_calls=self.judge_calls,
            critic_calls=self.critic_calls,
            fallback_reason=fail.reason if fail else None,
            fallback_detail=fail.detail if fail else "",
            model=self.lm.name,
            method=self.cfg.method,
            run_id=self.run_id,
            backend=self.engine.backend.name,
            critic_used=self.use_critic,
            hidden_states=torch.stack(beam.hidden) if beam.hidden else None,
            block_texts=list(beam.texts),
        )

    def _search(self) -> Iterator[GuardChunk]:
        """Generator of committed chunks; returns the selected beam."""
        cfg = self.cfg
        n_cand, n_beams, block = cfg.search_shape()
        t = time.perf_counter()
        sampler = self._open_sampler()
        self.timings.prefill_s = time.perf_counter() - t
        root = _Beam([], "", self.z0, 0.0, 0.0, 0.0, 0.0)
        active: list[_Beam] = [root]
        finished: list[_Beam] = []
        block_index = 0
        while active:
            self.check_time()
            per_beam = max(1, math.ceil(n_cand / len(active)))
            parents = [i for i in range(len(active)) for _ in range(per_beam)]
            steps = min(block, cfg.max_new_tokens - len(active[0].tokens))
            penalty: dict[int, float] = {}  # logit down-weight of tokens seen in unsafe candidates
            for attempt in range(cfg.max_retries + 1 if cfg.method == "inferenceguard" else 1):
                cands = self._sample_block(sampler, active, parents, steps, penalty, resample=attempt > 0)
                kept, unsafe_tokens = self._evaluate(cands, block_index, attempt)
                if kept or cfg.method != "inferenceguard":
                    break
                if attempt < cfg.max_retries:
                    self.resamples += 1
                    for token in unsafe_tokens - set(self.eos):
                        penalty[token] = penalty.get(token, 0.0) + cfg.resample_penalty
                    self.emit(Resampled(self.run_id, block_index, attempt + 1, len(unsafe_tokens)))
            self.blocks += 1
            block_index += 1
            pool = sorted(kept + finished, key=lambda b: b.score, reverse=True)[:n_beams]
            if not pool:
                raise _FailClosed("no_safe_candidate", f"no safe candidate after {cfg.max_retries} resamples")
            best = pool[0]
            if cfg.enforce_budget and best.z <= 0:
                raise _FailClosed("budget_exhausted", "the best candidate exceeds the budget")
            if best.finished or all(b.finished for b in pool):
                return best
            if self.streaming:
                pool = yield from self._commit(pool, block_index)
            finished = [b for b in pool if b.finished]
            active = [b for b in pool if not b.finished]
            sampler.retain([b._row for b in active])  # type: ignore[attr-defined]
        return max(finished, key=lambda b: b.score)

    # -- one block --------------------------------------------------------------------------------
    def _open_sampler(self) -> Sampler:
        try:
            return self.engine.backend.open(self.prompt_ids, self)
        except BackendError as exc:
            raise _FailClosed("backend_error", str(exc)) from exc

    def _sample_block(
        self,
        sampler: Sampler,
        active: list[_Beam],
        parents: list[int],
        steps: int,
        penalty: dict[int, float],
        resample: bool,
    ) -> list[_Beam]:
        """Sample ``steps`` tokens for every candidate (candidate i continues ``active[parents[i]]``)."""
        cfg = self.cfg
        t = time.perf_counter()
        try:
            block: BlockSample = sampler.sample([b.tokens for b in active], parents, steps, penalty, resample)
        except BackendError as exc:  # the server went away, answered garbage or too late: fail closed
            raise _FailClosed("backend_error", str(exc)) from exc
        n = len(parents)
        self.candidates_sampled += n
        self.sampled_tokens += n * block.steps
        cands = []
        for i in range(n):
            parent = active[parents[i]]
            all_tokens = parent.tokens + block.tokens[i]
            text = self.lm.decode(all_tokens)
            finish = "stop" if block.eos[i] else None
            text, stopped = self._apply_stop(text, len(parent.text))
            if stopped:
                finish = "stop"
            if finish is None and len(all_tokens) >= cfg.max_new_tokens:
                finish = "length"
            beam = _Beam(
                tokens=all_tokens,
                text=text,
                z=parent.z,
                cost=parent.cost,
                logp=parent.logp + block.logp[i],
                value=0.0,
                score=0.0,
                finished=finish,
                hidden=parent.hidden + [block.hidden[i]] if block.hidden is not None else [],
                texts=parent.texts + [text],
            )
            beam._parent = parent  # type: ignore[attr-defined]
            beam._row = i  # type: ignore[attr-defined]
            cands.append(beam)
        self.timings.sampling_s += time.perf_counter() - t
        return cands

    def _apply_stop(self, text: str, checked: int) -> tuple[str, bool]:
        """Truncate at the earliest stop sequence not already seen in the parent's text."""
        if not self.cfg.stop:
            return text, False
        start = max(0, checked - max(len(s) for s in self.cfg.stop))
        hits = [i for s in self.cfg.stop if (i := text.find(s, start)) >= 0]
        return (text[: min(hits)], True) if hits else (text, False)

    def _evaluate(self, cands: list[_Beam], block_index: int, attempt: int) -> tuple[list[_Beam], set[int]]:
        """Score candidates: safety state by the cost model, value by critic/reward/likelihood.
        Returns the candidates eligible to be kept and the tokens seen in unsafe ones."""
        cfg = self.cfg
        t = time.perf_counter()
        judged = self._critic_prune(cands) if self.use_critic else cands
        if self.judge_in_search:
            scores = self._judge([c.text for c in judged])
            prev = torch.tensor([c._parent.cost for c in judged])  # type: ignore[attr-defined]
            z_prev = torch.tensor([c._parent.z for c in judged])  # type: ignore[attr-defined]
            cum = safety.cumulative_cost(prev, scores)
            z = safety.update_safety_state(z_prev, cum - prev, cfg.budget, cfg.gamma)
        else:
            cum = torch.zeros(len(judged))
            z = torch.tensor([c._parent.z for c in judged])  # type: ignore[attr-defined]
        # The critic only decides who is worth judging; ranking uses the task value (reward or likelihood),
        # which is exact for the text at hand where the critic's value head is a noisy forecast.
        value = self._value(judged)
        if cfg.method == "inferenceguard" or cfg.safety_mode == "augmented":
            score = safety.augmented_value(value, z, cfg.penalty)
        elif cfg.safety_mode == "lagrangian":
            score = safety.lagrangian_value(value, cum, cfg.lagrangian_lambda)
        else:
            score = value
        for c, ci, zi, vi, si in zip(judged, cum.tolist(), z.tolist(), value.tolist(), score.tolist(), strict=True):
            c.cost, c.z, c.value, c.score = ci, zi, vi, si
        safe = [c for c in judged if c.z > 0]
        self.emit(
            BlockEvaluated(
                run_id=self.run_id,
                block_index=block_index,
                attempt=attempt,
                candidates=len(cands),
                safe_candidates=len(safe),
                safety_states=tuple(z.tolist()),
                costs=tuple(cum.tolist()),
                judge_calls=len(judged) if self.judge_in_search else 0,
                critic_used=self.use_critic,
                seconds=time.perf_counter() - t,
            )
        )
        unsafe_tokens: set[int] = set()
        for c in judged:
            if c.z <= 0:
                unsafe_tokens.update(c.tokens[len(c._parent.tokens) :])  # type: ignore[attr-defined]
        eligible = safe if cfg.method == "inferenceguard" else judged
        return eligible, unsafe_tokens

    def _critic_prune(self, cands: list[_Beam]) -> list[_Beam]:
        """Rank candidates by the critic and keep the ``critic_keep`` best for the judge."""
        cfg = self.cfg
        t = time.perf_counter()
        hidden = torch.stack([c.hidden[-1] for c in cands])
        z_parent = torch.tensor([c._parent.z for c in cands])  # type: ignore[attr-defined]
        p_safe, value = self.engine.critic.predict(hidden, z_parent)  # type: ignore[union-attr]
        self.critic_calls += len(cands)
        # likely-safe first; among them the LM's likelihood (exact, free) plus the critic's value forecast
        likelihood = torch.tensor([c.logp / max(1, len(c.tokens)) for c in cands])
        rank = torch.where(p_safe >= 0.5, likelihood + value.float(), -cfg.penalty + p_safe)
        n_beams = cfg.num_beams
        # 2K by default; when 2K would keep every candidate, keep half so the critic still saves judge calls
        keep = cfg.critic_keep or (2 * n_beams if 2 * n_beams < len(cands) else max(n_beams, len(cands) // 2))
        order = rank.argsort(descending=True)[:keep].tolist()
        self.timings.critic_s += time.perf_counter() - t
        return [cands[i] for i in order]

    def _judge(self, responses: list[str]) -> torch.Tensor:
        """Call the cost model with a deadline; any failure fails the search closed."""
        t = time.perf_counter()
        prompts = [self.judge_prompt] * len(responses)
        timeout = self.cfg.judge_timeout_s
        if self.deadline < math.inf:
            timeout = min(timeout or math.inf, max(0.0, self.deadline - time.perf_counter()))
        try:  # loading the judge lazily is inside the fail-closed path too
            future = self.engine._judge_pool.submit(self.engine.cost_model.score, prompts, responses)
            raw = future.result(timeout=timeout)
        except FutureTimeout:
            raise _FailClosed("cost_model_timeout", f"cost model gave no answer within {timeout:.1f}s") from None
        except Exception as exc:  # noqa: BLE001 - any judge failure fails closed
            raise _FailClosed("cost_model_error", f"{type(exc).__name__}: {exc}") from exc
        finally:
            self.timings.judge_s += time.perf_counter() - t
        try:
            scores = torch.as_tensor([float(s) for s in raw], dtype=torch.float64)
        except (TypeError, ValueError) as exc:
            raise _FailClosed("cost_model_invalid", f"non-numeric scores: {exc}") from exc
        if scores.numel() != len(responses):
            raise _FailClosed("cost_model_invalid", f"{scores.numel()} scores for {len(responses)} responses")
        self.judge_calls += len(responses)
        return scores.float()  # NaN stays NaN: cumulative_cost maps it to +inf (unsafe)

    def _value(self, cands: list[_Beam]) -> torch.Tensor:
        """Task value: the reward model if any, else the mean token log-likelihood under the LM."""
        reward = self.engine.reward_model
        if reward is None:
            return torch.tensor([c.logp / max(1, len(c.tokens)) for c in cands])
        try:
            raw = reward.score([self.judge_prompt] * len(cands), [c.text for c in cands])
            value = torch.as_tensor([float(v) for v in raw])
        except Exception as exc:  # noqa: BLE001 - a reward failure must not open the search either
            raise _FailClosed("cost_model_error", f"reward model: {type(exc).__name__}: {exc}") from exc
        return torch.nan_to_num(value, nan=-math.inf)

    def _score_final(self, beam: _Beam) -> _Beam:
        """Judge the answer once (baselines that ignore safety during the search)."""
        cum = safety.cumulative_cost(torch.zeros(1), self._judge([beam.text]))
        beam.cost = float(cum[0])
        beam.z = safety.safety_state_after(beam.cost, self.cfg.budget, self.cfg.gamma, self.blocks, self.z0)
        return beam

    def check_time(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise _FailClosed("timeout", "cancelled by the caller")
        if time.perf_counter() > self.deadline:
            raise _FailClosed("timeout", f"search exceeded timeout_s={self.cfg.timeout_s}")

    # -- streaming --------------------------------------------------------------------------------
    def _commit(self, pool: list[_Beam], block_index: int) -> Iterator[GuardChunk]:
        """Commit safe text to the stream; returns the beams that extend what was committed."""
        if self.cfg.stream_commit == "best":
            best = pool[0]
            pool = [best]
            tokens, text, z, cost = best.tokens, best.text, best.z, best.cost
        else:
            # only whole blocks: a block boundary is where the cost model computed the safety state
            common = _common_prefix([b.tokens for b in pool]) // self.cfg.block_size * self.cfg.block_size
            if common <= len(self.committed_tokens):
                return pool
            # the shared prefix ends on a block boundary of some ancestor, whose state we know
            anc = pool[0]
            tokens = anc.tokens[:common]
            text = self.lm.decode(tokens)
            z, cost = min(b.z for b in pool), max(b.cost for b in pool)
        if len(tokens) > len(self.committed_tokens):
            self.committed_tokens, self.committed_text = list(tokens), text
            self.committed_z, self.committed_cost = z, cost
            self.emit(BlockCommitted(self.run_id, block_index, text, z, cost))
            delta = self._delta(text, hold_back=True)
            if delta:
                yield GuardChunk(delta)
        return pool

    def _delta(self, text: str, hold_back: bool) -> str:
        """New text beyond what was yielded; holds back a possible start of a stop sequence and a
        partial UTF-8 character so that nothing is emitted that may later be cut."""
        if not text.startswith(self.emitted):
            return ""
        end = len(text)
        if hold_back:
            while end > len(self.emitted) and text[end - 1] == "\ufffd":
                end -= 1
            for s in self.cfg.stop:
                for k in range(min(len(s) - 1, end), 0, -1):
                    if text[:end].endswith(s[:k]):
                        end = min(end, len(text[:end]) - k)
                        break
        delta = text[len(self.emitted) : end]
        self.emitted += delta
        return delta


def _common_prefix(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs):
            return i
    return n
