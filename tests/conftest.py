"""Shared fixtures and helpers (tiny data sets, a tiny ViT, a fake clock). Real data is read from ../shared/data beside
the checkout (or $VIT_SHARED_DATA)."""
import os
import struct
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

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


# ----------------------------------------------------------------------------------------------------
# Helpers the test modules share (import them from conftest)
# ----------------------------------------------------------------------------------------------------

from vit_helpers import VisionTransformer  # noqa: E402
from vitkit.sources import InMemoryImages  # noqa: E402


def quadrant_data(n, seed):
    """4 classes: the bright quadrant of a 16x16 image is the label."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = torch.randint(0, 60, (n, 1, 16, 16), dtype=torch.uint8, generator=g)
    for i, c in enumerate(labels.tolist()):
        r, col = divmod(c, 2)
        images[i, 0, 8 * r:8 * r + 8, 8 * col:8 * col + 8] += 180
    return InMemoryImages(images, labels, ["tl", "tr", "bl", "br"])


def loader(ds, batch_size=32, shuffle=False):
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle,
                                       generator=torch.Generator().manual_seed(0))


def tiny_vit():
    return VisionTransformer(image_size=16, patch_size=8, in_channels=1, num_classes=4, dim=16, depth=1, heads=2,
                                mlp_dim=32)


class FakeClock:
    """time.perf_counter for runs whose work costs what the test says (``work``): the budget logic becomes exact,
    not a timed test."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def work(self, seconds: float) -> None:
        self.now += seconds


def write_idx(folder, prefix, images, labels):
    folder.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, h, w) + images.numpy().tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.numpy().tobytes())


def write_lock(path, **info):
    """The lock of checkpoint ``path`` (``<path>.lock``) as a RunLock of this host writes it, fresh, with ``info``
    (e.g. ``pid=holder.pid``) on top."""
    import json
    import socket
    import time
    path.with_name(path.name + ".lock").write_text(json.dumps({"host": socket.gethostname(), "started": "earlier",
                                                               "heartbeat": time.time(), **info}))


@pytest.fixture
def holder():
    """A live process of this host (a `sleep`), killed at the end: the holder of a lock in the tests of locks."""
    import subprocess
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def fake_mnist(tmp_path):
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (60, 28, 28), dtype=torch.uint8, generator=g)
    test = torch.randint(0, 256, (20, 28, 28), dtype=torch.uint8, generator=g)
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw, "train", train, torch.arange(60, dtype=torch.uint8) % 10)
    write_idx(raw, "t10k", test, torch.arange(20, dtype=torch.uint8) % 10)
    return tmp_path, train, test


@pytest.fixture
def fake_cifar_folders(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = {}
    for split, n in (("train", 12), ("test", 4)):
        for cls in ("cat", "dog", "ship"):
            folder = tmp_path / "cifar10-jpeg" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=g)
                pil = Image.fromarray(img.permute(1, 2, 0).numpy())
                if i % 2:
                    pil.save(folder / f"{i:04d}.jpg", quality=95)
                else:
                    pil.save(folder / f"{i:04d}.png")
                    images[(split, cls, i)] = img
    return tmp_path, images
