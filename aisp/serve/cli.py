"""`aisp serve`: the OpenAI-compatible server from the command line.

`register(app)` adds the `serve` command to a Typer app (aisp/cli.py calls it). Every engine
option maps to one `EngineConfig` field and is honoured. SIGTERM or SIGINT stops admission (new
requests get 503), lets in-flight requests finish, closes the listener and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Optional

import typer

from aisp.engine_options import COMPILE_OPTION, QUANTIZATION_OPTION

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the `serve` command to `app`."""
    app.command("serve")(serve_command)


def serve_command(
    model: str = typer.Option("tiny", "--model", help="Preset name or HF model folder."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0 exposes the "
                             "server to the network)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port (0: any free port)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="AISP_API_KEY",
                                          help="Require 'Authorization: Bearer KEY' on /v1/*."),
    served_model_name: Optional[str] = typer.Option(None, "--served-model-name",
                                                    help="The model id clients send (default: "
                                                         "--model)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: "
                                         "cuda if available)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, float16, bfloat16."),
    seed: int = typer.Option(0, "--seed", help="Weights of presets; default sampling seed."),
    max_num_seqs: int = typer.Option(256, "--max-num-seqs", min=1,
                                     help="Requests running at once."),
    max_num_batched_tokens: int = typer.Option(2048, "--max-num-batched-tokens", min=1,
                                               help="Token budget per engine step."),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len", min=1,
                                                help="Context per request (default: the "
                                                     "model's, capped to the KV cache)."),
    block_size: int = typer.Option(16, "--block-size", min=1, help="Tokens per KV block."),
    num_kv_blocks: Optional[int] = typer.Option(None, "--num-kv-blocks", min=1,
                                                help="KV cache size in blocks (default: from "
                                                     "memory)."),
    no_prefix_caching: bool = typer.Option(False, "--no-prefix-caching",
                                           help="Disable prefix caching."),
    attention_kernels: str = typer.Option("auto", "--attention-kernels",
                                          help="auto, triton or torch."),
    cuda_graphs: str = typer.Option("auto", "--cuda-graphs",
                                    help="auto (full_and_piecewise on a GPU, none on a CPU), "
                                         "none, full (decode-only steps), piecewise (the dense "
                                         "pieces of every step, attention eager) or "
                                         "full_and_piecewise."),
    async_scheduling: str = typer.Option("auto", "--async-scheduling",
                                         help="auto (on for a GPU), on or off: plan the next "
                                              "step while the GPU runs this one."),
    compile: str = COMPILE_OPTION,
    quantization: str = QUANTIZATION_OPTION,
    engine_process: bool = typer.Option(True, "--engine-process/--in-process",
                                        help="Run the engine core in a process of its own "
                                             "(default: the server's HTTP, tokenization and "
                                             "streaming then never share a GIL with the "
                                             "engine), or on a thread of the server process."),
    drain_timeout: Optional[float] = typer.Option(None, "--drain-timeout", min=0,
                                                  help="On SIGTERM, abort requests still running "
                                                       "after this many seconds (default: wait)."),
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (completions, chat, SSE streaming)."""
    from aisp.engine.client import EngineClient
    from aisp.engine.config import EngineConfig
    from aisp.serve.server import Server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = EngineConfig(model=model, device=device, dtype=dtype, seed=seed,
                              block_size=block_size, num_kv_blocks=num_kv_blocks,
                              max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                              max_num_batched_tokens=max_num_batched_tokens,
                              enable_prefix_caching=not no_prefix_caching,
                              attention_kernels=attention_kernels, cuda_graphs=cuda_graphs,
                              async_scheduling=async_scheduling, compile=compile,
                              quantization=quantization)
        # Everything that cannot run (device, kernels, model files) fails here, before the
        # server listens: it never reports healthy with an engine that cannot serve.
        client = (EngineClient.start(config) if engine_process
                  else EngineClient.in_process(config))
    except (ValueError, RuntimeError, OSError) as e:   # OSError: a model file missing or unreadable
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    server = Server(client, host, port, api_key, served_model_name)
    try:
        asyncio.run(_serve(server, drain_timeout))
    except OSError as e:   # the port is taken, the address is not local, ...
        typer.echo(f"error: cannot listen on {host}:{port}: {e}", err=True)
        raise typer.Exit(2)


async def _serve(server, drain_timeout: float | None) -> None:
    port = await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    client = server.client
    info = client.model_info
    where = (f"engine core pid {client.core_pid}" if client.core_pid is not None
             else "engine core in-process")
    typer.echo(f"aisp serve: {server.served_model_name} ({info.device}, max_model_len "
               f"{info.max_model_len:,}: {info.max_model_len_reason}) listening on "
               f"http://{server.host}:{port}; {where}; {info.summary}")
    await stop.wait()
    typer.echo(f"aisp serve: draining {client.num_inflight} in-flight request(s)")
    await server.stop(drain=True, timeout=drain_timeout)
    typer.echo("aisp serve: stopped")
