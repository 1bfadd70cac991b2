"""GuideLLM 0.8 benchmarks a real `aisp serve` on 127.0.0.1 (a constant-rate run, completed, no
errors). Skipped when GuideLLM is absent: it is not in the test extras because it pins
click~=8.4 (typer here brings 8.5) and pulls in pandas, pyarrow, datasets and sanic (whose
multidict<7 would downgrade aiohttp's). To run it:

    python -m venv --system-site-packages /tmp/gllm && /tmp/gllm/bin/pip install guidellm==0.8.1
    AISP_GUIDELLM=/tmp/gllm/bin/guidellm python -m pytest tests/serve/test_guidellm.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from aisp.model.presets import PRESETS, save_synthetic
from aisp.serve.server import start_server
from tests.serve.conftest import engine_config

GUIDELLM = os.environ.get("AISP_GUIDELLM") or shutil.which("guidellm")
pytestmark = pytest.mark.skipif(GUIDELLM is None, reason="guidellm is not installed (see the "
                                "module docstring: set AISP_GUIDELLM to its executable)")


def test_guidellm_constant_rate_run_completes_without_errors(tmp_path):
    model = save_synthetic(PRESETS["tiny"], tmp_path / "tiny", seed=0)   # GuideLLM's tokenizer
    out = tmp_path / "guidellm.json"
    with start_server(engine_config(model), served_model_name="tiny") as srv:
        run = subprocess.run(
            [GUIDELLM, "run", "--backend", f"kind=openai_http,target={srv.url},model=tiny",
             "--profile", "kind=constant,rate=2", "--constraint", "kind=max_duration,seconds=5",
             "--data", "kind=synthetic_text,prompt_tokens=32,output_tokens=8",
             "--tokenizer", f"kind=huggingface_auto,model={model}",
             "--output", f"kind=json,path={out}", "--disable-progress"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    state = json.loads(out.read_text())["benchmarks"][0]["scheduler_state"]
    assert state["successful_requests"] >= 5 and state["errored_requests"] == 0, state
