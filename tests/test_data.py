from pathlib import Path

import pytest
import torch

import vit_helpers as vh
from conftest import write_idx
from vitkit import data, plots, recipes, sources, train


def test_mnist_idx_files_load_with_split_sizes(fake_mnist):
    root, train, test = fake_mnist
    loaders = data.mnist_loaders(root, batch_size=16, val_size=10, download=False)
    assert [len(l.dataset) for l in loaders] == [50, 10, 20]
    x, y = next(iter(loaders.train))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(loaders.test.dataset.images[:, 0], test)  # test split in file order, untouched
    assert loaders.train.dataset.classes == [str(i) for i in range(10)]


def test_mnist_split_is_seeded_and_disjoint(fake_mnist):
    root, train, _ = fake_mnist
    a = data.mnist_loaders(root, val_size=10, seed=1, download=False)
    b = data.mnist_loaders(root, val_size=10, seed=1, download=False)
    c = data.mnist_loaders(root, val_size=10, seed=2, download=False)
    assert torch.equal(a.val.dataset.images, b.val.dataset.images)
    assert not torch.equal(a.val.dataset.images, c.val.dataset.images)
    flat = lambda ds: {bytes(im.numpy().tobytes()) for im in ds.images}  # noqa: E731
    assert not flat(a.train.dataset) & flat(a.val.dataset)
    assert len(flat(a.train.dataset) | flat(a.val.dataset)) == 60


def test_mnist_invert_gives_255_minus_pixel(fake_mnist):
    root, _, test = fake_mnist
    loaders = data.mnist_loaders(root, val_size=10, invert=True, download=False)
    ds = loaders.test.dataset
    x, _ = ds[3]
    recovered = plots.denormalize(x, ds.mean, ds.std)
    torch.testing.assert_close(recovered[0], (255 - test[3].float()) / 255, atol=1e-6, rtol=0)
    assert ds.mean == pytest.approx((1 - 0.1307,))


def test_limits_take_subsets(fake_mnist):
    root, _, _ = fake_mnist
    loaders = data.mnist_loaders(root, val_size=10, train_limit=7, test_limit=5, download=False)
    assert [len(l.dataset) for l in loaders] == [7, 10, 5]


@pytest.mark.parametrize("augment", ["crop", "affine"])
def test_mnist_augmentations_keep_shape(fake_mnist, augment):
    root, _, _ = fake_mnist
    x, _ = next(iter(data.mnist_loaders(root, batch_size=8, val_size=10, augment=augment, download=False).train))
    assert x.shape == (8, 1, 28, 28)


def test_image_folders_load_exactly(fake_cifar_folders):
    root, images = fake_cifar_folders
    train, test = data.load_cifar10(root, download=False)
    assert train.classes == ["cat", "dog", "ship"] and len(train) == 36 and len(test) == 12
    assert train.images.shape == (36, 3, 32, 32) and train.images.dtype == torch.uint8
    # PNGs are lossless: file 0002.png of class dog is the 3rd dog image in sorted order
    assert torch.equal(train.images[12 + 2], images[("train", "dog", 2)])
    assert train.labels.tolist() == [0] * 12 + [1] * 12 + [2] * 12
    assert train.source == f"image folders .../{root.name}/cifar10-jpeg (JPEG/PNG copy)"  # no machine's folders


def test_a_records_data_line_shows_no_machine_folders(monkeypatch):
    import os
    repo = Path(os.path.abspath(sources.__file__)).parents[1]
    assert sources.shown_path("../shared/data") == "../shared/data"  # relative: as given
    assert sources.shown_path(repo / "data" / "mnist") == "data/mnist"
    assert sources.shown_path(repo.parent / "shared" / "data") == "../shared/data"
    far = Path(repo.anchor, "mnt", "disk", "datasets", "cifar10-jpeg")
    assert sources.shown_path(far) == ".../datasets/cifar10-jpeg"
    monkeypatch.chdir(repo)  # a relative path that climbs out of the repository's folder reads as an absolute one
    assert sources.shown_path(os.path.relpath(far)) == ".../datasets/cifar10-jpeg"


