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


ROTATING = dedent('''
    import torch
    from aisp.harness.benchmark import BenchmarkConfig, Work

    class Rotating:
        """y = A_i @ x_i over SETS seeded input sets, rotated per call as the protocol says;
        IMPL(a, x, i, calls) sees the set index and the call count, so a test can make one
        side wrong on one set only, or only after some calls."""
        def __init__(self, impl):
            self.name, self.label, self.impl = "rotating", "", impl
        def config(self):
            return BenchmarkConfig(iterations=5, warmup=1, sizes={"n": 16}, dtype="float32",
                                   input_sets=SETS, allow_nonfinite=ALLOW_NONFINITE)
        def work(self):
            return Work(tokens=16, flops=2 * 16 ** 3, bytes=3 * 16 * 16 * 4)
        def setup(self):
            g = torch.Generator().manual_seed(torch.initial_seed())
            self.sets = [(torch.randn(16, 16, generator=g), torch.randn(16, 16, generator=g))
                         for _ in range(SETS)]
            self.calls = 0
        def run(self):
            i = self.calls % SETS
            self.calls += 1
            return self.impl(*self.sets[i], i, self.calls)
        def reference(self):
            return self.sets[0][0].double() @ self.sets[0][1].double()
        def teardown(self):
            self.sets = []
''')


def write_rotating_pair(root: Path, chapter: str, name: str, baseline_expr: str,
                        optimized_expr: str, input_sets: int = 3,
                        allow_nonfinite: bool = False) -> Path:
    """A pair over `input_sets` rotated input sets; the exprs are `lambda a, x, i, calls: ...`."""
    folder = root / chapter
    folder.mkdir(parents=True, exist_ok=True)
    head = f"SETS = {input_sets}\nALLOW_NONFINITE = {allow_nonfinite}\n"
    for stem, expr in ((f"baseline_{name}", baseline_expr), (f"optimized_{name}", optimized_expr)):
        (folder / f"{stem}.py").write_text(
            head + ROTATING + f"\ndef get_benchmark():\n    return Rotating({expr})\n")
    return folder
