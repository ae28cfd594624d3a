"""`pollama serve`: Ollama's HTTP API and OpenAI's, over runner processes."""