def test_decoded_image_folders_are_cached_until_a_file_changes(fake_cifar_folders, tmp_path, monkeypatch):
    root, images = fake_cifar_folders
    monkeypatch.setenv("VIT_CACHE_DIR", str(tmp_path / "cache"))
    first, first_test = data.load_cifar10(root, download=False)
    assert len(list((tmp_path / "cache").glob("image-folders-*.pt"))) == 1
    real = sources.load_image_folder
    monkeypatch.setattr(sources, "load_image_folder", lambda *a, **k: pytest.fail("decoded again despite the cache"))
    again, again_test = data.load_cifar10(root, download=False)
    assert torch.equal(again.images, first.images) and torch.equal(again_test.labels, first_test.labels)
    assert (again.classes, again.source) == (first.classes, first.source)
    # a changed file invalidates the cache (and the stale cache file is removed)
    monkeypatch.setattr(sources, "load_image_folder", real)
    from PIL import Image
    Image.fromarray(torch.zeros(32, 32, 3, dtype=torch.uint8).numpy()).save(root / "cifar10-jpeg" / "train" / "dog" /
                                                                          "0002.png")
    changed, _ = data.load_cifar10(root, download=False)
    assert changed.images[12 + 2].sum() == 0 and not torch.equal(changed.images, first.images)
    assert len(list((tmp_path / "cache").glob("image-folders-*.pt"))) == 1
    monkeypatch.setenv("VIT_CACHE_DIR", "")  # no cache at all: decoded every time, nothing written
    monkeypatch.setattr(torch, "save", lambda *a, **k: pytest.fail("wrote a cache file"))
    assert torch.equal(data.load_cifar10(root, download=False)[0].images, changed.images)


@pytest.mark.parametrize("augment", ["none", "crop_flip", "randaugment", "autoaugment"])
def test_cifar_loaders_on_folders(fake_cifar_folders, augment):
    root, _ = fake_cifar_folders
    loaders = data.cifar10_loaders(root, batch_size=4, val_size=6, augment=augment, download=False)
    assert [len(l.dataset) for l in loaders] == [30, 6, 12]
    x, y = next(iter(loaders.train))
    assert x.shape == (4, 3, 32, 32)


def test_cifar_resize_for_pretrained_models(fake_cifar_folders):
    root, _ = fake_cifar_folders
    loaders = data.cifar10_loaders(root, batch_size=2, val_size=6, resize=64, mean=(0.5,) * 3, std=(0.5,) * 3,
                                   download=False)
    x, _ = next(iter(loaders.test))
    assert x.shape == (4, 3, 64, 64)  # eval batches are 2 x batch_size
    assert x.min() >= -1 - 1e-6 and x.max() <= 1 + 1e-6


def test_cifar_loaders_normalise_with_the_given_statistics(fake_cifar_folders):
    # the original's CIFAR-10 statistics (the faithful recipes'), checked on a lossless image: (x / 255 - mean) / std
    root, images = fake_cifar_folders
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2023, 0.1994, 0.2010])
    loaders = data.cifar10_loaders(root, batch_size=2, val_size=6, mean=tuple(mean.tolist()), std=tuple(std.tolist()),
                                   download=False)
    x, y = next(iter(loaders.test))  # the test split in file order: the first class's first image, a PNG
    want = (images[("test", "cat", 0)].float() / 255 - mean[:, None, None]) / std[:, None, None]
    assert y[0].item() == 0 and torch.allclose(x[0], want, atol=1e-5)


def test_missing_mnist_names_root_files_and_env_var(tmp_path):
    with pytest.raises(vh.DataNotFoundError) as info:
        data.mnist_loaders(tmp_path / "nowhere", download=False)
    msg = str(info.value)
    assert str((tmp_path / "nowhere" / "MNIST" / "raw").resolve()) in msg
    assert "train-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert "VIT_DATA_ROOT" in msg and "DATA_ROOT" in msg


