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

# The CPUs this project runs on differ: some have native bf16 (AVX512-BF16/AMX), some do not. Every
# hardware-dependent expectation is derived from runtime.cpu_has_native_bf16(), the function the code itself asks.
# VIT_TEST_NATIVE_BF16=1 or 0 mocks that decision for the whole suite (in this process), so that both answers are
# tested on either machine: `VIT_TEST_NATIVE_BF16=0 python -m pytest -q tests` and `...=1 ...`.
# The mock changes the decision only; tests that train pass an explicit precision unless they test "auto" itself,
# so a mocked "native bf16" on a CPU without it never trains a real model in emulated bf16.
MOCK_NATIVE_BF16 = os.environ.get("VIT_TEST_NATIVE_BF16")
if MOCK_NATIVE_BF16 not in (None, "0", "1"):
    raise ValueError(f"VIT_TEST_NATIVE_BF16 must be 0 or 1 (or unset for the real CPU), got {MOCK_NATIVE_BF16!r}.")

# Decoded image folders (the CIFAR-10 JPEG copy: 10 s to decode) are cached once for the whole run, notebooks
# included (they inherit the variable), in a folder of this checkout rather than the user's ~/.cache.
os.environ.setdefault("VIT_CACHE_DIR", str(ROOT / ".pytest_cache" / "vitkit-cache"))

SHARED_DATA = Path(os.environ.get("VIT_SHARED_DATA", ROOT.parent / "shared" / "data"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: notebook runs, compilation, spawned workers, real data or long "
                                       "training; the inner loop skips them with -m 'not slow'")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set VIT_SHARED_DATA or place shared/data beside the checkout)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _native_bf16_decision(monkeypatch):
    """Applies VIT_TEST_NATIVE_BF16 (see above) to every test."""
    if MOCK_NATIVE_BF16 is not None:
        from vitkit import runtime
        monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: MOCK_NATIVE_BF16 == "1")
