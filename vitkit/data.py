"""Data: CIFAR-10 and MNIST train/val/test loaders (seeded split, augmentation, normalisation, inversion) over the
in-memory splits that ``vitkit.sources`` reads; re-exports its loading functions, so ``data.load_cifar10`` etc. work.

A missing data set raises :class:`DataNotFoundError` naming the folder and the files expected there.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.checks import check_number
from vitkit.sources import (DataNotFoundError, InMemoryImages, default_data_root, load_cifar10, load_image,
                            load_image_folder, load_mnist)

__all__ = ["DataNotFoundError", "CIFAR10_MEAN", "CIFAR10_STD", "MNIST_MEAN", "MNIST_STD", "default_data_root",
           "InMemoryImages", "Loaders", "InvertUint8", "RandomCropFlip", "train_eval_loader", "load_image_folder",
           "load_cifar10", "load_mnist", "load_image", "cifar10_loaders", "mnist_loaders"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


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


class RandomCropFlip(nn.Module):
    """torchvision's ``RandomCrop(size, padding, padding_mode="reflect")`` and, with ``flip``,
    ``RandomHorizontalFlip()``, drawn for every image of a uint8 batch ``(B, C, H, W)`` on its own (a single
    ``(C, H, W)`` image works too), each crop the image's own size: the same distribution, in one padded gather for
    the whole batch instead of two torchvision calls per image."""

    def __init__(self, padding: int, flip: bool):
        super().__init__()
        self.padding, self.flip = padding, flip

    def extra_repr(self) -> str:  # part of a checkpoint's identity: a resumed run must draw the same augmentation
        return f"padding={self.padding}, flip={self.flip}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = x.ndim == 3
        x = x[None] if single else x
        b, _, h, w = x.shape
        p = self.padding
        windows = F.pad(x, (p, p, p, p), mode="reflect").unfold(2, h, 1).unfold(3, w, 1)  # (B, C, 2p+1, 2p+1, H, W)
        top, left = torch.randint(0, 2 * p + 1, (2, b), device=x.device)
        out = windows[torch.arange(b, device=x.device), :, top, left]  # each image's own window: (B, C, H, W)
        if self.flip:
            mirror = torch.rand(b, device=x.device) < 0.5
            out[mirror] = out[mirror].flip(-1)
        return out[0] if single else out


_AUGMENTS = {
    "cifar10": ("none", "crop_flip", "randaugment", "autoaugment"),
    "mnist": ("none", "crop", "affine"),
}


def _build_transform(train: bool, augment: str, mean, std, image_size: int, resize: int | None,
                     invert: bool = False):
    """uint8 (C, H, W) or (B, C, H, W) -> augmented, optionally inverted/resized, normalised float of the same rank."""
    from torchvision.transforms import v2

    ops = []
    if train and augment in ("crop", "crop_flip", "randaugment", "autoaugment"):
        ops.append(RandomCropFlip(image_size // 8, flip=augment != "crop"))
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


def _split(labels: torch.Tensor, val_size: int, balanced: bool, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (validation, training) indices. ``balanced``: ``val_size // classes`` images of every class (the
    remainder one each from the first classes), so that a small validation split is not skewed by chance."""
    perm = torch.randperm(len(labels), generator=g)
    if not balanced:
        return perm[:val_size], perm[val_size:]
    classes = labels.unique().tolist()
    shuffled = labels[perm]
    picked = []
    for i, c in enumerate(classes):
        share = val_size // len(classes) + (i < val_size % len(classes))
        mine = perm[shuffled == c]
        if share > len(mine):
            raise ValueError(f"balanced_val: class {c} has {len(mine)} images, fewer than its share {share} of "
                             f"val_size={val_size}; lower val_size or pass balanced_val=False.")
        picked.append(mine[:share])
    val = torch.cat(picked)
    is_val = torch.zeros(len(labels), dtype=torch.bool)
    is_val[val] = True
    return val[torch.randperm(len(val), generator=g)], perm[~is_val[perm]]


def _make_loaders(train_full: InMemoryImages, test: InMemoryImages, *, batch_size: int,
                  val_size: int, balanced_val: bool, augment: str, mean, std, resize: int | None, invert: bool,
                  seed: int, train_limit: int | None, test_limit: int | None, num_workers: int | None) -> Loaders:
    n = len(train_full)
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be between 1 and {n - 1} (the training split has {n} images), got {val_size}.")
    g = torch.Generator().manual_seed(seed)
    val_idx, train_idx = _split(train_full.labels, val_size, balanced_val, g)  # seeded, deterministic
    if train_limit is not None:
        train_idx = train_idx[:train_limit]
    test_idx = torch.arange(len(test))
    if test_limit is not None:
        test_idx = torch.randperm(len(test), generator=g)[:test_limit]
    size = train_full.images.shape[-1]
    train_tf = _build_transform(True, augment, mean, std, size, resize, invert)
    eval_tf = _build_transform(False, augment, mean, std, size, resize, invert)
    # torchvision's RandAugment, AutoAugment and RandomAffine draw one set of parameters for a whole batch: per image
    per_image = augment in ("randaugment", "autoaugment", "affine")
    splits = [train_full.subset(train_idx, train_tf, batched=not per_image),
              train_full.subset(val_idx, eval_tf, batched=True), test.subset(test_idx, eval_tf, batched=True)]
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
                       train_limit, test_limit, num_workers, invert=False, root=None, balanced_val=False) -> None:
    """The loaders' arguments, checked before any file is read."""
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a folder path (str or Path), got {type(root).__name__} ({root!r}).")
    if augment not in _AUGMENTS[name]:
        raise ValueError(f"unknown augment {augment!r} for {name}; use one of {', '.join(_AUGMENTS[name])}.")
    check_number("batch_size", batch_size, low=1, integer=True)
    check_number("val_size", val_size, low=1, integer=True)
    check_number("seed", seed, low=0, integer=True)
    if not isinstance(balanced_val, bool):
        raise TypeError(f"balanced_val must be True or False, got {balanced_val!r}.")
    for key, value in (("resize", resize), ("train_limit", train_limit), ("test_limit", test_limit)):
        if value is not None:
            check_number(key, value, low=1, integer=True)
    if num_workers is not None:
        check_number("num_workers", num_workers, low=0, integer=True)
    for key, value in (("mean", mean), ("std", std)):
        if not isinstance(value, (tuple, list)):
            raise TypeError(f"{key} must be a tuple with one value per channel, e.g. ({value},) * {channels}; got "
                            f"{type(value).__name__} ({value!r}).")
        if len(value) != channels:
            raise ValueError(f"{key} has {len(value)} value(s) but {name} images have {channels} channel(s); pass "
                             f"one value per channel.")
    if any(v <= 0 for v in std):
        raise ValueError(f"std must be > 0 per channel, got {tuple(std)}.")


