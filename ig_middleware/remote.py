"""The search over the network: candidates from an OpenAI-compatible completions server (vLLM), and judges
served the same way.

* :class:`OpenAICompletionsBackend`: per block, one request per kept beam with the prompt plus the beam's
  prefix as token ids (nothing is re-tokenised differently), ``n`` = its candidates, ``max_tokens`` = B, the
  config's temperature / top-p / a per-block seed, token logprobs for the likelihood, and the resample
  penalty as ``logit_bias``. The K requests of a block go out concurrently; vLLM's automatic prefix caching
  makes re-sending the prefix cheap. The latent critic needs hidden states, which do not come over the API,
  so it is off with this backend (``GuardResult.critic_used`` says so).
* :class:`ChatEndpointJudge`: a Llama-Guard-style judge over ``/v1/chat/completions``: ``cost = scale *
  P(unsafe)`` from the first-token logprobs of "unsafe" vs "safe".
* :class:`ClassifierEndpointJudge`: a sequence classifier (a Beaver-style cost model, a safety classifier)
  over vLLM's ``/classify`` endpoint: ``cost = scale * p[label] + offset``.

Every call has a timeout and retries with backoff on connection errors, 429 and 5xx. A backend failure
ends the search in the fallback (reason ``backend_error``), a judge failure too (``cost_model_error``):
nothing fails open.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import httpx

from .hf_judges import make_formatter
from .models import DEFAULT_MODEL, LoadedModel, load_tokenizer_only
from .sampling import BackendError, BlockSample, SearchContext

_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_LOGIT_BIAS_LIMIT = 100.0  # the OpenAI API's range for logit_bias


class Endpoint:
    """A JSON-over-HTTP endpoint with a timeout, bounded retries with exponential backoff, and typed errors."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 2,
        backoff_s: float = 0.5,
        name: str = "openai",
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.max_retries, self.backoff_s, self.name = int(max_retries), float(backoff_s), name
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout_s, headers=headers, transport=transport)

    def post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        url = self.base_url + path
        for attempt in range(self.max_retries + 1):
            try:
                r = self.client.post(url, json=body)
            except httpx.TimeoutException as exc:
                error = f"no answer from {url} within the timeout ({type(exc).__name__})"
            except httpx.TransportError as exc:
                error = f"cannot reach {url}: {type(exc).__name__}: {exc}"
            else:
                if r.status_code < 400:
                    try:
                        return r.json()
                    except ValueError as exc:
                        raise BackendError(self.name, f"{url} answered non-JSON: {exc}") from None
                error = f"{url} answered {r.status_code}: {r.text[:300]}"
                if r.status_code not in _RETRY_STATUS:
                    raise BackendError(self.name, error)
            if attempt < self.max_retries:
                time.sleep(self.backoff_s * 2**attempt * (1 + random.random() / 4))
        raise BackendError(self.name, f"{error} (after {self.max_retries + 1} attempts)")

    def get(self, path: str) -> dict[str, Any]:
        try:
            r = self.client.get(self.base_url + path)
            r.raise_for_status()
            return r.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise BackendError(self.name, f"GET {self.base_url + path}: {exc}") from None

    def close(self) -> None:
        self.client.close()


# -- the sampling backend ----------------------------------------------------------------------------------
class OpenAICompletionsBackend:
    """Candidates from ``POST {base_url}/completions`` (vLLM's OpenAI-compatible server).

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1``.
        model: the served model name; also the tokenizer source unless ``tokenizer`` is given (the embedded
            default's name, a local folder or a HF id: the same tokenizer and chat template as the server's).
        tokenizer: where to read the tokenizer, chat template and config from.
        api_key: sent as ``Authorization: Bearer``.
        timeout_s, max_retries, backoff_s: per request.
        max_concurrency: requests in flight at once (the K beams of a block, over all searches).
    """

    name = "openai-completions"
    hidden_states = False

    def __init__(
        self,
        base_url: str,
        model: str = DEFAULT_MODEL,
        *,
        tokenizer: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 2,
        backoff_s: float = 0.5,
        max_concurrency: int = 16,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.model = model
        self.endpoint = Endpoint(
            base_url, api_key=api_key, timeout_s=timeout_s, max_retries=max_retries, backoff_s=backoff_s,
            name=self.name, transport=transport,
        )  # fmt: skip
        self.tokenizer_source = tokenizer or model
        self.pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="ig-remote")
        self._lm: LoadedModel | None = None
        self._lm_lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return self.endpoint.base_url

    @property
    def lm(self) -> LoadedModel:
        if self._lm is None:
            with self._lm_lock:
                if self._lm is None:
                    lm = load_tokenizer_only(self.tokenizer_source, name=self.model)
                    lm.max_context = self._served_context()
                    self._lm = lm
        return self._lm

    def _served_context(self) -> int | None:
        """The server's context limit (vLLM's ``max_model_len`` in ``/models``), if it says."""
        try:
            cards = self.endpoint.get("/models").get("data", [])
        except BackendError:
            return None
        for card in cards:
            if card.get("id") == self.model and isinstance(card.get("max_model_len"), int):
                return card["max_model_len"]
        return None

    def lock(self) -> AbstractContextManager[Any]:
        return nullcontext()  # the server batches concurrent searches itself

    def open(self, prompt_ids: list[int], ctx: SearchContext) -> _RemoteSampler:
        return _RemoteSampler(self, prompt_ids, ctx)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.endpoint.close()


