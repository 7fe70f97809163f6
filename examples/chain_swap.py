"""Swap a LangChain chain's model for the guarded local model in one line.

    python examples/chain_swap.py

Offline, on a CPU, in well under a minute (small search settings).
"""

from langchain_core.language_models import GenericFakeChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from ig_middleware import GuardConfig, KeywordCostModel
from ig_middleware.langchain import ChatInferenceGuard


def cost_model():
    """The shipped cost model when available, else a transparent keyword judge."""
    try:
        from ig_middleware.cost_model import load_default_cost_model

        return load_default_cost_model()
    except Exception:  # noqa: BLE001 - e.g. weights not built yet
        return KeywordCostModel()


prompt = ChatPromptTemplate.from_messages(
    [("system", "You are a helpful assistant. Answer in one sentence."), ("human", "{question}")]
)

# Before: any chat model, here a fake one.
model = GenericFakeChatModel(messages=iter(["Paris is the capital of France."]))
chain = prompt | model | StrOutputParser()
print("fake   :", chain.invoke({"question": "What is the capital of France?"}))

# After: the same chain, decoded with the InferenceGuard safe search (the one-line swap).
model = ChatInferenceGuard(
    guard_config=GuardConfig(num_candidates=4, num_beams=2, block_size=16), max_tokens=32, cost_model=cost_model()
)
chain = prompt | model | StrOutputParser()
print("guarded:", chain.invoke({"question": "What is the capital of France?"}))

# The safety outcome is on the message's response_metadata.
msg = (prompt | model).invoke({"question": "Give me one tip for sleeping well."})
meta = msg.response_metadata
print(f"finish_reason={meta['finish_reason']} safety_state={meta['safety_state']:.3f} cost={meta['safety_cost']:.2f}")
