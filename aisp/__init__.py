"""aisp: AI Systems Performance, a production LLM-inference optimization lab on a small real stack.

The library lives here (hardware detection, the benchmark harness, kernels, models, engine);
the chapter folders (ch16/) only pick shapes and compose these pieces.
"""

__version__ = "0.1.0"
