"""Reading data sets: CIFAR-10 and MNIST from disk (image folders, with a cache of the decoded images; the MNIST IDX
files) or from the network (torchvision's downloads, bounded in time), and single images from a path or URL. Each
split arrives as :class:`InMemoryImages`, one uint8 tensor; ``vitkit.data`` turns them into loaders.

A missing data set raises :class:`DataNotFoundError` naming the folder and the files expected there.
"""
from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torchvision

from vit_helpers import DataNotFoundError

__all__ = ["DataNotFoundError", "InMemoryImages", "default_data_root", "load_image_folder", "load_cifar10",
           "load_mnist", "load_image"]

_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte")


def default_data_root() -> str:
    """``$VIT_DATA_ROOT`` if set, else ``./data``."""
    return os.environ.get("VIT_DATA_ROOT", "./data")


class InMemoryImages(torch.utils.data.Dataset):
    """Images kept as one uint8 tensor ``(N, C, H, W)``; ``transform`` maps a uint8 ``(C, H, W)`` to a float
    tensor. Far faster than decoding a PIL image per item for small data sets such as MNIST and CIFAR-10."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], transform=None,
                 source: str = "", batched: bool = False):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}.")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels.")
        self.images, self.labels = images, labels.long()
        self.classes, self.transform, self.source = list(classes), transform, source
        # batched: the transform takes a whole (B, C, H, W) batch and draws each image's randomness on its own, so a
        # DataLoader fetches a batch in one call (__getitems__) instead of one Python call per image.
        self.batched = batched
        self.mean: tuple[float, ...] | None = None  # the normalisation the loaders applied (for plots)
        self.std: tuple[float, ...] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i]
        x = self.transform(x) if self.transform is not None else x.float().div(255)
        return x, int(self.labels[i])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        if not self.batched:
            return [self[i] for i in indices]
        index = torch.as_tensor(indices)
        xs = self.images[index]
        xs = self.transform(xs) if self.transform is not None else xs.float().div(255)
        return list(zip(xs, self.labels[index].tolist()))

    def subset(self, indices: torch.Tensor, transform=None, batched: bool = False) -> "InMemoryImages":
        """A new data set over ``indices`` (a copy of the selected images) with its own transform."""
        return InMemoryImages(self.images[indices], self.labels[indices], self.classes, transform, self.source,
                              batched)

    def jpeg_reencoded(self, quality: int) -> "InMemoryImages":
        """A copy with every image encoded as JPEG at ``quality`` and decoded again: one more round of a lossy copy's
        loss (the CIFAR-10 JPEG copy here was written at quality 75: its quantization tables are libjpeg's at 75), to
        measure what such a round costs."""
        import io

        from PIL import Image

        def round_trip(img: torch.Tensor) -> torch.Tensor:
            buffer = io.BytesIO()
            Image.fromarray(img.permute(1, 2, 0).squeeze(-1).numpy()).save(buffer, "JPEG", quality=quality)
            return torch.from_numpy(np.array(Image.open(buffer))).reshape(img.shape[1], img.shape[2], -1).permute(2, 0, 1)
        return InMemoryImages(torch.stack([round_trip(img) for img in self.images]), self.labels, self.classes,
                              self.transform, f"{self.source}, re-encoded once as JPEG at quality {quality}",
                              self.batched)


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
                          source=_folder_source(split_dir.parent))


def _folder_source(root: Path) -> str:
    """A record's data-copy line for image folders under ``root``."""
    return f"image folders {shown_path(root)} (JPEG/PNG copy)"


def shown_path(path: str | Path) -> str:
    """``path`` as a record may show it, without a machine's folders: a relative path as the caller gave it, unless it
    climbs two folders or more; that, or an absolute one, relative to the repository where it lies in it or beside it
    (``../shared/data``), else its last two parts after ``.../``. Links are not followed: the path reads as given."""
    path = Path(path)
    if not path.is_absolute() and path.parts[:2] != ("..", ".."):
        return path.as_posix()
    full = Path(os.path.abspath(path))
    try:
        rel = Path(os.path.relpath(full, Path(os.path.abspath(__file__)).parents[1]))
    except ValueError:  # on another drive
        rel = Path("..", "..")
    if rel.parts[:2] != ("..", ".."):  # in the repository, or one level up
        return rel.as_posix()
    return ".../" + "/".join(full.parts[-2:])


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
                key.update(f"{os.path.relpath(entry.path, root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    cache = _cache_dir()
    prefix = f"image-folders-{hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]}-"
    path = cache / f"{prefix}{key.hexdigest()[:12]}.pt" if cache is not None else None
    if path is not None and path.is_file():
        try:
            saved = torch.load(path, weights_only=True)
            return tuple(InMemoryImages(s["images"], s["labels"], s["classes"], source=_folder_source(root))
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
                                  source=f"torchvision CIFAR10 python batches at {shown_path(root)}"))
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
                                     source=f"MNIST IDX files at {shown_path(raw)}"))
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
        received = []

        def fetch():
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                received.append(response.read())

        try:
            _download_within(timeout_s, fetch)  # a server that trickles is cut off too, not only one that stalls
            data = received[0]
        except OSError as e:  # TimeoutError and URLError are OSErrors
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
