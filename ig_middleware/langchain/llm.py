"""``InferenceGuardLLM``: text completion (``BaseLLM``) through the same guarded engine.

The prompt is completion text (``raw=True``: no chat template), the answer its guarded continuation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM
from langchain_core.language_models.base import LangSmithParams
from langchain_core.outputs import Generation, GenerationChunk, LLMResult

from ..result import GuardResult
from ._bridge import (
    GuardedModelFields,
    async_observer,
    merge_stop,
    split_call_kwargs,
    sync_observer,
)


class InferenceGuardLLM(GuardedModelFields, BaseLLM):
    """Guarded text completion over a local causal LM (see :class:`ChatInferenceGuard` for the fields).

    Example:
        ```python
        llm = InferenceGuardLLM(max_tokens=32)
        llm.invoke("The three primary colours are")
        ```
    """

    @property
    def _llm_type(self) -> str:
        return "inferenceguard"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "device": self.device, "guard_config": self.config.model_dump(mode="json")}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="inferenceguard",
            ls_model_name=self.model,
            ls_model_type="llm",
            ls_temperature=self.config.temperature,
            ls_max_tokens=self.config.max_new_tokens,
        )
        if stops := merge_stop(self.config.stop, self.stop, stop):
            params["ls_stop"] = stops
        return params

    def _call_kwargs(self, stop: list[str] | None, kwargs: dict[str, Any], observer: Any) -> dict[str, Any]:
        overrides, rest = split_call_kwargs(dict(kwargs))
        safety_state = float(rest.pop("safety_state", self.safety_state))
        overrides["stop"] = merge_stop(self.config.stop, self.stop, stop, overrides.pop("stop", None))
        return {"safety_state": safety_state, "raw": True, "observers": [observer] if observer else [], **overrides}

    @staticmethod
    def _info(result: GuardResult) -> dict[str, Any]:
        from .chat_model import ChatInferenceGuard

        info = ChatInferenceGuard._metadata(result)
        info["usage"] = {
            "input_tokens": result.input_tokens,
            "output_tokens": result.output_tokens,
            "total_tokens": result.input_tokens + result.output_tokens,
        }
        return info

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        generations = []
        for prompt in prompts:
            if self.streaming:
                chunk = None
                for c in self._stream(prompt, stop, run_manager, **kwargs):
                    chunk = c if chunk is None else chunk + c
                assert chunk is not None
                generations.append([Generation(text=chunk.text, generation_info=chunk.generation_info)])
                continue
            result = self.engine.generate(
                prompt, self.config, **self._call_kwargs(stop, kwargs, sync_observer(run_manager))
            )
            generations.append([Generation(text=result.text, generation_info=self._info(result))])
        return LLMResult(generations=generations, llm_output={"model_name": self.model})

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        generations = []
        for prompt in prompts:
            if self.streaming:
                chunk = None
                async for c in self._astream(prompt, stop, run_manager, **kwargs):
                    chunk = c if chunk is None else chunk + c
                assert chunk is not None
                generations.append([Generation(text=chunk.text, generation_info=chunk.generation_info)])
                continue
            result = await self.engine.agenerate(
                prompt, self.config, **self._call_kwargs(stop, kwargs, async_observer(run_manager))
            )
            generations.append([Generation(text=result.text, generation_info=self._info(result))])
        return LLMResult(generations=generations, llm_output={"model_name": self.model})

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        call = self._call_kwargs(stop, kwargs, sync_observer(run_manager))
        for piece in self.engine.stream(prompt, self.config, **call):
            info = self._info(piece.result) if piece.result is not None else None
            if not piece.text and info is None:
                continue
            chunk = GenerationChunk(text=piece.text, generation_info=info)
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        call = self._call_kwargs(stop, kwargs, async_observer(run_manager))
        async for piece in self.engine.astream(prompt, self.config, **call):
            info = self._info(piece.result) if piece.result is not None else None
            if not piece.text and info is None:
                continue
            chunk = GenerationChunk(text=piece.text, generation_info=info)
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk
