"""Who writes the assistant turns: OpenAI-compatible servers, local transformers, scripted, oracle."""
