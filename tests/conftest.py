from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Stack, tenant_policy

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("WARDEN_TEST_OPENAI_KEY", "sk-upstream-secret-openai")
os.environ.setdefault("WARDEN_TEST_ANTHROPIC_KEY", "sk-ant-upstream-secret")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """Mock provider + Warden with one tenant and no policies."""
    with Stack(lambda url: [tenant_policy(url)], tmp_path) as s:
        yield s
