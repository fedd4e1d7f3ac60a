"""Which providers speak the OpenAI API natively (and so take the fast path)."""

FAST_PROVIDERS = frozenset({"openai", "azure", "openai_compatible", "vllm", "ollama", "tgi"})
