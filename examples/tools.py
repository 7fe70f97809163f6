"""Tool calling and structured output with a local 135M model.

    python examples/tools.py

Tools are described in the system prompt; ``tool_choice`` forces a call (the answer is prefilled with
the call's opening, so even a tiny model produces a parseable call); the call's arguments are generated
text and pass through the same safety check as any answer.
"""

from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from ig_middleware import GuardConfig, KeywordCostModel
from ig_middleware.langchain import ChatInferenceGuard


def cost_model():
    try:
        from ig_middleware.cost_model import load_default_cost_model

        return load_default_cost_model()
    except Exception:  # noqa: BLE001
        return KeywordCostModel()


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is sunny and 21C in {city}."


class City(BaseModel):
    """A city and its country."""

    name: str = Field(description="the city")
    country: str = Field(description="the country")


model = ChatInferenceGuard(
    guard_config=GuardConfig(num_candidates=2, num_beams=1, block_size=16),
    max_tokens=24,
    temperature=0,
    cost_model=cost_model(),
)

# 1. a forced tool call, executed, then answered
messages = [HumanMessage("What is the weather in Paris?")]
ai = model.bind_tools([get_weather], tool_choice="get_weather").invoke(messages)
print("tool calls:", ai.tool_calls)
messages += [ai, *(get_weather.invoke(tc) for tc in ai.tool_calls)]
final = model.bind_tools([get_weather], tool_choice="none").invoke(messages)
print("answer    :", final.text)

# 2. structured output (a call of a tool named after the schema, forced)
print("structured:", model.with_structured_output(City).invoke("Paris is in France."))
