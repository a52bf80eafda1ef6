"""The suite's tiers by fixture: a fixture that trains a model or a pipeline, starts a server, a cluster, torchrun
or a runtime, or loads the real pretrained model is declared with `heavy_fixture`, and every test that uses it,
directly or through another fixture, is marked `heavy` (tests/conftest.py), as are the `integration` and `parity`
tests. `make test-fast` runs the rest."""

from __future__ import annotations

import pytest

HEAVY_FIXTURES: set[str] = set()
HEAVY_MARKERS = ("integration", "parity")


def heavy_fixture(*args, **kwargs):
    """`pytest.fixture(*args, **kwargs)`, and the fixture's name added to `HEAVY_FIXTURES`."""

    def declare(function):
        HEAVY_FIXTURES.add(kwargs.get("name") or function.__name__)
        return pytest.fixture(*args, **kwargs)(function)

    return declare


def is_heavy(item) -> bool:
    """Whether a collected test uses a heavy fixture (its fixture closure) or carries a heavy marker."""
    return bool(HEAVY_FIXTURES & set(item.fixturenames)) or any(item.get_closest_marker(m) for m in HEAVY_MARKERS)
