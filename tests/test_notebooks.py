"""Every notebook runs top to bottom in smoke mode, offline, and is committed without outputs.

Data: ../shared/data when present, otherwise small generated files in the real formats. Model ids point at tiny
random ViTs saved here with save_pretrained (with an image processor); photos come from ../shared/data/photos
or are generated.
"""
import ast
import json
import os
import struct

import nbformat
import pytest
import torch
from PIL import Image

import vit_helpers as vh
from conftest import ROOT, SHARED_DATA

NOTEBOOKS = ["VisionTransformer.ipynb", "VisualizeAttentionMap.ipynb", "ImportedVisionTransformer.ipynb"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stripped_and_parametrised(name):
    nb = nbformat.read(ROOT / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"{name}: commit it without outputs"
    assert "parameters" in code[0].metadata.get("tags", []), f"{name}: first code cell must be tagged 'parameters'"
    for knob in ("SMOKE", "DATA_ROOT", "SEED", "DEVICE", "OUTPUT_DIR"):
        assert f"{knob} =" in code[0].source
    assert "import vit_helpers as vh" in "".join(c.source for c in code)
    defined = {node.name for c in code for node in ast.walk(ast.parse(c.source))
               if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    assert not defined & set(dir(vh)), f"{name} redefines {defined & set(dir(vh))} from vit_helpers"


def _fake_data(root):
    g = torch.Generator().manual_seed(0)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 3000), ("t10k", 600)):
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.numpy().tobytes())
        labels = (torch.arange(n) % 10).to(torch.uint8)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.numpy().tobytes())
    for split, n in (("train", 160), ("test", 60)):
        for cls in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"):
            folder = root / "cifar10-jpeg" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                arr = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=g).numpy()
                Image.fromarray(arr).save(folder / f"{i:04d}.jpg")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Data root, tiny local HF models and photos for offline smoke runs."""
    transformers = pytest.importorskip("transformers")
    tmp = tmp_path_factory.mktemp("nb")
    has_shared = (SHARED_DATA / "MNIST" / "raw").is_dir() and (SHARED_DATA / "cifar10-jpeg").is_dir()
    if has_shared:
        data_root = SHARED_DATA
    else:
        data_root = tmp / "data"
        _fake_data(data_root)
    labels_file = SHARED_DATA / "imagenet_classes.txt"
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
    photo_dir = SHARED_DATA / "photos"
    if photo_dir.is_dir():
        photos = sorted(str(p) for p in photo_dir.iterdir() if p.suffix in (".jpg", ".png"))[:3]
    else:
        photos = []
        for i, colour in enumerate(("red", "green", "blue")):
            Image.new("RGB", (120, 90), colour).save(tmp / f"photo{i}.png")
            photos.append(str(tmp / f"photo{i}.png"))
    return {"data_root": str(data_root), "models": models, "photos": photos, "out": tmp / "out"}


def _run(name, env, **parameters):
    papermill = pytest.importorskip("papermill")
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VIT_SMOKE="1", MPLBACKEND="module://matplotlib_inline.backend_inline")
    env["out"].mkdir(parents=True, exist_ok=True)
    params = dict(SMOKE=True, DATA_ROOT=env["data_root"], OUTPUT_DIR=str(env["out"]), **parameters)
    papermill.execute_notebook(str(ROOT / name), str(env["out"] / name), parameters=params, cwd=str(ROOT),
                               kernel_name="python3", progress_bar=False)
    return nbformat.read(env["out"] / name, as_version=4)


def _record(env, stem):
    return json.loads((env["out"] / "results" / f"{stem}-smoke.json").read_text())


def test_vision_transformer_notebook(env):
    nb = _run("VisionTransformer.ipynb", env, VAL_SIZE=200)
    record = _record(env, "VisionTransformer")
    assert 0.0 <= record["metrics"]["test_acc"] <= 1.0 and record["metrics"]["epochs_run"] == 1
    assert record["config"]["recipe"] == "seed" and record["hardware"]["cpu_count"] >= 1
    for fig in ("cifar10-patches", "cifar10-curves", "cifar10-confusion", "cifar10-position-similarity"):
        assert (env["out"] / "images" / "smoke" / f"{fig}.png").stat().st_size > 1000
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_visualize_attention_notebook(env):
    _run("VisualizeAttentionMap.ipynb", env, VAL_SIZE=200)
    record = _record(env, "VisualizeAttentionMap")
    assert record["config"]["data"]["invert"] is True
    for fig in ("mnist-rollout", "mnist-rollout-by-layer", "mnist-rollout-fusion", "mnist-raw-vs-rollout"):
        assert (env["out"] / "images" / "smoke" / f"{fig}.png").stat().st_size > 1000


def test_imported_vision_transformer_notebook(env):
    _run("ImportedVisionTransformer.ipynb", env, VAL_SIZE=200, PRETRAINED_ID=env["models"]["pretrained"],
         IMAGENET_ID=env["models"]["imagenet"], PHOTOS=env["photos"])
    metrics = _record(env, "ImportedVisionTransformer")["metrics"]
    assert max(metrics["equivalence_max_abs_diff"].values()) < 1e-4
    assert set(metrics["scratch_side_by_side"]) == {"ours (vit_helpers)", "HF ViTForImageClassification"}
    assert metrics["finetune"]["optimizer_steps"] == 2 and 0.0 <= metrics["finetune"]["test_acc"] <= 1.0
    assert len(metrics["imagenet_top5"]) == len(env["photos"])
    assert all(len(top5) == 5 for top5 in metrics["imagenet_top5"].values())