def test_missing_cifar_names_both_layouts_and_env_var(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        data.cifar10_loaders(tmp_path, download=False)
    msg = str(info.value)
    assert str(tmp_path.resolve()) in msg
    assert "cifar-10-batches-py" in msg and "train/<class>/*.jpg" in msg and "VIT_DATA_ROOT" in msg


def test_data_root_defaults_to_env(monkeypatch, fake_mnist):
    root, _, _ = fake_mnist
    monkeypatch.setenv("VIT_DATA_ROOT", str(root))
    assert data.default_data_root() == str(root)
    assert len(data.mnist_loaders(val_size=10, download=False).test.dataset) == 20


def test_cifar_jpeg_quality_reencodes_every_split_once_before_the_split(fake_cifar_folders, tmp_path):
    root, _ = fake_cifar_folders
    plain = data.cifar10_loaders(root, batch_size=2, val_size=6, download=False)
    coarse = data.cifar10_loaders(root, batch_size=2, val_size=6, download=False, jpeg_quality=5)
    fine = data.cifar10_loaders(root, batch_size=2, val_size=6, download=False, jpeg_quality=100)
    for split in ("train", "val", "test"):
        a, b, c = (getattr(l, split).dataset for l in (plain, coarse, fine))
        assert torch.equal(a.labels, b.labels)  # the same images in the same split: only their pixels change
        loss = lambda d: (d.images.float() - a.images.float()).abs().mean().item()
        assert loss(c) < loss(b) and loss(b) > 1  # quality 5 loses far more than quality 100
        assert b.source.endswith(", re-encoded once as JPEG at quality 5")
    # checked before any file is read: a folder that does not exist still gets the argument's error
    with pytest.raises(ValueError, match="jpeg_quality"):
        data.cifar10_loaders(tmp_path / "nowhere", download=False, jpeg_quality=0)
    with pytest.raises(TypeError, match="jpeg_quality"):
        data.cifar10_loaders(tmp_path / "nowhere", download=False, jpeg_quality=75.5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(augment="randaugment"), "unknown augment 'randaugment' for mnist"),
    (dict(val_size=60), "val_size must be between 1 and 59"),
    (dict(batch_size=0), "batch_size must be a positive int"),
])
def test_bad_loader_arguments(fake_mnist, kwargs, message):
    root, _, _ = fake_mnist
    with pytest.raises(ValueError, match=message):
        data.mnist_loaders(root, download=False, **{"val_size": 10, **kwargs})


# --- the real copies in ../shared/data ---------------------------------------------------------------

def test_real_mnist(shared_data):
    loaders = data.mnist_loaders(shared_data, val_size=5000, download=False)
    assert [len(l.dataset) for l in loaders] == [55000, 5000, 10000]
    test = loaders.test.dataset
    assert test.labels[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first test digits
    assert torch.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.slow
def test_real_cifar10_jpeg_copy(shared_data):
    if not (shared_data / "cifar10-jpeg").is_dir():
        pytest.skip(f"no cifar10-jpeg under {shared_data}")
    loaders = data.cifar10_loaders(shared_data, val_size=5000, download=False)
    assert [len(l.dataset) for l in loaders] == [45000, 5000, 10000]
    assert loaders.test.dataset.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                            "ship", "truck"]
    assert torch.bincount(loaders.test.dataset.labels).tolist() == [1000] * 10
    mean = loaders.train.dataset.images.float().mean(dim=(0, 2, 3)) / 255
    torch.testing.assert_close(mean, torch.tensor(data.CIFAR10_MEAN), atol=0.01, rtol=0)  # JPEG copy ~ original stats


def test_reencoding_the_cifar10_jpeg_copy_at_its_own_quality_barely_changes_it(shared_data):
    folder = shared_data / "cifar10-jpeg" / "test" / "cat"
    if not folder.is_dir():
        pytest.skip(f"no cifar10-jpeg under {shared_data}")
    import numpy as np
    from PIL import Image

    images = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1)
                          for f in sorted(folder.glob("*.jpg"))[:200]])
    copy = sources.InMemoryImages(images, torch.zeros(len(images)), ["cat"])
    change = lambda q: (copy.jpeg_reencoded(q).images.float() - images.float()).abs().mean().item()
    # the copy was written at quality 75: a second round at 75 moves pixels by a fraction of a level on average,
    # so it cannot stand in for the first round's loss (docs/results.md, the ablation table's jpeg row)
    still, coarse = change(75), change(50)
    assert still < 0.5 and coarse > 5 * still, (still, coarse)


