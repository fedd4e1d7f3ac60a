"""Provider calls: the fast OpenAI-compatible path, litellm translation, failover."""
