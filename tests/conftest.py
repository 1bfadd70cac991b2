"""Test-wide setup.

Triton decides at decoration time whether kernels run compiled or in its CPU interpreter, so the
switch must be set before any kernel module is imported: without a GPU every Triton kernel in the
suite runs under TRITON_INTERPRET=1 (float32/float16 only; the interpreter mishandles bfloat16).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
