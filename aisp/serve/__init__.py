"""OpenAI-compatible HTTP serving over the engine: `start_server` / `Server` (server.py), the
routes (app.py), request parsing (protocol.py), the chunk path (responses.py), streaming
detokenization (detokenize.py), chat templates (chat.py) and the `aisp serve` command (cli.py)."""
