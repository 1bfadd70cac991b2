"""Fixtures for the server tests: a tiny Llama whose vocabulary is exactly the byte tokenizer's
(259 ids), so every sampled token decodes to text (random bytes: ASCII, multi-byte characters
and invalid UTF-8 alike), and a real server on 127.0.0.1 with an ephemeral port."""

from __future__ import annotations

from pathlib import Path

import pytest

from aisp.engine.config import EngineConfig
from aisp.model.presets import PRESETS, save_synthetic
from aisp.model.tokenizer import BYTE_VOCAB_SIZE
from aisp.serve.server import RunningServer, start_server

NUM_KV_BLOCKS = 128   # 2,048 tokens of 16: small enough that "all blocks free again" is meaningful


def engine_config(model_dir: Path, **overrides) -> EngineConfig:
    values = dict(model=str(model_dir), device="cpu", num_kv_blocks=NUM_KV_BLOCKS)
    values.update(overrides)
    return EngineConfig(**values)


@pytest.fixture(scope="session")
def byte_model(tmp_path_factory) -> Path:
    config = PRESETS["tiny"].replace(vocab_size=BYTE_VOCAB_SIZE)
    return save_synthetic(config, tmp_path_factory.mktemp("byte-tiny"), seed=0)


@pytest.fixture(scope="module", params=["off", "on"], ids=["sync", "async"])
def server(byte_model, request) -> RunningServer:
    """The server over a synchronous engine, and over one with async scheduling (the GPU
    default: outputs arrive a step later, stops are seen a step late)."""
    srv = start_server(engine_config(byte_model, async_scheduling=request.param),
                       served_model_name="byte-tiny")
    yield srv
    srv.stop(drain=False, timeout=5)