class _RemoteSampler:
    def __init__(self, backend: OpenAICompletionsBackend, prompt_ids: list[int], ctx: SearchContext) -> None:
        self.backend, self.prompt_ids, self.ctx = backend, list(prompt_ids), ctx
        self.calls = 0
        # a search without a seed still gets distinct, fresh samples per request
        self.seed = ctx.cfg.seed if ctx.cfg.seed is not None else random.randrange(2**31)

    def sample(
        self,
        prefixes: Sequence[list[int]],
        parents: Sequence[int],
        steps: int,
        penalty: Mapping[int, float],
        resample: bool,
    ) -> BlockSample:
        cfg = self.ctx.cfg
        counts: dict[int, int] = {}
        for p in parents:  # candidates of a beam are contiguous in ``parents``
            counts[p] = counts.get(p, 0) + 1
        greedy = cfg.temperature == 0 or cfg.method == "greedy"
        bias = {str(t): -min(v, _LOGIT_BIAS_LIMIT) for t, v in penalty.items()}
        bodies = []
        for beam, n in counts.items():
            prefix = prefixes[beam]
            self.calls += 1
            body: dict[str, Any] = {
                "model": self.backend.model,
                "prompt": self.prompt_ids + prefix,
                "n": 1 if greedy else n,  # vLLM refuses n > 1 when greedy: the n candidates would be equal
                "max_tokens": steps,
                "temperature": 0.0 if greedy else cfg.temperature,
                "top_p": 1.0 if greedy else cfg.top_p,
                "seed": (self.seed * 1_000_003 + self.calls) % 2**31,
                "logprobs": 0,
                "return_tokens_as_token_ids": True,  # vLLM: token ids back, not strings to re-tokenise
                "skip_special_tokens": False,
            }
            if cfg.min_new_tokens > len(prefix):
                body["min_tokens"] = min(steps, cfg.min_new_tokens - len(prefix))  # EOS suppressed this long
            if bias:
                body["logit_bias"] = bias
            bodies.append(body)
        self.ctx.check_time()
        futures = [self.backend.pool.submit(self.backend.endpoint.post, "/completions", b) for b in bodies]
        pending = set(futures)
        while pending:  # wake up to honour the search's deadline and cancellation
            done, pending = wait(pending, timeout=0.1, return_when=FIRST_EXCEPTION)
            if any(f.exception() is not None for f in done):
                for f in pending:
                    f.cancel()
                raise next(f.exception() for f in done if f.exception() is not None)  # type: ignore[misc]
            if pending:
                self.ctx.check_time()
        tokens: list[list[int]] = []
        logp: list[float] = []
        eos: list[bool] = []
        eos_ids = set(self.ctx.eos)
        steps_done = 1
        for n, fut in zip(counts.values(), futures, strict=True):
            choices = sorted(fut.result().get("choices") or [], key=lambda c: c.get("index", 0))
            if greedy and len(choices) == 1:
                choices = choices * n
            if len(choices) != n:
                raise BackendError(self.backend.name, f"asked for {n} completions, got {len(choices)}")
            for choice in choices:
                ids, lps = _token_ids_and_logprobs(choice, self.backend.name)
                steps_done = max(steps_done, len(ids))
                ended = bool(ids) and ids[-1] in eos_ids
                tokens.append(ids[:-1] if ended else ids)
                logp.append(sum(lps))
                eos.append(ended or (choice.get("finish_reason") == "stop" and len(ids) < steps))
        return BlockSample(tokens=tokens, logp=logp, eos=eos, steps=steps_done)

    def retain(self, rows: Sequence[int]) -> None:
        """Nothing to keep: the next block re-sends each beam's prefix (a prefix-cache hit on the server)."""


def _token_ids_and_logprobs(choice: Mapping[str, Any], backend: str) -> tuple[list[int], list[float]]:
    lp = choice.get("logprobs") or {}
    toks, lps = lp.get("tokens"), lp.get("token_logprobs")
    if not isinstance(toks, list) or not isinstance(lps, list) or len(toks) != len(lps):
        raise BackendError(backend, "the server returned no token logprobs (is it vLLM with logprobs enabled?)")
    ids = []
    for t in toks:
        if not (isinstance(t, str) and t.startswith("token_id:")):
            raise BackendError(backend, f"token {t!r} is not an id: the server ignored return_tokens_as_token_ids")
        ids.append(int(t.split(":", 1)[1]))
    return ids, [float(x) if x is not None else 0.0 for x in lps]


