"""A real AG2 conversation keeps going while its primary provider flaps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.appkeys import UPSTREAM
from tests.support import KEY, Stack

pytestmark = pytest.mark.slow


def test_ag2_conversation_survives_a_flapping_primary(tmp_path: Path) -> None:
    from autogen import AssistantAgent, UserProxyAgent

    def policies(url: str) -> list[dict[str, Any]]:
        # The primary follows the mock's global fault; the secondary pins status=200.
        return [{"tenant": "acme", "keys": [KEY], "models": {"gpt-4o-mini": [
            {"provider": "openai", "model": "primary-model", "name": "primary",
             "api_base": f"{url}/v1"},
            {"provider": "openai", "model": "secondary-model", "name": "secondary",
             "api_base": f"{url}/f/status=200/v1"}]}}]

    with Stack(policies, tmp_path, breaker_open_s=0.2, retry_backoff_s=0.01) as stack:
        stack.mock_faults(status=500, fail_rate=0.5)
        # max_retries=0: the SDK inside AG2 does not retry, so every error would surface.
        llm_config = {"config_list": [{"model": "gpt-4o-mini", "api_key": KEY,
                                       "base_url": f"{stack.proxy_url}/v1",
                                       "max_retries": 0}], "cache_seed": None}
        assistant = AssistantAgent("assistant", llm_config=llm_config)
        user = UserProxyAgent("user", human_input_mode="NEVER", llm_config=llm_config,
                              code_execution_config=False, max_consecutive_auto_reply=20)
        result = user.initiate_chat(assistant, message="Plan the release.", max_turns=6)
        history = result.chat_history
        assert len(history) == 12  # 6 turns, both sides, no error ended it early
        assert all(m["content"].startswith("Echo:") for m in history[1:])
        assert stack.app is not None
        counts = stack.app[UPSTREAM].attempt_counts
        # The primary really flapped under the conversation, and was absorbed.
        assert counts[("primary", "status_500")] >= 1
        assert counts[("primary", "ok")] + counts[("secondary", "ok")] == 11
