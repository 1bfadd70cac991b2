"""A pair with an accuracy gate: the row fails when the optimized model's logits move beyond the
gate's bound, though its outputs pass the declared (loose) tolerance, and passes within it."""

from textwrap import dedent

import pytest
import torch

from aisp.eval.gate import PerplexityGate
from aisp.hardware import detect
from aisp.harness.discovery import resolve_targets
from aisp.harness.runner import RunOptions, run_pairs

GATED = dedent('''
    import torch
    from torch import nn
    from aisp.eval.gate import PerplexityGate
    from aisp.harness.benchmark import BenchmarkConfig, Work

    class Bigram(nn.Module):
        """Engine-style model: the logits at a position are table[token there]."""
        def __init__(self, table):
            super().__init__()
            self.table = nn.Parameter(table, requires_grad=False)
        def forward(self, input_ids, positions, attn):
            return input_ids[:, None].float()
        def compute_logits(self, hidden):
            return self.table[hidden[:, 0].long()]

    GATE = PerplexityGate(tuple(range(5, 45)) * 2, max_delta_ppl=0.01, max_kl=1e-3,
                          max_length=16) if GATE_ON else None

    class Gated:
        def __init__(self):
            self.name, self.label = "gated", ""
        def config(self):
            # a low-precision pair declares a loose output tolerance; the gate is the real check
            return BenchmarkConfig(iterations=3, warmup=1, sizes={"vocab": 64}, dtype="float32",
                                   tolerance=0.5, accuracy_gate=GATE)
        def work(self):
            return Work(tokens=16)
        def setup(self):
            g = torch.Generator().manual_seed(0)       # the model's weights: fixed
            table = torch.randn(64, 64, generator=g) * 3
            noise = torch.randn(64, 64, generator=torch.Generator().manual_seed(1))
            self.model = Bigram(table + NOISE * noise)
            self.ids = torch.arange(16)
        def run(self):
            with torch.no_grad():
                return self.model.compute_logits(self.model(self.ids, None, None))
        ACCURACY_MODEL
        def teardown(self):
            self.model = None

    def get_benchmark():
        return Gated()
''')
HAS_MODEL = "def accuracy_model(self):\n            return self.model"


def _write(root, noise, gate_on=True, optimized_has_model=True):
    folder = root / "ch92"
    folder.mkdir(parents=True, exist_ok=True)
    sides = (("baseline_acc", 0.0, True), ("optimized_acc", noise, optimized_has_model))
    for stem, n, has in sides:
        body = GATED.replace("ACCURACY_MODEL", HAS_MODEL if has else "pass")
        (folder / f"{stem}.py").write_text(f"NOISE = {n}\nGATE_ON = {gate_on}\n" + body)


def _run(root):
    [row] = run_pairs(resolve_targets("ch92", root), detect("cpu"), None,
                      RunOptions(seed=0), root=root)
    return row


def test_logits_moved_beyond_the_bound_fail_the_row(tmp_path):
    _write(tmp_path, noise=0.3)
    row = _run(tmp_path)
    gate = [c for c in row.comparisons if c.against == "accuracy gate"]
    # the outputs themselves pass the declared tolerance: only the gate catches the change
    assert all(c.ok for c in row.comparisons if c.against != "accuracy gate")
    assert len(gate) == 1 and not gate[0].ok
    assert not row.verified and "accuracy gate exceeded" in row.error and "KL mean" in row.error


def test_logits_moved_within_the_bound_pass(tmp_path):
    _write(tmp_path, noise=1e-4)
    row = _run(tmp_path)
    assert row.verified, row.error
    [gate] = [c for c in row.comparisons if c.against == "accuracy gate"]
    assert gate.ok and gate.rel_error < 0.01 and "ΔPPL" in gate.message
    assert row.verification["summary"].endswith("the accuracy gate on both sides' models")


def test_without_a_gate_the_loose_tolerance_alone_passes_the_perturbed_pair(tmp_path):
    _write(tmp_path, noise=0.3, gate_on=False)
    row = _run(tmp_path)
    assert row.verified and not any(c.against == "accuracy gate" for c in row.comparisons)


def test_a_gated_side_without_its_model_fails_clearly(tmp_path):
    _write(tmp_path, noise=0.0, optimized_has_model=False)
    row = _run(tmp_path)
    assert not row.verified and "no accuracy_model()" in row.error


def test_gate_settings_are_checked_at_construction():
    with pytest.raises(ValueError, match="stride must be between"):
        PerplexityGate((1, 2, 3), max_length=4, stride=9, method="hf-strided")
    with pytest.raises(ValueError, match="min_top1"):
        PerplexityGate((1, 2, 3), min_top1=2.0)


def test_judge_of_identical_evidence_is_zero():
    class Uniform(torch.nn.Module):
        def forward(self, ids, positions, attn):
            return ids[:, None].float()

        def compute_logits(self, h):
            return torch.zeros(len(h), 10)

    gate = PerplexityGate(tuple(range(10)), max_length=4, max_kl=0.0, min_top1=1.0)
    ev = gate.evidence(Uniform())
    c = gate.judge(ev, ev)
    assert c.ok and c.rel_error == 0.0 and "PPL 10.0000 -> 10.0000" in c.message
