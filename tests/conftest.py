"""Shared fixtures. Real data is read from ../shared/data beside the checkout (or $VIT_SHARED_DATA)."""
import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The tests use tiny tensors: one thread avoids OpenMP start-up costs and, on a busy 2-core machine,
# oversubscription (measured here: 0.3 s with 1 thread vs 50 s with 2 while two other jobs ran).
torch.set_num_threads(1)

SHARED_DATA = Path(os.environ.get("VIT_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set VIT_SHARED_DATA or place shared/data beside the checkout)")
    return SHARED_DATA
