"""Real AutoGen agents through Warden, with only base_url and api_key changed."""

from __future__ import annotations

import asyncio

import pytest

from tests.support import KEY, Stack

pytestmark = pytest.mark.slow


def test_ag2_classic_conversation(stack: Stack) -> None:
    from autogen import AssistantAgent, UserProxyAgent

    llm_config = {"config_list": [{"model": "gpt-4o-mini", "base_url": f"{stack.proxy_url}/v1",
                                   "api_key": KEY}], "cache_seed": None}
    assistant = AssistantAgent("assistant", llm_config=llm_config)
    user = UserProxyAgent("user", human_input_mode="NEVER", max_consecutive_auto_reply=2,
                          code_execution_config=False, llm_config=False)
    result = user.initiate_chat(assistant, message="Plan the release notes.", max_turns=2)
    replies = [m["content"] for m in result.chat_history if m.get("name") == "assistant"]
    assert replies and replies[0] == "Echo: Plan the release notes."
    sent = stack.mock_requests()
    assert len(sent) == len(replies)
    # AG2 resends the whole history: the second call carries the first reply.
    assert sent[0]["messages"][-1]["content"] == "Plan the release notes."
    assert sent[0]["messages"][0]["role"] == "system"


def test_autogen_agentchat_agent(stack: Stack) -> None:
    from autogen_agentchat.agents import AssistantAgent
    from autogen_ext.models.openai import OpenAIChatCompletionClient

    async def run() -> str:
        client = OpenAIChatCompletionClient(
            model="gpt-4o-mini", base_url=f"{stack.proxy_url}/v1", api_key=KEY,
            model_info={"vision": False, "function_calling": True, "json_output": True,
                        "family": "gpt-4o", "structured_output": True},
        )
        agent = AssistantAgent("writer", model_client=client)
        result = await agent.run(task="Draft a haiku.")
        await client.close()
        return str(result.messages[-1].content)

    assert asyncio.run(run()) == "Echo: Draft a haiku."
    assert stack.mock_requests()[-1]["model"] == "gpt-4o-mini-2024-07-18"


def test_autogen_agentchat_streaming(stack: Stack) -> None:
    from autogen_agentchat.agents import AssistantAgent
    from autogen_ext.models.openai import OpenAIChatCompletionClient

    async def run() -> list[str]:
        client = OpenAIChatCompletionClient(
            model="gpt-4o-mini", base_url=f"{stack.proxy_url}/v1", api_key=KEY,
            model_info={"vision": False, "function_calling": True, "json_output": True,
                        "family": "gpt-4o", "structured_output": True},
        )
        agent = AssistantAgent("writer", model_client=client, model_client_stream=True)
        pieces = []
        async for event in agent.run_stream(task="Stream a line."):
            content = getattr(event, "content", None)
            if type(event).__name__ == "ModelClientStreamingChunkEvent":
                pieces.append(str(content))
        await client.close()
        return pieces

    pieces = asyncio.run(run())
    assert len(pieces) > 1 and "".join(pieces) == "Echo: Stream a line."