def train_eval_loader(loaders: Loaders) -> torch.utils.data.DataLoader:
    """The training split with the evaluation transform (no augmentation), for whole-split train accuracy."""
    train, val = loaders.train.dataset, loaders.val.dataset
    ds = InMemoryImages(train.images, train.labels, train.classes, val.transform, train.source,  # shares memory
                        val.batched)
    ds.mean, ds.std = train.mean, train.std
    return torch.utils.data.DataLoader(ds, batch_size=loaders.val.batch_size, num_workers=loaders.val.num_workers)


def _loaders(name: str, load, channels: int, root, **settings) -> Loaders:
    """Check the loader settings (before any file is read), load the splits, then split and wrap them."""
    _check_loader_args(name, channels=channels, root=root, **settings)
    train, test = load()
    return _make_loaders(train, test, **settings)


def cifar10_loaders(root: str | Path | None = None, batch_size: int = 128, *, val_size: int = 5000,
                    balanced_val: bool = False, augment: str = "none", resize: int | None = None, mean: Sequence[float] = CIFAR10_MEAN,
                    std: Sequence[float] = CIFAR10_STD, seed: int = 0, train_limit: int | None = None,
                    test_limit: int | None = None, num_workers: int | None = None, download: bool = True,
                    download_timeout_s: float = 600.0, jpeg_quality: int | None = None) -> Loaders:
    """CIFAR-10 train/val/test loaders. ``val_size`` images of the official training split (seeded; with
    ``balanced_val``, as many of each class) form the validation split; the official test split is the test split.

    augment: ``"none"``, ``"crop_flip"`` (random crop with 4-px reflect padding + horizontal flip),
    ``"randaugment"`` or ``"autoaugment"`` (crop + flip + RandAugment(2, 9) / AutoAugment's CIFAR-10 policy).
    ``resize`` upsamples (e.g. to 224 for a pretrained ViT); ``mean``/``std`` normalise (use the image
    processor's for a pretrained model). ``train_limit``/``test_limit`` take seeded subsets (smoke runs).
    ``jpeg_quality`` re-encodes every image once as JPEG at that quality (1-100) when loaded: what one more round of
    a lossy copy costs (a proxy for what the JPEG copy itself costs against the original batches).
    """
    if jpeg_quality is not None:
        check_number("jpeg_quality", jpeg_quality, low=1, high=100, integer=True)
    settings = dict(batch_size=batch_size, val_size=val_size, balanced_val=balanced_val, augment=augment,
                    resize=resize, mean=mean, std=std, invert=False, seed=seed, train_limit=train_limit, test_limit=test_limit, num_workers=num_workers)

    def load():
        splits = load_cifar10(root, download, download_timeout_s)
        return splits if jpeg_quality is None else tuple(split.jpeg_reencoded(jpeg_quality) for split in splits)
    return _loaders("cifar10", load, 3, root, **settings)


def mnist_loaders(root: str | Path | None = None, batch_size: int = 128, *, val_size: int = 5000,
                  balanced_val: bool = False, invert: bool = False, augment: str = "none", mean: Sequence[float] | None = None,
                  std: Sequence[float] = MNIST_STD, seed: int = 0, train_limit: int | None = None,
                  test_limit: int | None = None, num_workers: int | None = None, download: bool = True,
                  download_timeout_s: float = 60.0) -> Loaders:
    """MNIST train/val/test loaders; ``invert=True`` gives dark digits on white (255 - pixel). ``val_size``
    images of the training split (seeded; with ``balanced_val``, as many of each class) form the validation split.

    augment: ``"none"``, ``"crop"`` (random crop with 3-px padding) or ``"affine"`` (rotation +-10 deg,
    shift +-10 %, scale 0.9-1.1). No flips: a mirrored digit is another symbol.
    """
    if mean is None:
        mean = tuple(1 - m for m in MNIST_MEAN) if invert else MNIST_MEAN
    settings = dict(batch_size=batch_size, val_size=val_size, balanced_val=balanced_val, augment=augment,
                    resize=None, mean=mean, std=std, invert=invert, seed=seed, train_limit=train_limit, test_limit=test_limit, num_workers=num_workers)
    return _loaders("mnist", lambda: load_mnist(root, download, download_timeout_s), 1, root, **settings)
