"""Faults a new user meets, one class per test: each must end in a clear error (or just work), never in a silent
wrong result, a hang or a traceback from deep inside torch."""
import gzip
import json
import multiprocessing
import socket
import struct
import threading
import time

import pytest
import torch

import vit_helpers as vh
from vitkit import data, runtime, train, explain, records
from conftest import write_idx
from conftest import loader, quadrant_data, tiny_vit


# --- DataLoader workers under spawn and forkserver (macOS, Windows, Python 3.14 on Linux) -----------------

@pytest.mark.slow
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_inverted_mnist_loads_in_spawned_workers(fake_mnist, method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"{method} is not available on this platform")
    root, _, _ = fake_mnist
    loaders = data.mnist_loaders(root, batch_size=8, val_size=10, invert=True, augment="affine", download=False)
    workers = torch.utils.data.DataLoader(loaders.test.dataset, batch_size=8, num_workers=1,
                                          multiprocessing_context=method)
    serial = torch.utils.data.DataLoader(loaders.test.dataset, batch_size=8)
    for (xw, yw), (xs, ys) in zip(workers, serial):
        assert torch.equal(xw, xs) and torch.equal(yw, ys)  # test split: deterministic transform


# --- divergence ---------------------------------------------------------------------------------------------

def test_nan_loss_from_a_huge_learning_rate_stops_the_run():
    runtime.set_seed(0)
    model = tiny_vit()
    with pytest.raises(train.TrainingDivergedError, match=r"lr=1e\+06.*try lr/10"):
        train.fit(model, loader(quadrant_data(64, 0)), epochs=3, lr=1e6, optimizer="sgd", momentum=0.0,
                  device="cpu", precision="fp32", progress=False, verbose=False)


def test_nan_pixel_is_named_as_the_cause():
    images, labels = torch.rand(16, 1, 16, 16), torch.arange(16) % 4
    images[5, 0, 3, 3] = float("nan")
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=8)
    with pytest.raises(train.TrainingDivergedError, match="batch 1 .*NaN/inf inputs"):
        train.fit(tiny_vit(), data, epochs=1, device="cpu", precision="fp32", progress=False, verbose=False)


def test_divergence_never_restores_non_finite_weights():
    """Epoch 1 is finite; the data turn NaN in epoch 2: the model is left with epoch 1's finite weights."""
    runtime.set_seed(0)
    good = quadrant_data(32, 0)
    x = (good.images.float() / 255)
    y = good.labels

    class TurnsBad(torch.utils.data.Dataset):
        epoch = 0

        def __len__(self):
            return 32

        def __getitem__(self, i):
            if i == 0:
                TurnsBad.epoch += 1
            return (x[i] * float("nan") if TurnsBad.epoch >= 2 else x[i]), y[i]

    model = tiny_vit()
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    with pytest.raises(train.TrainingDivergedError, match="weights of epoch 1"):
        train.fit(model, torch.utils.data.DataLoader(TurnsBad(), batch_size=16), val, epochs=3, device="cpu",
                  precision="fp32", progress=False, verbose=False)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(grad_clip=0.0), ValueError, "grad_clip=0 would scale every gradient to zero"),
    (dict(grad_clip=-1.0), ValueError, "grad_clip must be > 0"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay must be >= 0"),
    (dict(lr=0.0), ValueError, "lr must be > 0"),
    (dict(lr=float("nan")), ValueError, "lr must be > 0, got nan"),
    (dict(lr="1e-3"), TypeError, "lr must be a number, got str"),
    (dict(momentum=1.5), ValueError, r"momentum must be in \[0, 1\)"),
    (dict(epochs=2.5), TypeError, "epochs must be an int"),
    (dict(accumulation_steps=0), ValueError, "accumulation_steps must be a positive int"),
    (dict(time_budget_s=0), ValueError, "time_budget_s must be > 0"),
    (dict(compile="fast"), ValueError, "compile must be True, False or 'auto'"),
    (dict(channels_last="yes"), ValueError, "channels_last must be True, False or 'auto'"),
    (dict(mixup_alpha=-1), ValueError, "mixup_alpha must be >= 0"),
])
def test_bad_training_settings_fail_before_training(kwargs, error, message):
    kwargs = {"epochs": 1, **kwargs}
    with pytest.raises(error, match=message):
        train.fit(tiny_vit(), loader(quadrant_data(8, 0)), device="cpu", progress=False, verbose=False, **kwargs)


def test_empty_or_unsized_training_data():
    empty = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(0, 1, 16, 16),
                                                                       torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="train_loader yields no batches"):
        train.fit(tiny_vit(), empty, epochs=1, device="cpu", progress=False, verbose=False)
    with pytest.raises(TypeError, match="train_loader must have a length"):
        train.fit(tiny_vit(), iter([]), epochs=1, device="cpu", progress=False, verbose=False)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        train.fit("vit", loader(quadrant_data(8, 0)), epochs=1, device="cpu", progress=False, verbose=False)


