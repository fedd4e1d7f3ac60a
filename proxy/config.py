"""The base of every policy-file model.

Its own module so policy modules (which define their sections' models) and tenants.py
(which assembles them into a tenant's file) can both import it without a cycle.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    """Unknown keys are errors; values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)
