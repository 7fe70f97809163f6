"""Stream a guarded answer: only text that passed the safety check is ever yielded.

    python examples/streaming.py

A SafetyCallbackHandler prints the engine's safety events (block committed, resample, fallback).
"""

import asyncio

from ig_middleware import GuardConfig, KeywordCostModel
from ig_middleware.langchain import ChatInferenceGuard, SafetyCallbackHandler


def cost_model():
    try:
        from ig_middleware.cost_model import load_default_cost_model

        return load_default_cost_model()
    except Exception:  # noqa: BLE001
        return KeywordCostModel()


def show(record, name, data):
    if name == "block_committed":
        print(f"\n  [committed block {data['block_index']}: safety_state={data['safety_state']:.3f}]")
    elif name in ("resampled", "fallback"):
        print(f"\n  [{name}: {data}]")


model = ChatInferenceGuard(
    guard_config=GuardConfig(num_candidates=4, num_beams=2, block_size=8), max_tokens=32, cost_model=cost_model()
)
handler = SafetyCallbackHandler(on_event=show)

print("sync stream:")
last = None
for chunk in model.stream("Write one sentence about the sea.", config={"callbacks": [handler]}):
    print(chunk.text, end="", flush=True)
    last = chunk
print(f"\n-> finish_reason={last.response_metadata['finish_reason']} usage={last.usage_metadata}")


async def main() -> None:
    print("\nasync stream:")
    async for chunk in model.astream("Name two planets.", config={"callbacks": [handler]}):
        print(chunk.text, end="", flush=True)
    print(f"\n-> verdict: {handler.last.verdict['finish_reason']}, events: {len(handler.last.events)}")


asyncio.run(main())
