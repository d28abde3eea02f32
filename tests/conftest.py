"""Shared fixtures. Tests make their own tiny fixtures on disk; real data comes from
../shared/realdata (skipped cleanly where it is absent). Everything under tests/e2e/ is
marked slow: `make test-fast` leaves it out."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import REALDATA


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "e2e" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def realdata() -> Path:
    """The real annotation sets made by other people; the test is skipped without them."""
    if not REALDATA.is_dir():
        pytest.skip(f"real data not found at {REALDATA}")
    return REALDATA


@pytest.fixture(autouse=True)
def private_cache_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Keep convert's input-hash memo (under $XDG_CACHE_HOME) out of the user's home."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
