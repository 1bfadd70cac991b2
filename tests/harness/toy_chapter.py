"""Build throwaway chapter folders with small, real pairs for harness tests."""

from pathlib import Path
from textwrap import dedent

TOY = dedent('''
    import torch
    from aisp.harness.benchmark import BenchmarkConfig, Work

    class Toy:
        """y = A @ x on seeded inputs; IMPL picks how (the pair's only difference)."""
        def __init__(self, impl, label=""):
            self.name, self.label, self.impl = "toy", label, impl
        def config(self):
            return BenchmarkConfig(iterations=5, warmup=1, sizes={"n": 64}, dtype="float32")
        def work(self):
            return Work(tokens=64, flops=2 * 64 ** 3, bytes=3 * 64 * 64 * 4)
        def setup(self):
            g = torch.Generator().manual_seed(torch.initial_seed())
            self.a = torch.randn(64, 64, generator=g)
            self.x = torch.randn(64, 64, generator=g)
        def run(self):
            return self.impl(self.a, self.x)
        def reference(self):
            return self.a.double() @ self.x.double()
        def teardown(self):
            self.a = self.x = None
''')


def write_pair(root: Path, chapter: str, name: str, baseline_expr: str, optimized: dict[str, str],
               labels: tuple[str, ...] = ("",)) -> Path:
    """`optimized` maps a file suffix ('' for the main file) to an impl lambda expression."""
    folder = root / chapter
    folder.mkdir(parents=True, exist_ok=True)

    def body(expr: str) -> str:
        return TOY + f"\ndef get_benchmark():\n    return [Toy({expr}, label=l) for l in {labels!r}]\n"

    (folder / f"baseline_{name}.py").write_text(body(baseline_expr))
    for suffix, expr in optimized.items():
        stem = f"optimized_{name}" + (f"_{suffix}" if suffix else "")
        (folder / f"{stem}.py").write_text(body(expr))
    return folder
