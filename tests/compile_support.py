"""torch.compile on a CPU builds C++ (Inductor's CPU backend): without a C++ compiler those
tests skip, saying so. `.ci/run` installs one (g++ and Python's headers), so CI runs them."""

import shutil

import pytest
import torch

HAS_CPU_COMPILER = bool(shutil.which("g++") or shutil.which("c++"))

needs_compiler = pytest.mark.skipif(
    not torch.cuda.is_available() and not HAS_CPU_COMPILER,
    reason="torch.compile on a CPU needs a C++ compiler: apt-get install g++ python3-dev "
           "(as .ci/run does)")
