"""Data: CIFAR-10 and MNIST as in-memory uint8 tensors, their train/val/test loaders, image folders, the MNIST IDX
reader, downloads that cannot hang, and single images from a path or URL.

A missing data set raises :class:`DataNotFoundError` naming the folder and the files expected there.
"""
from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torchvision
from torch import nn

from vit_helpers import DataNotFoundError
from vitkit.checks import check_number

__all__ = ["DataNotFoundError", "CIFAR10_MEAN", "CIFAR10_STD", "MNIST_MEAN", "MNIST_STD", "default_data_root",
           "InMemoryImages", "Loaders", "InvertUint8", "train_eval_loader", "load_image_folder", "load_cifar10",
           "load_mnist", "load_image", "cifar10_loaders", "mnist_loaders"]


CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)


CIFAR10_STD = (0.2470, 0.2435, 0.2616)


MNIST_MEAN = (0.1307,)


MNIST_STD = (0.3081,)


_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte")


def default_data_root() -> str:
    """``$VIT_DATA_ROOT`` if set, else ``./data``."""
    return os.environ.get("VIT_DATA_ROOT", "./data")


class InMemoryImages(torch.utils.data.Dataset):
    """Images kept as one uint8 tensor ``(N, C, H, W)``; ``transform`` maps a uint8 ``(C, H, W)`` to a float
    tensor. Far faster than decoding a PIL image per item for small data sets such as MNIST and CIFAR-10."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], transform=None,
                 source: str = ""):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}.")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels.")
        self.images, self.labels = images, labels.long()
        self.classes, self.transform, self.source = list(classes), transform, source
        self.mean: tuple[float, ...] | None = None  # the normalisation the loaders applied (for plots)
        self.std: tuple[float, ...] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i]
        x = self.transform(x) if self.transform is not None else x.float().div(255)
        return x, int(self.labels[i])

    def subset(self, indices: torch.Tensor, transform=None) -> "InMemoryImages":
        """A new data set over ``indices`` (a copy of the selected images) with its own transform."""
        return InMemoryImages(self.images[indices], self.labels[indices], self.classes, transform, self.source)


class Loaders(NamedTuple):
    """``train, val, test = loaders``; each ``loader.dataset`` has ``.classes``, ``.source``, ``.mean``, ``.std``."""
    train: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader
    test: torch.utils.data.DataLoader


class InvertUint8(nn.Module):
    """``255 - x`` on a uint8 image: dark digits on white. A module, not a lambda, so that DataLoader workers
    started with spawn or forkserver (macOS, Windows, Python 3.14 on Linux) can pickle the transform."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 255 - x


_AUGMENTS = {
    "cifar10": ("none", "crop_flip", "randaugment", "autoaugment"),
    "mnist": ("none", "crop", "affine"),
}


def _build_transform(train: bool, augment: str, mean, std, image_size: int, resize: int | None,
                     invert: bool = False):
    """uint8 (C, H, W) -> augmented, optionally inverted/resized, normalised float (C, H', W')."""
    from torchvision.transforms import v2

    ops = []
    if train and augment in ("crop", "crop_flip", "randaugment", "autoaugment"):
        ops.append(v2.RandomCrop(image_size, padding=image_size // 8, padding_mode="reflect"))
    if train and augment in ("crop_flip", "randaugment", "autoaugment"):
        ops.append(v2.RandomHorizontalFlip())
    if train and augment == "randaugment":
        ops.append(v2.RandAugment(num_ops=2, magnitude=9))
    if train and augment == "autoaugment":
        ops.append(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))
    if train and augment == "affine":
        ops.append(v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)))
    if invert:  # after augmentation, so padding and affine fills stay background-coloured
        ops.append(InvertUint8())
    ops.append(v2.ToDtype(torch.float32, scale=True))
    if resize is not None and resize != image_size:
        ops.append(v2.Resize((resize, resize), antialias=True))
    ops.append(v2.Normalize(mean, std))
    return v2.Compose(ops)


