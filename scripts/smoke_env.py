"""Offline inputs for running the notebooks in smoke mode: a data root (../shared/data or generated files in the
real formats), tiny random HF ViTs saved with save_pretrained (with an image processor), and photos. Used by
tests/test_notebooks.py and scripts/gpu_check.py.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["VisionTransformer.ipynb", "VisualizeAttentionMap.ipynb", "ImportedVisionTransformer.ipynb",
             "InductiveBias.ipynb", "WeaklySupervisedLocalization.ipynb"]
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def fake_data(root: Path) -> None:
    """Random MNIST IDX files and CIFAR-10 JPEG folders, small, in the real layouts."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 3000), ("t10k", 600)):
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.numpy().tobytes())
        labels = (torch.arange(n) % 10).to(torch.uint8)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.numpy().tobytes())
    for split, n in (("train", 160), ("test", 60)):
        for cls in CIFAR10_CLASSES:
            folder = root / "cifar10-jpeg" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                arr = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=g).numpy()
                Image.fromarray(arr).save(folder / f"{i:04d}.jpg")


def make_smoke_env(tmp: Path, shared_data: Path) -> dict:
    """Data root, tiny local HF models and photos under ``tmp`` for offline smoke runs."""
    import transformers
    from PIL import Image

    has_shared = (shared_data / "MNIST" / "raw").is_dir() and (shared_data / "cifar10-jpeg").is_dir()
    data_root = shared_data if has_shared else tmp / "data"
    if not has_shared:
        fake_data(data_root)
    labels_file = shared_data / "imagenet_classes.txt"
    names = labels_file.read_text().splitlines() if labels_file.is_file() else [f"class {i}" for i in range(1000)]
    models = {}
    for key, num_labels, size, patch in (("pretrained", 21, 32, 8), ("imagenet", 1000, 48, 16)):
        cfg = transformers.ViTConfig(image_size=size, patch_size=patch, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, num_labels=num_labels,
                                     id2label=dict(enumerate(names)) if num_labels == 1000 else None)
        torch.manual_seed(0)
        folder = tmp / key
        transformers.ViTForImageClassification(cfg).save_pretrained(folder)
        transformers.ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)
        models[key] = str(folder)
    photo_dir = shared_data / "photos"
    if photo_dir.is_dir():
        photos = sorted(str(p) for p in photo_dir.iterdir() if p.suffix in (".jpg", ".png"))[:3]
    else:
        photos = []
        for i, colour in enumerate(("red", "green", "blue")):
            Image.new("RGB", (120, 90), colour).save(tmp / f"photo{i}.png")
            photos.append(str(tmp / f"photo{i}.png"))
    return {"data_root": str(data_root), "models": models, "photos": photos, "out": tmp / "out"}


def notebook_parameters(name: str, env: dict) -> dict:
    """The papermill parameters of a smoke run of notebook ``name``."""
    params = dict(SMOKE=True, DATA_ROOT=env["data_root"], OUTPUT_DIR=str(env["out"]), VAL_SIZE=200)
    if name == "ImportedVisionTransformer.ipynb":
        params.update(PRETRAINED_ID=env["models"]["pretrained"], IMAGENET_ID=env["models"]["imagenet"],
                      PHOTOS=env["photos"])
    return params


def smoke_environ() -> None:
    """The environment a smoke run's kernel inherits: offline, smoke mode, the inline figure backend."""
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VIT_SMOKE="1",
                      MPLBACKEND="module://matplotlib_inline.backend_inline")


def run_notebook(name: str, env: dict, fresh: bool = True, **parameters):
    """Execute notebook ``name`` offline in smoke mode; returns the executed notebook. ``fresh``: move its earlier run
    checkpoints aside first (False: leave them, as a user re-running the notebook would)."""
    import nbformat
    import papermill

    smoke_environ()
    env["out"].mkdir(parents=True, exist_ok=True)
    from vitkit import checkpoint as ckpt  # the kernel and this process import vitkit from the repository

    if fresh:
        ckpt.set_aside(env["out"] / "checkpoints" / "runs", f"{Path(name).stem}-")
    params = {**notebook_parameters(name, env), **parameters}
    papermill.execute_notebook(str(ROOT / name), str(env["out"] / name), parameters=params, cwd=str(ROOT),
                               kernel_name="python3", progress_bar=False)
    return nbformat.read(env["out"] / name, as_version=4)
