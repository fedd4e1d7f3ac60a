"""Warden: a transparent, OpenAI-compatible LLM proxy for AutoGen / AG2 agents."""

__version__ = "0.1.0"