def _make_loaders(train_full: InMemoryImages, test: InMemoryImages, *, name: str, batch_size: int,
                  val_size: int, augment: str, mean, std, resize: int | None, invert: bool, seed: int,
                  train_limit: int | None, test_limit: int | None, num_workers: int | None) -> Loaders:
    n = len(train_full)
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be between 1 and {n - 1} (the training split has {n} images), got {val_size}.")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)  # seeded, deterministic train/val split
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    if train_limit is not None:
        train_idx = train_idx[:train_limit]
    test_idx = torch.arange(len(test))
    if test_limit is not None:
        test_idx = torch.randperm(len(test), generator=g)[:test_limit]
    size = train_full.images.shape[-1]
    train_tf = _build_transform(True, augment, mean, std, size, resize, invert)
    eval_tf = _build_transform(False, augment, mean, std, size, resize, invert)
    splits = [train_full.subset(train_idx, train_tf), train_full.subset(val_idx, eval_tf),
              test.subset(test_idx, eval_tf)]
    for ds in splits:
        ds.mean, ds.std = tuple(mean), tuple(std)
    if num_workers is None:
        num_workers = 0 if (os.cpu_count() or 1) <= 2 else min(8, (os.cpu_count() or 1) // 2)
    # Fresh workers each epoch (not persistent): each is seeded from the loader's generator, whose state a training
    # checkpoint holds, so that a resumed run draws exactly the augmentations of the run that never stopped.
    common = dict(num_workers=num_workers, pin_memory=torch.cuda.is_available())
    return Loaders(
        torch.utils.data.DataLoader(splits[0], batch_size=batch_size, shuffle=True,
                                    generator=torch.Generator().manual_seed(seed), **common),
        torch.utils.data.DataLoader(splits[1], batch_size=2 * batch_size, **common),
        torch.utils.data.DataLoader(splits[2], batch_size=2 * batch_size, **common))


def _check_loader_args(name: str, *, batch_size, val_size, augment, resize, mean, std, channels: int, seed,
                       train_limit, test_limit, num_workers, invert=False) -> None:
    """The loaders' arguments, checked before any file is read."""
    if augment not in _AUGMENTS[name]:
        raise ValueError(f"unknown augment {augment!r} for {name}; use one of {', '.join(_AUGMENTS[name])}.")
    check_number("batch_size", batch_size, low=1, integer=True)
    check_number("val_size", val_size, low=1, integer=True)
    check_number("seed", seed, low=0, integer=True)
    for key, value in (("resize", resize), ("train_limit", train_limit), ("test_limit", test_limit)):
        if value is not None:
            check_number(key, value, low=1, integer=True)
    if num_workers is not None:
        check_number("num_workers", num_workers, low=0, integer=True)
    for key, value in (("mean", mean), ("std", std)):
        if len(value) != channels:
            raise ValueError(f"{key} has {len(value)} value(s) but {name} images have {channels} channel(s); pass "
                             f"one value per channel.")
    if any(v <= 0 for v in std):
        raise ValueError(f"std must be > 0 per channel, got {tuple(std)}.")


def train_eval_loader(loaders: Loaders) -> torch.utils.data.DataLoader:
    """The training split with the evaluation transform (no augmentation), for whole-split train accuracy."""
    train, val = loaders.train.dataset, loaders.val.dataset
    ds = InMemoryImages(train.images, train.labels, train.classes, val.transform, train.source)  # shares memory
    ds.mean, ds.std = train.mean, train.std
    return torch.utils.data.DataLoader(ds, batch_size=loaders.val.batch_size, num_workers=loaders.val.num_workers)


def _class_folders(split_dir: Path) -> list[Path]:
    """Class sub-folders, sorted; hidden ones (``.ipynb_checkpoints``, ``.DS_Store``...) and ``__*`` are not classes."""
    if not split_dir.is_dir():
        return []
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def _find_image_folder_root(root: Path) -> Path | None:
    """``root`` or ``root/cifar10-jpeg`` if it holds ``train/<class>/`` and ``test/<class>/`` folders."""
    for candidate in (root, root / "cifar10-jpeg"):
        if _class_folders(candidate / "train") and _class_folders(candidate / "test"):
            return candidate
    return None


_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def load_image_folder(split_dir: str | Path, classes: Sequence[str] | None = None) -> InMemoryImages:
    """Decode every image of ``split_dir/<class>/*`` (JPEG/PNG) into one uint8 tensor, in sorted order.

    ``classes`` (e.g. the training split's) fixes the label order; a split whose class folders differ from
    it raises a ValueError naming the extra and the missing folders, instead of shifting labels.
    """
    from PIL import Image, UnidentifiedImageError

    split_dir = Path(split_dir)
    folders = [f.name for f in _class_folders(split_dir)]
    if not folders:
        raise DataNotFoundError(f"no class folders under {split_dir.resolve()}: expected {split_dir}/<class>/*.jpg "
                                "(one folder per class).")
    if classes is not None and sorted(classes) != folders:
        extra, missing = sorted(set(folders) - set(classes)), sorted(set(classes) - set(folders))
        raise ValueError(f"the class folders of {split_dir} differ from the training split's: extra "
                         f"{extra or 'none'}, missing {missing or 'none'}. Every split needs the same class "
                         "folders; remove or add folders so that they match.")
    classes = list(classes) if classes is not None else folders
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in (split_dir / name).iterdir()
                       if f.suffix.lower() in _IMAGE_SUFFIXES and not f.name.startswith("."))
        if not files:
            raise DataNotFoundError(f"class folder {split_dir / name} holds no .jpg/.png images.")
        for f in files:
            try:
                with Image.open(f) as im:
                    images.append(torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1))  # (H, W, 3) -> (3, H, W)
            except (UnidentifiedImageError, OSError) as e:
                raise ValueError(f"cannot decode {f} ({e}); delete or replace the file.") from e
            labels.append(label)
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        raise ValueError(f"images under {split_dir} differ in size ({sorted(shapes)[:3]}...); resize them first.")
    return InMemoryImages(torch.stack(images), torch.tensor(labels), classes,
                          source=f"image folders {split_dir.parent} (JPEG/PNG copy)")


