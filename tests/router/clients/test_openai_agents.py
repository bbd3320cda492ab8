"""``openai-agents``: an Agent with one function tool, on chat completions and on its default Responses API.

The agent is forced to call its tool (``tool_choice: required``) and stops on the first call
(``tool_use_behavior: stop_on_first_tool``): whether Qwen2.5-Coder-0.5B, left to ``auto`` after a tool
result, calls the tool again is its choice (it does, until max_turns), not the protocol's. The
round trip of the tool result is then a second run on the first run's items (``to_input_list``: the
function call and its output) with ``tool_choice: none``, which must come back as text.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.router.clients import need
from tests.router.clients.conftest import MAX_TOKENS, TARGETS, WEATHER_PROMPT, WEATHER_RESULT, WEATHER_SYSTEM, Ladder

need("agents", "openai-agents")

from agents import (  # noqa: E402
    Agent,
    Model,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    ToolCallItem,
    ToolCallOutputItem,
    function_tool,
    set_tracing_disabled,
)
from openai import AsyncOpenAI  # noqa: E402

set_tracing_disabled(True)  # no trace export: nothing leaves the machine
APIS = ["chat_completions", "responses"]
CALLS: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    CALLS.append(city)
    return WEATHER_RESULT


def model(api: str, client: AsyncOpenAI, ladder: Ladder, target: str) -> Model:
    if api == "chat_completions":
        return OpenAIChatCompletionsModel(model=ladder.model(target), openai_client=client)
    return OpenAIResponsesModel(model=ladder.model(target), openai_client=client)


@pytest.mark.anyio
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("api", APIS)
async def test_an_agent_with_a_function_tool(ladder: Ladder, api: str, target: str) -> None:
    CALLS.clear()
    async with AsyncOpenAI(base_url=ladder.url, api_key="unused", max_retries=0, timeout=300) as client:
        await run_the_agent(model(api, client, ladder, target))


async def run_the_agent(llm: Model) -> None:
    settings: Any = {"temperature": 0.0, "max_tokens": MAX_TOKENS}
    agent = Agent(
        name="weather",
        instructions=WEATHER_SYSTEM,
        tools=[get_weather],
        model=llm,
        model_settings=ModelSettings(**settings, tool_choice="required"),
        tool_use_behavior="stop_on_first_tool",
    )
    result = await Runner.run(agent, WEATHER_PROMPT, max_turns=2)
    assert len(CALLS) >= 1 and all(isinstance(city, str) and city for city in CALLS)  # the SDK parsed the call and ran the tool
    assert result.final_output == WEATHER_RESULT
    kinds = [type(item) for item in result.new_items]
    assert ToolCallItem in kinds and ToolCallOutputItem in kinds

    # the tool's result goes back to the model: the whole history (stateless), text forced
    answer = agent.clone(model_settings=ModelSettings(**settings, tool_choice="none"), tool_use_behavior="run_llm_again")
    followup = await Runner.run(answer, result.to_input_list(), max_turns=1)
    assert isinstance(followup.final_output, str) and followup.final_output
    assert not [item for item in followup.new_items if isinstance(item, ToolCallItem)]
