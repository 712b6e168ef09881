"""Shared assertion of the tree tests."""

from __future__ import annotations

from pyzero import trees


def assert_exact(model, X, *context, leaves: bool = True) -> dict:
    """Compiles `model`, runs trees.verify on X (plus its adversarial rows) and asserts outputs within
    1e-6 and identical labels; with `leaves`, that the native leaf indices were compared and agree."""
    report = trees.verify(model, trees.compile(model), X)
    assert report["ok"], (type(model).__name__, *context, report)
    if leaves:
        assert report.get("leaves_equal") is True, (type(model).__name__, *context, report)
    return report