class _socket_timeout:
    """Within the block, network reads that stall for ``seconds`` raise instead of hanging (torchvision's
    downloads open URLs without a timeout). Restores the previous default on exit."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __enter__(self):
        self.previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(self.seconds)

    def __exit__(self, *exc):
        socket.setdefaulttimeout(self.previous)


def _cache_dir() -> Path | None:
    """Where decoded image folders are kept: ``$VIT_CACHE_DIR`` (empty: no cache), else ``~/.cache/vitkit``."""
    env = os.environ.get("VIT_CACHE_DIR")
    if env == "":
        return None
    return Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vitkit"


def _cached_image_folders(root: Path) -> tuple[InMemoryImages, InMemoryImages]:
    """``root/train`` and ``root/test`` decoded, from a cache keyed by every file's name, size and modification
    time: decoding the 60,000 CIFAR-10 JPEGs takes about 10 s on a laptop core, loading the cache well under one."""
    import hashlib

    key = hashlib.sha1(str(root.resolve()).encode())
    stack = [str(root)]
    while stack:  # os.scandir: a quarter of the time of Path.rglob + stat on 60,000 files
        for entry in sorted(os.scandir(stack.pop()), key=lambda e: e.name):
            if entry.is_dir():
                stack.append(entry.path)
            else:
                st = entry.stat()
                key.update(f"{entry.path}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    cache = _cache_dir()
    prefix = f"image-folders-{hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]}-"
    path = cache / f"{prefix}{key.hexdigest()[:12]}.pt" if cache is not None else None
    if path is not None and path.is_file():
        try:
            saved = torch.load(path, weights_only=True)
            return tuple(InMemoryImages(s["images"], s["labels"], s["classes"], source=s["source"])
                         for s in (saved["train"], saved["test"]))
        except Exception:  # a damaged cache file is decoded again below and rewritten
            pass
    train = load_image_folder(root / "train")
    test = load_image_folder(root / "test", classes=train.classes)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            torch.save({name: {"images": s.images, "labels": s.labels, "classes": s.classes, "source": s.source}
                        for name, s in (("train", train), ("test", test))}, tmp)
            os.replace(tmp, path)  # atomic: parallel runs never read half a file
            for stale in cache.glob(f"{prefix}*.pt"):  # the same folders before a file changed
                if stale != path:
                    stale.unlink(missing_ok=True)
        except OSError:  # a read-only home: no cache, same result
            pass
    return train, test


def _download_within(seconds: float, fetch) -> None:
    """Run ``fetch`` (a torchvision download: every mirror and every file) and give up after ``seconds`` in all.
    Each connection also times out by itself when it stalls for a minute (or ``seconds``, if shorter), so an
    abandoned download ends too."""
    import threading

    errors: list[BaseException] = []

    def run():
        try:
            fetch()
        except BaseException as e:  # handed to the caller below
            errors.append(e)

    with _socket_timeout(min(seconds, 60.0)):
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(seconds)
    if worker.is_alive():
        raise TimeoutError(f"the download did not finish within download_timeout_s={seconds:g} s")
    if errors:
        raise errors[0]


def load_cifar10(root: str | Path | None = None, download: bool = True, timeout_s: float = 600.0
                 ) -> tuple[InMemoryImages, InMemoryImages]:
    """CIFAR-10 train and test splits as in-memory uint8 tensors.

    Looks for ``root/train/<class>/`` + ``root/test/<class>/`` image folders (also under
    ``root/cifar10-jpeg/``); otherwise uses torchvision's ``CIFAR10(root, download=download)``. A download (170 MB)
    that has not finished after ``timeout_s`` seconds in all fails with :class:`DataNotFoundError` instead of
    hanging.
    """
    root = Path(root if root is not None else default_data_root())
    folder_root = _find_image_folder_root(root)
    if folder_root is not None:
        return _cached_image_folders(folder_root)
    try:
        splits = []
        _download_within(timeout_s, lambda: splits.extend(
            torchvision.datasets.CIFAR10(str(root), train=t, download=download) for t in (True, False)))
    except Exception as e:  # offline, stalled, or download=False with nothing on disk
        raise DataNotFoundError(
            f"CIFAR-10 not found under {root.resolve()} and it could not be downloaded ({type(e).__name__}: {e}). "
            f"Put either torchvision's cifar-10-batches-py/ folder there, or image folders "
            f"train/<class>/*.jpg and test/<class>/*.jpg (directly or under cifar10-jpeg/); or point the "
            f"notebook's DATA_ROOT parameter (env VIT_DATA_ROOT) at the folder that holds them.") from e
    out = []
    for ds in splits:
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)
        out.append(InMemoryImages(images, torch.tensor(ds.targets), ds.classes,
                                  source=f"torchvision CIFAR10 python batches at {root}"))
    return out[0], out[1]


_IDX_MAGIC = {"images": 2051, "labels": 2049}


def _read_idx(path: Path, kind: str, count: int | None = None) -> torch.Tensor:
    """An MNIST IDX file (or its .gz) as a uint8 tensor, checked against its header."""
    import gzip

    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (EOFError, OSError) as e:  # a truncated or damaged .gz (gzip.BadGzipFile is an OSError)
        raise ValueError(f"{path} is truncated or corrupt ({type(e).__name__}: {e}); delete it and copy or download "
                         "it again.") from e
    ndim = 3 if kind == "images" else 1
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path} is truncated ({len(data)} bytes, not even an IDX header); delete it and copy "
                         "or download it again.")
    magic, *dims = (int.from_bytes(data[i:i + 4], "big") for i in range(0, header, 4))
    if magic != _IDX_MAGIC[kind]:
        raise ValueError(f"{path} is not an MNIST {kind} IDX file (magic number {magic}, expected "
                         f"{_IDX_MAGIC[kind]}); check which file is which.")
    expected = header + math.prod(dims)
    if len(data) != expected:
        raise ValueError(f"{path} is truncated or corrupt: {len(data):,} bytes, the header promises "
                         f"{expected:,} ({' x '.join(map(str, dims))}); delete it and copy or download it again.")
    if count is not None and dims[0] != count:
        raise ValueError(f"{path} holds {dims[0]} {kind} but its partner file holds {count}; the images and "
                         "labels files come from different splits.")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(dims)


def _mnist_file(raw: Path, name: str) -> Path | None:
    for candidate in (raw / name, raw / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_mnist(root: str | Path | None = None, download: bool = True, timeout_s: float = 60.0
               ) -> tuple[InMemoryImages, InMemoryImages]:
    """MNIST train and test splits (torchvision layout ``root/MNIST/raw/``) as in-memory uint8 tensors.

    Reads the IDX files, or their ``.gz`` files, and checks their sizes against their headers; if any is
    missing and ``download`` is set, torchvision downloads them first (all mirrors and files within ``timeout_s``
    seconds in all, or it fails instead of hanging). Missing files raise :class:`DataNotFoundError` naming the files and the folder.
    """
    root = Path(root if root is not None else default_data_root())
    raw = root / "MNIST" / "raw"
    if any(_mnist_file(raw, n) is None for n in _MNIST_FILES) and download:
        try:
            _download_within(timeout_s, lambda: torchvision.datasets.MNIST(str(root), train=True, download=True))
        except Exception as e:  # offline or stalled: report below which files are still missing
            download_error = f"{type(e).__name__}: {e}"
        else:
            download_error = ""
    else:
        download_error = "download=False"
    missing = [n for n in _MNIST_FILES if _mnist_file(raw, n) is None]
    if missing:
        raise DataNotFoundError(
            f"MNIST files missing in {raw.resolve()}: {', '.join(missing)} (or their .gz files), and they could "
            f"not be downloaded ({download_error}). Put the four IDX files (or the .gz files) there, or point the "
            f"notebook's DATA_ROOT parameter (env VIT_DATA_ROOT) at a folder holding MNIST/raw/.")
    classes = [str(i) for i in range(10)]
    splits = []
    for prefix in ("train", "t10k"):
        labels = _read_idx(_mnist_file(raw, f"{prefix}-labels-idx1-ubyte"), "labels")
        images = _read_idx(_mnist_file(raw, f"{prefix}-images-idx3-ubyte"), "images", count=len(labels))
        splits.append(InMemoryImages(images.unsqueeze(1).contiguous(), labels, classes,  # (N, 28, 28) -> (N, 1, 28, 28)
                                     source=f"MNIST IDX files at {raw}"))
    return splits[0], splits[1]


def load_image(source: str | Path, timeout_s: float = 30.0):
    """A PIL RGB image from a local path (``~`` expanded), a ``file://`` URL or an http(s) URL."""
    from urllib.parse import unquote, urlparse

    from PIL import Image

    if not isinstance(source, (str, Path)):
        raise TypeError(f"load_image takes a path or URL, got {type(source).__name__}; an image already in memory "
                        "needs no loading (a tensor (C, H, W) in [0, 1] goes to the model after normalising, or "
                        "torchvision.transforms.functional.to_pil_image(x) makes it a PIL image).")
    source = str(source)
    scheme = urlparse(source).scheme.lower()
    if scheme == "file":
        source = unquote(urlparse(source).path)
    elif scheme in ("http", "https"):
        import io
        import urllib.request

        request = urllib.request.Request(source, headers={"User-Agent": "vit-notebooks/1.0 (teaching notebooks)"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                data = response.read()
        except OSError as e:
            raise DataNotFoundError(f"could not download {source} ({e}); pass local image paths instead "
                                    "(the notebook's PHOTOS parameter).") from e
        try:
            return Image.open(io.BytesIO(data)).convert("RGB")
        except OSError as e:
            raise ValueError(f"{source} did not return an image ({e}); check the URL.") from e
    path = Path(source).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"no image file at {path.resolve()}; check the path (the notebook's PHOTOS parameter).")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError as e:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(f"{path} is not an image PIL can read ({e}); pass a JPEG or PNG file.") from e


def _loaders(name: str, load, channels: int, **settings) -> Loaders:
    """Check the loader settings (before any file is read), load the splits, then split and wrap them."""
    _check_loader_args(name, channels=channels, **settings)
    train, test = load()
    return _make_loaders(train, test, name=name, **settings)


def cifar10_loaders(root: str | Path | None = None, batch_size: int = 128, *, val_size: int = 5000,
                    augment: str = "none", resize: int | None = None, mean: Sequence[float] = CIFAR10_MEAN,
                    std: Sequence[float] = CIFAR10_STD, seed: int = 0, train_limit: int | None = None,
                    test_limit: int | None = None, num_workers: int | None = None, download: bool = True,
                    download_timeout_s: float = 600.0) -> Loaders:
    """CIFAR-10 train/val/test loaders. ``val_size`` images of the official training split (seeded) form the
    validation split; the official test split is the test split.

    augment: ``"none"``, ``"crop_flip"`` (random crop with 4-px reflect padding + horizontal flip),
    ``"randaugment"`` or ``"autoaugment"`` (crop + flip + RandAugment(2, 9) / AutoAugment's CIFAR-10 policy).
    ``resize`` upsamples (e.g. to 224 for a pretrained ViT); ``mean``/``std`` normalise (use the image
    processor's for a pretrained model). ``train_limit``/``test_limit`` take seeded subsets (smoke runs).
    """
    settings = dict(batch_size=batch_size, val_size=val_size, augment=augment, resize=resize, mean=mean, std=std,
                    invert=False, seed=seed, train_limit=train_limit, test_limit=test_limit, num_workers=num_workers)
    return _loaders("cifar10", lambda: load_cifar10(root, download, download_timeout_s), channels=3, **settings)


def mnist_loaders(root: str | Path | None = None, batch_size: int = 128, *, val_size: int = 5000,
                  invert: bool = False, augment: str = "none", mean: Sequence[float] | None = None,
                  std: Sequence[float] = MNIST_STD, seed: int = 0, train_limit: int | None = None,
                  test_limit: int | None = None, num_workers: int | None = None, download: bool = True,
                  download_timeout_s: float = 60.0) -> Loaders:
    """MNIST train/val/test loaders; ``invert=True`` gives dark digits on white (255 - pixel).

    augment: ``"none"``, ``"crop"`` (random crop with 3-px padding) or ``"affine"`` (rotation +-10 deg,
    shift +-10 %, scale 0.9-1.1). No flips: a mirrored digit is another symbol.
    """
    if mean is None:
        mean = tuple(1 - m for m in MNIST_MEAN) if invert else MNIST_MEAN
    settings = dict(batch_size=batch_size, val_size=val_size, augment=augment, resize=None, mean=mean, std=std,
                    invert=invert, seed=seed, train_limit=train_limit, test_limit=test_limit, num_workers=num_workers)
    return _loaders("mnist", lambda: load_mnist(root, download, download_timeout_s), channels=1, **settings)
