"""Provenance: which commit a result came from."""

from aisp.harness.provenance import git_sha


def test_git_sha_prefers_the_named_commit_of_a_copied_tree(monkeypatch):
    monkeypatch.setenv("AISP_GIT_SHA", "66b17a4")
    assert git_sha() == "66b17a4"
    monkeypatch.delenv("AISP_GIT_SHA")
    assert git_sha() not in ("66b17a4", "")
