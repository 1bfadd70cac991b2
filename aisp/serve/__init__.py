"""OpenAI-compatible HTTP serving over the engine-client API (aisp.engine.client):
`start_server` / `Server` (server.py), the routes (app.py), request parsing (protocol.py), the
chunk path (responses.py), chat templates (chat.py) and the `aisp serve` command (cli.py). Text
(detokenization, stop strings) comes with the client's outputs."""
