"""The loopback wire servers (duckagents.testing), checked by the official openai, anthropic and ollama
clients."""