# --- image folders ------------------------------------------------------------------------------------------

def test_hidden_folders_are_not_classes(fake_cifar_folders):
    root, _ = fake_cifar_folders
    (root / "cifar10-jpeg" / "train" / ".ipynb_checkpoints").mkdir()
    (root / "cifar10-jpeg" / "train" / "cat" / ".hidden.jpg").write_bytes(b"not an image")
    train, test = data.load_cifar10(root, download=False)
    assert train.classes == test.classes == ["cat", "dog", "ship"]
    assert train.labels.bincount().tolist() == [12, 12, 12]


def test_class_folders_that_differ_between_splits_are_reported(fake_cifar_folders):
    root, _ = fake_cifar_folders
    (root / "cifar10-jpeg" / "test" / "ship").rename(root / "cifar10-jpeg" / "test" / "boat")
    with pytest.raises(ValueError, match=r"extra \['boat'\], missing \['ship'\]"):
        data.load_cifar10(root, download=False)


def test_undecodable_image_is_named(fake_cifar_folders):
    root, _ = fake_cifar_folders
    bad = root / "cifar10-jpeg" / "train" / "dog" / "9999.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ValueError, match="cannot decode .*9999.jpg"):
        data.load_cifar10(root, download=False)


# --- MNIST files --------------------------------------------------------------------------------------------

def test_truncated_idx_file_is_named(fake_mnist):
    root, _, _ = fake_mnist
    path = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte is truncated or corrupt: 46,956 bytes, the "
                                         r"header promises 47,056"):
        data.load_mnist(root, download=False)


def test_gz_files_alone_are_enough(tmp_path):
    g = torch.Generator().manual_seed(0)
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw, "train", torch.randint(0, 256, (30, 28, 28), dtype=torch.uint8, generator=g),
              torch.arange(30, dtype=torch.uint8) % 10)
    write_idx(raw, "t10k", torch.randint(0, 256, (10, 28, 28), dtype=torch.uint8, generator=g),
              torch.arange(10, dtype=torch.uint8) % 10)
    expected = data.load_mnist(tmp_path, download=False)
    for f in list(raw.iterdir()):
        f.with_name(f.name + ".gz").write_bytes(gzip.compress(f.read_bytes()))
        f.unlink()
    train, test = data.load_mnist(tmp_path, download=False)
    assert torch.equal(train.images, expected[0].images) and torch.equal(test.labels, expected[1].labels)


def test_swapped_or_mismatched_idx_files_are_named(fake_mnist):
    root, _, _ = fake_mnist
    raw = root / "MNIST" / "raw"
    images = (raw / "t10k-images-idx3-ubyte").read_bytes()
    (raw / "t10k-images-idx3-ubyte").write_bytes((raw / "t10k-labels-idx1-ubyte").read_bytes())
    with pytest.raises(ValueError, match="not an MNIST images IDX file"):
        data.load_mnist(root, download=False)
    (raw / "t10k-images-idx3-ubyte").write_bytes(images)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, 7) + bytes(7))
    with pytest.raises(ValueError, match="holds 20 images but its partner file holds 7"):
        data.load_mnist(root, download=False)


# --- downloads that stall -----------------------------------------------------------------------------------

