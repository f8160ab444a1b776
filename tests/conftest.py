from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def shared_dir() -> Path:
    """../shared beside the repo; tests that need it skip with a clear message when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"reference data not found at {SHARED} (the ../shared folder beside the repository)")
    return SHARED