def test_train_eval_loader_is_unaugmented_and_whole(fake_mnist):
    root, _, _ = fake_mnist
    loaders = data.mnist_loaders(root, val_size=10, augment="affine", download=False)
    ev = data.train_eval_loader(loaders)
    assert len(ev.dataset) == 50 and ev.dataset.images.data_ptr() == loaders.train.dataset.images.data_ptr()
    x1, _ = ev.dataset[0]
    x2, _ = ev.dataset[0]
    assert torch.equal(x1, x2)  # deterministic: no augmentation
    assert torch.equal(x1, loaders.val.dataset.transform(loaders.train.dataset.images[0]))


@pytest.mark.slow
def test_train_recipe_script_records_a_run(fake_mnist, tmp_path):
    import json
    import subprocess
    import sys

    from conftest import ROOT

    root, _, _ = fake_mnist
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_recipe.py"), "mnist-strong", "--data-root",
                           str(root), "--epochs", "1", "--threads", "1", "--val-size", "10", "--out-dir", str(out), "--tag", "t"],
                          capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                            "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((out / "results" / "mnist-strong-t.json").read_text())
    assert record["metrics"]["epochs_run"] == 1 and record["metrics"]["test_n"] == 20
    assert record["config"]["recipe"] == "mnist-strong" and record["config"]["threads"] == 1
    for f in ("images/mnist-strong-t-curves.png", "images/mnist-strong-t-rollout.png", "checkpoints/mnist-strong-t.safetensors"):
        assert (out / f).is_file(), f
    model, meta = vh.load_model(out / "checkpoints" / "mnist-strong-t.safetensors")
    assert meta == {"recipe": "mnist-strong", "test_acc": record["metrics"]["test_acc"],
                    "record": "results/mnist-strong-t.json"}
    assert model.config == vh.VisionTransformer(**recipes.get_recipe("mnist-strong")["model"]).config
    assert 0 <= record["metrics"]["final_epoch_test_acc"] <= 1 and record["metrics"]["resumes"] == 0
    assert (out / "checkpoints" / "runs" / "mnist-strong-t.pt").is_file()
    again = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_recipe.py"), "mnist-strong", "--data-root",
                            str(root), "--epochs", "1", "--threads", "1", "--val-size", "10", "--out-dir", str(out),
                            "--tag", "t", "--resume"], capture_output=True, text=True, timeout=300,
                           env={**__import__("os").environ, "MPLBACKEND": "Agg"})
    assert again.returncode == 0 and "finished after 1 epochs" in again.stdout, again.stderr[-2000:]
    assert json.loads((out / "results" / "mnist-strong-t.json").read_text())["metrics"]["test_acc"] == \
        record["metrics"]["test_acc"]


@pytest.mark.slow
def test_shipped_mnist_weights_score_as_recorded(shared_data):
    import json

    from conftest import ROOT

    model, meta = vh.load_model(ROOT / "weights" / "mnist-fast.safetensors")
    record = json.loads((ROOT / meta["record"]).read_text())
    assert meta["test_acc"] == record["metrics"]["test_acc"] and meta["recipe"] == record["config"]["recipe"]
    loaders = data.mnist_loaders(shared_data, download=False, **{k: v for k, v in record["config"]["data"].items()
                                                                 if k in ("batch_size", "invert")})
    test = train.evaluate(model, loaders.test, "cpu")
    assert test["n"] == 10_000
    assert abs(test["acc"] - meta["test_acc"]) <= 1e-4  # at most one digit apart (fp32 summation order)


@pytest.mark.slow
def test_shipped_cifar10_weights_score_as_recorded(shared_data):
    import json

    from conftest import ROOT

    path = ROOT / "weights" / "cifar10-cpu.safetensors"
    model, meta = vh.load_model(path)
    record = json.loads((ROOT / meta["record"]).read_text())
    assert meta["test_acc"] == record["metrics"]["test_acc"] and meta["recipe"] == record["config"]["recipe"]
    assert "JPEG" in record["dataset"]  # scored on the same copy as the shared one
    loaders = data.cifar10_loaders(shared_data, download=False, batch_size=256)
    test = train.evaluate(model, loaders.test, "cpu")
    assert test["n"] == 10_000
    assert abs(test["acc"] - meta["test_acc"]) <= 2e-4  # at most two images apart (fp32 summation order)