@pytest.fixture
def silent_server():
    """A local HTTP 'server' that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    conns, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/"
    stop.set()
    thread.join(2)
    for c in conns:
        c.close()
    server.close()


def test_stalled_mnist_download_fails_in_bounded_time(silent_server, tmp_path, monkeypatch):
    import torchvision
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [silent_server])
    start = time.perf_counter()
    with pytest.raises(vh.DataNotFoundError, match="could not be downloaded .*(timed out|Timeout)"):
        data.load_mnist(tmp_path, download=True, timeout_s=0.5)
    assert time.perf_counter() - start < 20  # 4 files x 0.5 s, not forever
    assert socket.getdefaulttimeout() is None  # the process-wide default is restored


def test_stalled_cifar_download_fails_in_bounded_time(silent_server, tmp_path, monkeypatch):
    import torchvision
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", silent_server + "cifar-10-python.tar.gz")
    start = time.perf_counter()
    with pytest.raises(vh.DataNotFoundError, match="could not be downloaded"):
        data.load_cifar10(tmp_path, download=True, timeout_s=0.5)
    assert time.perf_counter() - start < 20


def test_stalled_image_download_fails_in_bounded_time(silent_server):
    start = time.perf_counter()
    with pytest.raises(vh.DataNotFoundError, match="could not download"):
        data.load_image(silent_server + "photo.jpg", timeout_s=0.5)
    assert time.perf_counter() - start < 10


# --- model input --------------------------------------------------------------------------------------------

def test_uint8_batch_is_told_to_convert():
    model = vh.VisionTransformer(image_size=32, patch_size=4, in_channels=3, num_classes=10, dim=32, depth=1,
                                 heads=2, mlp_dim=32)
    with pytest.raises(TypeError, match=r"got torch.uint8: convert with x.float\(\) / 255"):
        model(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"channels-last .*x.permute\(0, 3, 1, 2\)"):
        model(torch.zeros(2, 32, 32, 3))


# --- rollout ------------------------------------------------------------------------------------------------

def test_prefix_tokens_beyond_cls_are_handled_and_suggested():
    torch.manual_seed(0)
    attentions = tuple(torch.rand(2, 3, 18, 18).softmax(-1) for _ in range(2))  # CLS + distillation + 16 patches
    with pytest.raises(ValueError, match=r"num_prefix_tokens=2 would leave a square 4x4 grid"):
        vh.attention_rollout(attentions)
    mask = vh.attention_rollout(attentions, num_prefix_tokens=2)
    full = vh.rollout_matrix(attentions)
    torch.testing.assert_close(mask, full[:, 0, 2:].reshape(2, 4, 4))  # the patches, not the distillation token
    raw = vh.cls_attention_map(attentions, num_prefix_tokens=2)
    torch.testing.assert_close(raw, attentions[-1].mean(1)[:, 0, 2:].reshape(2, 4, 4))
    with pytest.raises(ValueError, match="num_prefix_tokens must be an int"):
        vh.attention_rollout(attentions, num_prefix_tokens=18)


# --- run records --------------------------------------------------------------------------------------------

def test_records_hold_plain_numbers(tmp_path):
    path = records.save_results(tmp_path / "r.json", metrics={"acc": torch.tensor(0.5), "n": torch.tensor(3),
                                                              "curve": torch.tensor([0.25, 0.5])},
                                config={"mean": (0.5,), "root": tmp_path}, seed=0, dataset="x", wall_time_s=1.0)
    rec = json.loads(path.read_text())
    assert rec["metrics"] == {"acc": 0.5, "n": 3, "curve": [0.25, 0.5]} and rec["config"]["mean"] == [0.5]


@pytest.mark.parametrize("metrics, error, message", [
    ({"acc": float("nan")}, ValueError, r"record.metrics.acc is nan"),
    ({"loss": torch.tensor(float("inf"))}, ValueError, r"record.metrics.loss is inf"),
    ({"model": torch.nn.Linear(1, 1)}, TypeError, "record.metrics.model is a Linear"),
])
def test_records_refuse_what_json_cannot_hold(tmp_path, metrics, error, message):
    with pytest.raises(error, match=message):
        records.save_results(tmp_path / "r.json", metrics=metrics, config={}, seed=0, dataset="x", wall_time_s=1.0)
    assert not (tmp_path / "r.json").exists()  # nothing half-written


# --- devices, seeds, loaders' arguments, HF interop, images ---------------------------------------------------

def test_devices_that_are_not_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available here"):
        runtime.get_device("cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        runtime.get_device("gpu")
    with pytest.raises(ValueError, match="CUDA is not available here"):
        train.fit(tiny_vit(), loader(quadrant_data(8, 0)), epochs=1, device="cuda", precision="fp32", progress=False, verbose=False)
    with pytest.raises(TypeError, match="seed must be an int"):
        runtime.set_seed("0")


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(batch_size=64.0), TypeError, "batch_size must be an int"),
    (dict(train_limit=0), ValueError, "train_limit must be a positive int"),
    (dict(num_workers=-1), ValueError, "num_workers must be >= 0"),
    (dict(mean=(0.5, 0.5, 0.5)), ValueError, "mean has 3 value"),
    (dict(std=(0.0,)), ValueError, "std must be > 0"),
])
def test_loader_arguments_are_checked_before_reading(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):  # tmp_path holds no data: the check comes first
        data.mnist_loaders(tmp_path, download=False, **kwargs)


def test_hf_interop_arguments():
    model = vh.VisionTransformer(image_size=8, patch_size=4, in_channels=1, num_classes=3, dim=8, depth=1, heads=2,
                                 mlp_dim=8)
    with pytest.raises(ValueError, match="attn_implementation must be 'eager'"):
        vh.to_hf(model, attn_implementation="flash")
    with pytest.raises(ValueError, match="id2label must map each class index 0..2"):
        vh.to_hf(model, id2label={0: "a", 1: "b"})
    conv = vh.VisionTransformer(image_size=8, patch_size=4, in_channels=1, num_classes=3, dim=8, depth=1, heads=2,
                                mlp_dim=8, stem="conv")
    with pytest.raises(ValueError, match="stem='conv' cannot be converted"):
        vh.to_hf(conv)


def test_top_k_and_images(tmp_path):
    with pytest.raises(ValueError, match="k must be a positive int"):
        explain.top_k(torch.zeros(1, 3), {0: "a", 1: "b", 2: "c"}, k=0)
    with pytest.raises(ValueError, match=r"no name for class\(es\) \[2\]"):
        explain.top_k(torch.zeros(1, 3), {0: "a", 1: "b"})
    (tmp_path / "notes.jpg").write_text("not a picture")
    with pytest.raises(ValueError, match="is not an image PIL can read"):
        data.load_image(tmp_path / "notes.jpg")
