"""Every process setting is documented in the README's settings table."""

from __future__ import annotations

from proxy.settings import Settings
from tests.support import ROOT


def test_every_setting_has_a_readme_row() -> None:
    readme = (ROOT / "README.md").read_text()
    prefix = Settings.model_config.get("env_prefix", "")
    missing = [name for name in Settings.model_fields
               if f"| `{prefix.upper()}{name.upper()}` |" not in readme]
    assert missing == []
