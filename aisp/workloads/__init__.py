"""Workloads shared by both sides of a pair (STYLE.md #9).

A workload owns the shapes per hardware, the seeded inputs (several sets, rotated so caches do
not flatter), the FLOP and byte counts and the float64 reference. A chapter's baseline and
optimized files differ only in the implementation they hand to it.
"""
