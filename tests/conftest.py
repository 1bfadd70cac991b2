"""Test-wide setup.

Triton decides at decoration time whether kernels run compiled or in its CPU interpreter, so the
switch must be set before any kernel module is imported: without a GPU every Triton kernel in the
suite runs under TRITON_INTERPRET=1 (float32/float16 only; the interpreter mishandles bfloat16).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_aisp_cache(tmp_path_factory):
    """Measured ceilings are cached per test session, not in the developer's home folder."""
    os.environ["AISP_CACHE_DIR"] = str(tmp_path_factory.mktemp("aisp_cache"))
    yield