def test_a_balanced_validation_split_holds_as_many_images_of_every_class(fake_mnist):
    root, _, _ = fake_mnist  # 60 training images, 6 of each digit
    loaders = data.mnist_loaders(root, batch_size=8, val_size=20, balanced_val=True, download=False)
    val, train_ = loaders.val.dataset, loaders.train.dataset
    assert torch.bincount(val.labels.long(), minlength=10).tolist() == [2] * 10
    assert len(train_) == 40 and torch.bincount(train_.labels.long(), minlength=10).tolist() == [4] * 10
    again = data.mnist_loaders(root, batch_size=8, val_size=20, balanced_val=True, download=False).val.dataset
    assert torch.equal(again.images, val.images)  # seeded: the same split every time
    other = data.mnist_loaders(root, batch_size=8, val_size=20, balanced_val=True, seed=1, download=False).val.dataset
    assert not torch.equal(other.images, val.images)
    odd = data.mnist_loaders(root, batch_size=8, val_size=13, balanced_val=True, download=False).val.dataset
    assert torch.bincount(odd.labels.long(), minlength=10).tolist() == [2, 2, 2] + [1] * 7
    raw = root / "MNIST" / "raw"  # now a training split of 51 zeros and one image of each other digit
    write_idx(raw, "train", torch.zeros(60, 28, 28, dtype=torch.uint8), torch.tensor([0] * 51 + list(range(1, 10)),
                                                                                        dtype=torch.uint8))
    with pytest.raises(ValueError, match="class 1 has 1 images, fewer than its share 2 of val_size=20"):
        data.mnist_loaders(root, batch_size=8, val_size=20, balanced_val=True, download=False)


def test_random_crop_flip_draws_every_window_of_torchvision_crop_and_flip_for_each_image():
    from torchvision.transforms.v2 import functional as TF

    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)  # noise: every window and mirror is distinct
    padded = TF.pad(image, [2], padding_mode="reflect")
    windows = {}
    for top in range(5):
        for left in range(5):
            crop = TF.crop(padded, top, left, 8, 8)
            windows[crop.numpy().tobytes()] = (top, left, False)
            windows[TF.horizontal_flip(crop).numpy().tobytes()] = (top, left, True)
    assert len(windows) == 50
    out = data.RandomCropFlip(2, flip=True)(image.expand(5000, 3, 8, 8).contiguous())
    drawn = [windows.get(x.numpy().tobytes()) for x in out]
    assert None not in drawn  # each output is one of torchvision's crops (mirrored or not) ...
    counts = torch.bincount(torch.tensor([(t * 5 + l) * 2 + f for t, l, f in drawn]), minlength=50)
    assert counts.min() > 50 and counts.max() < 150  # ... drawn for each image on its own, uniformly (mean 100)
    unflipped = data.RandomCropFlip(2, flip=False)(image.expand(500, 3, 8, 8).contiguous())
    assert not any(windows[x.numpy().tobytes()][2] for x in unflipped)
    assert data.RandomCropFlip(2, flip=True)(image).shape == image.shape  # one (C, H, W) image too


@pytest.mark.parametrize("augment", ["none", "crop_flip", "randaugment"])
def test_a_batch_is_transformed_in_one_call_where_the_transform_allows(fake_cifar_folders, augment, monkeypatch):
    root, _ = fake_cifar_folders
    loaders = data.cifar10_loaders(root, batch_size=4, val_size=6, augment=augment, resize=40, download=False)
    train_ds, test_ds = loaders.train.dataset, loaders.test.dataset
    assert train_ds.batched == (augment != "randaugment") and test_ds.batched
    per_image = torch.stack([test_ds[i][0] for i in range(len(test_ds))])
    x, y = next(iter(loaders.test))  # the evaluation transform: deterministic, the same maths in one call
    torch.testing.assert_close(x, per_image[:len(x)], atol=1e-6, rtol=0)
    assert torch.equal(y, test_ds.labels[:len(y)])
    calls = []
    monkeypatch.setattr(train_ds, "transform", lambda t: calls.append(t.shape) or t[..., :40, :40].float())
    next(iter(loaders.train))
    assert calls == ([(4, 3, 32, 32)] if augment != "randaugment" else [(3, 32, 32)] * 4)