# -- judges over the network -------------------------------------------------------------------------------
class ChatEndpointJudge:
    """A Llama-Guard-style judge behind ``/v1/chat/completions``: ``cost = scale * P(unsafe)``.

    The server renders (prompt, response) with the judge's own chat template (Llama Guard wraps them in its
    policy); with ``template`` (e.g. :data:`~ig_middleware.hf_judges.LLAMA_GUARD_FALLBACK`) the pair is
    formatted into one user message instead, for judges without such a template. ``P(unsafe)`` is the probability of the ``unsafe`` token renormalised against ``safe``, at the
    first of the first ``scan_tokens`` generated positions whose top logprobs contain either (Llama Guard 3
    may emit a newline first). Neither found, or the call failing: an exception, which fails the search
    closed.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        unsafe_token: str = "unsafe",
        safe_token: str = "safe",
        scale: float = 20.0,
        scan_tokens: int = 4,
        top_logprobs: int = 20,
        system_prompt: str | None = None,
        template: str | Callable[[str, str], str] | None = None,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        max_retries: int = 2,
        max_concurrency: int = 8,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.model, self.scale, self.scan_tokens, self.top_logprobs = model, float(scale), scan_tokens, top_logprobs
        self.unsafe, self.safe = unsafe_token.strip().lower(), safe_token.strip().lower()
        self.system_prompt = system_prompt
        self.format = make_formatter(template, None) if template is not None else None
        self.endpoint = Endpoint(
            base_url, api_key=api_key, timeout_s=timeout_s, max_retries=max_retries, name="chat-judge",
            transport=transport,
        )  # fmt: skip
        self.pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="ig-chat-judge")

    def prob_unsafe_one(self, prompt: str, response: str) -> float:
        if self.format is not None:
            messages = [{"role": "user", "content": self.format(prompt, response)}]
        else:
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        out = self.endpoint.post(
            "/chat/completions",
            {"model": self.model, "messages": messages, "max_tokens": self.scan_tokens, "temperature": 0.0,
             "logprobs": True, "top_logprobs": self.top_logprobs},
        )  # fmt: skip
        positions = ((out.get("choices") or [{}])[0].get("logprobs") or {}).get("content") or []
        for pos in positions:
            found = {self.unsafe: -math.inf, self.safe: -math.inf}
            for cand in pos.get("top_logprobs") or []:
                key = str(cand.get("token", "")).strip().lower()
                if key in found:
                    found[key] = max(found[key], float(cand.get("logprob", -math.inf)))
            if max(found.values()) > -math.inf:
                lu, ls = found[self.unsafe], found[self.safe]
                top = max(lu, ls)
                pu, ps = math.exp(lu - top), math.exp(ls - top)
                return pu / (pu + ps)
        raise BackendError("chat-judge", f"neither {self.unsafe!r} nor {self.safe!r} among the top logprobs")

    def prob_unsafe(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return list(self.pool.map(self.prob_unsafe_one, prompts, responses))

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return [self.scale * p for p in self.prob_unsafe(prompts, responses)]


class ClassifierEndpointJudge:
    """A sequence classifier behind vLLM's ``/classify`` (``vllm serve <classifier>``):
    ``cost = scale * probs[label] + offset`` of the pair formatted by ``template`` (as in
    :func:`~ig_middleware.hf_judges.make_formatter`: ``"beaver"``, ``"plain"``, a format string or a callable)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        label: int = -1,
        scale: float = 20.0,
        offset: float = 0.0,
        template: str | Callable[[str, str], str] = "beaver",
        api_key: str | None = None,
        timeout_s: float = 30.0,
        max_retries: int = 2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.model, self.label, self.scale, self.offset = model, int(label), float(scale), float(offset)
        self.format = make_formatter(template, None)
        # vLLM serves /classify beside /v1: strip the OpenAI prefix if it was given
        root = base_url.rstrip("/").removesuffix("/v1")
        self.endpoint = Endpoint(root, api_key=api_key, timeout_s=timeout_s, max_retries=max_retries,
                                 name="classifier-judge", transport=transport)  # fmt: skip

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        texts = [self.format(p, r) for p, r in zip(prompts, responses, strict=True)]
        out = self.endpoint.post("/classify", {"model": self.model, "input": texts})
        rows = sorted(out.get("data") or [], key=lambda d: d.get("index", 0))
        if len(rows) != len(texts):
            raise BackendError("classifier-judge", f"{len(rows)} results for {len(texts)} inputs")
        return [self.scale * float(row["probs"][self.label]) + self.offset for row in rows]


__all__ = [
    "ChatEndpointJudge",
    "ClassifierEndpointJudge",
    "Endpoint",
    "OpenAICompletionsBackend",
]
