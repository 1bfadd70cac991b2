"""Load-test the serving loop and report stable TTFT/TPOT after warm-up.

    python ch16/inference_server_load_test.py --duration 120

With no --url it serves the embedded default model on 127.0.0.1 (the `tiny` preset on a CPU, the
`llama-3-8b` preset with random weights on a GPU; --serve-model picks another preset or an HF
folder, --cuda-graphs the engine's graph mode, --engine-process off puts the engine core on a
thread of the server instead of its own process), runs a closed-loop load against it for --duration seconds after a warm-up, and
prints latency percentiles, throughput, goodput and the stability verdict; artifacts (JSON,
per-request CSV, plots) go to artifacts/loadtest_<time>/. With --url it targets any running
OpenAI-compatible server instead (ours, vLLM, SGLang). Every other flag is `aisp loadtest`'s.

The load generator runs in a child process (`aisp loadtest --url ...`). Measured on an H200
(docs/results/h200.md): with client, HTTP server and engine in one Python process, they share
the GIL at thousands of streamed chunks per second; at 16 req/s TPOT read 32 ms and drifted,
against a steady 23 ms with the client in its own process.

Defaults for the in-process run (each overridable by the same flag): warm-up = min(20 s, a sixth
of the duration); random token-id prompts with lengths drawn uniformly around ShareGPT's means
(input 32-448 tokens, output 16-384 on a GPU; short ones on a CPU, where the tiny model is slow);
concurrency 64 on a GPU, 4 on a CPU.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import typer  # noqa: E402


def _has(args: list[str], *flags: str) -> bool:
    return any(a == f or a.startswith(f + "=") for a in args for f in flags)


def _pop(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            value = args[i + 1]
            del args[i:i + 2]
            return value
        if a.startswith(flag + "="):
            del args[i]
            return a.split("=", 1)[1]
    return None


def main(argv: list[str]) -> None:
    import torch

    from aisp.loadtest.cli import register

    args = list(argv)
    serve_model = _pop(args, "--serve-model")
    cuda_graphs = _pop(args, "--cuda-graphs") or "auto"   # the served engine's graph mode
    app = typer.Typer(add_completion=False)
    app.callback()(lambda: None)  # keep `loadtest` a subcommand (one command would become the root)
    register(app)
    if _has(args, "-h", "--help"):
        print(__doc__)
        app(["loadtest", "--help"], prog_name="inference_server_load_test.py")
        return
    if _has(args, "--url"):
        if serve_model:
            raise SystemExit("--serve-model starts a local server; it cannot be combined with --url")
        if cuda_graphs != "auto":
            raise SystemExit("--cuda-graphs sets the local server's engine; it cannot be combined "
                             "with --url")
        app(["loadtest", *args], prog_name="inference_server_load_test.py")
        return

    from aisp.engine.config import EngineConfig
    from aisp.serve.server import start_server

    gpu = torch.cuda.is_available()
    model = serve_model or ("llama-3-8b" if gpu else "tiny")
    duration = float(_pop(args, "--duration") or 120)
    defaults = ["--duration", str(duration)]
    if not _has(args, "--warmup"):
        defaults += ["--warmup", str(min(20.0, duration / 6))]
    if not _has(args, "--concurrency", "--rate", "--sweep-rates", "--sweep-search"):
        defaults += ["--concurrency", "64" if gpu else "4"]
    if not _has(args, "--workload", "--input-len"):
        defaults += ["--input-len", "32:448" if gpu else "16:96"]
    if not _has(args, "--workload", "--output-len"):
        defaults += ["--output-len", "16:384" if gpu else "8:48"]
    engine_process = _pop(args, "--engine-process") != "off"
    print(f"starting the server: {model} on {'cuda' if gpu else 'cpu'}, engine core "
          f"{'in its own process' if engine_process else 'on a thread'} ...", flush=True)
    server = start_server(EngineConfig(model=model, cuda_graphs=cuda_graphs), host="127.0.0.1",
                          port=0, engine_process=engine_process)
    try:
        info = server.client.model_info
        if not _has(args, "--vocab-size"):
            defaults += ["--vocab-size", str(info.vocab_size)]
        print(f"serving at {server.url}: KV cache {info.num_kv_blocks:,} blocks x "
              f"{info.block_size} tokens, max_model_len {info.max_model_len:,}; "
              f"{info.summary}", flush=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
        rc = subprocess.run([sys.executable, "-m", "cli.aisp", "loadtest", "--url", server.url,
                             *defaults, *args], cwd=ROOT, env=env).returncode
    finally:
        server.stop(drain=False)
    if rc:
        raise SystemExit(rc)


if __name__ == "__main__":
    main(sys.argv[1:])
