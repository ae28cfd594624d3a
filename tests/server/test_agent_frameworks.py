"""The OpenAI Agents SDK (openai-agents) running an agent with a function tool against a real
server's /v1/responses. (The plain Anthropic-SDK tool loop is in test_anthropic_api.py.)"""

from __future__ import annotations

import asyncio

import agents
import openai
import pytest

from server.test_responses_api import FOLLOW_UP, QUESTION, qwen  # noqa: F401 - a fixture


@pytest.fixture(scope="module")
def model(server, qwen):
    agents.set_tracing_disabled(True)  # traces would go to OpenAI's servers
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="ollama", timeout=300, max_retries=0)
    return agents.OpenAIResponsesModel(model=qwen, openai_client=client)


def test_an_agent_calls_its_function_tool_and_answers(model):
    called: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        called.append(city)
        return f"18 degrees and sunny in {city}"

    settings = agents.ModelSettings(temperature=0, max_tokens=60)
    # The 0.5B model asks for the tool again after every result (on /api/chat too), so the
    # first run stops at the tool's answer and a second turn asks for words.
    agent = agents.Agent(name="weather", instructions="You answer questions about the weather.", model=model,
                         tools=[get_weather], model_settings=settings, tool_use_behavior="stop_on_first_tool")
    chat = agent.clone(tool_use_behavior="run_llm_again")

    async def runs():  # one event loop: the SDK's client keeps its connections in it
        first = await agents.Runner.run(agent, QUESTION, max_turns=3)
        # The history the SDK sends back holds the function_call and its function_call_output.
        history = first.to_input_list()
        return first, history, await agents.Runner.run(chat, [*history, {"role": "user", "content": FOLLOW_UP}],
                                                       max_turns=3)

    first, history, second = asyncio.run(runs())
    assert first.final_output == "18 degrees and sunny in Paris"
    assert [item.type for item in first.new_items] == ["tool_call_item", "tool_call_output_item"]
    assert [item.get("type") for item in history[1:]] == ["function_call", "function_call_output"]
    assert called == ["Paris"]  # the second turn answered from the history, not by calling again
    assert "18 degrees" in second.final_output
