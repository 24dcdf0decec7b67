"""Plots (matplotlib is imported inside each function; each returns the Figure and can save it): attention maps
over images, map grids, training curves, image and patch grids, position-embedding similarity, confusion matrix, and
the data-size study's accuracy against size and validation-curve tails."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

import vit_helpers as vh
from vitkit.checks import check_number

__all__ = ["denormalize", "upsample_masks", "to_hwc", "attention_maps", "mask_grid", "training_curves", "image_grid",
           "patch_grid", "position_similarity", "confusion_counts", "confusion_matrix", "data_size", "curve_tails"]


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo ``Normalize(mean, std)``: ``(B, C, H, W)`` or ``(C, H, W)`` back to [0, 1]."""
    channels = x.shape[-3] if x.ndim >= 3 else None
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} values but the images {tuple(x.shape)} have "
                         f"{channels} channel(s); pass one value per channel (loader.dataset.mean/.std).")
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x * std_t + mean_t).clamp(0, 1)


def to_hwc(img: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W, 3) numpy for imshow."""
    img = img.detach().float().cpu()
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return img.permute(1, 2, 0).numpy()


def _finish(fig, save_path: str | Path | None, tight: bool = True):
    if tight:
        fig.tight_layout()
    if save_path is not None:
        Path(save_path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save_path, dpi=120, bbox_inches="tight")
    return fig


def upsample_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Rollout maps ``(B, h, w)`` -> ``(B, H, W)`` bilinearly upsampled, each scaled to [0, 1]."""
    if not isinstance(masks, torch.Tensor) or masks.ndim != 3:
        raise ValueError(f"masks must be a batch of maps (B, h, w), got "
                         f"{tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__}; for "
                         "one map use masks.unsqueeze(0).")
    m = F.interpolate(masks.detach().float()[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    lo = m.amin(dim=(1, 2), keepdim=True)
    hi = m.amax(dim=(1, 2), keepdim=True)
    return (m - lo) / (hi - lo).clamp_min(1e-12)


def _check_images(images, mean, std, titles=None, name: str = "titles") -> torch.Tensor:
    """The plots' shared input checks; returns the images in [0, 1] (denormalised when mean/std are given)."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a tensor batch (B, C, H, W), got {type(images).__name__}; stack a list "
                        "with torch.stack(images).")
    if images.ndim != 4:
        raise ValueError(f"images must be a batch (B, C, H, W), got {tuple(images.shape)}; add a batch dimension "
                         "with x.unsqueeze(0) for one image.")
    if images.shape[1] not in (1, 3) and images.shape[-1] in (1, 3):
        raise ValueError(f"images {tuple(images.shape)} look channels-last (B, H, W, C); the plots take (B, C, H, W): "
                         "use images.permute(0, 3, 1, 2).")
    if (mean is None) != (std is None):
        raise ValueError("pass both mean and std (the loaders' normalisation, e.g. loader.dataset.mean/.std) or "
                         "neither (images already in [0, 1]).")
    if mean is not None and (len(mean) != images.shape[1] or len(std) != images.shape[1]):
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} values but the images have {images.shape[1]} "
                         "channel(s).")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(titles)} {name} for {len(images)} images; pass one per image.")
    images = images.detach().float().cpu()
    return denormalize(images, mean, std) if mean is not None else images


def _check_masks(masks, n: int, name: str = "masks") -> torch.Tensor:
    """Maps (n, h, w) of finite numbers, as the explainers and rollout return them."""
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"{name} must be a tensor (B, h, w), got {type(masks).__name__}; stack a list with "
                        "torch.stack(masks).")
    if masks.ndim != 3 or len(masks) != n:
        raise ValueError(f"{name} has shape {tuple(masks.shape)}; expected ({n}, h, w): one map per image, the same B "
                         "as the images.")
    if not torch.isfinite(masks).all():
        raise ValueError(f"{name} hold NaN or inf values, which would draw blank panels; check the maps (e.g. a "
                         "model that diverged, or attentions that are not probabilities).")
    return masks.detach().float().cpu()


HEAT_CMAP = "inferno"  # perceptually uniform: equal steps of a map's value look like equal steps of colour
_SCALE_LABEL = "each map scaled: min 0, max 1"


def _map_colorbar(fig, axes, cmap: str) -> None:
    """One colour bar for every map of the figure: each map is min-max scaled on its own, so they share it."""
    import matplotlib as mpl

    bar = fig.colorbar(mpl.cm.ScalarMappable(mpl.colors.Normalize(0, 1), cmap), ax=axes, pad=0.01,
                       fraction=0.03, shrink=1.0 if axes.shape[0] == 1 else 0.8)
    bar.set_label(_SCALE_LABEL, fontsize=8)
    bar.ax.tick_params(labelsize=7)


def _overlay(img: np.ndarray, mask: torch.Tensor, colormap, alpha: float) -> np.ndarray:
    """Blend an (H, W, 3) image with a colour-mapped (H, W) mask in [0, 1]."""
    return (1 - alpha) * img + alpha * colormap(mask.numpy())[..., :3]


def attention_maps(images: torch.Tensor, masks: torch.Tensor, *, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None, titles: Sequence[str] | None = None,
                   per_row: int | None = None, alpha: float = 0.5, cmap: str = HEAT_CMAP,
                   suptitle: str | None = "Attention rollout", save_path: str | Path | None = None):
    """For each image: original | mask | overlay. ``images`` is a normalised batch ``(B, C, H, W)`` (pass
    ``mean``/``std`` to undo it) or already in [0, 1]; ``masks`` is ``(B, h, w)`` from :func:`attention_rollout`,
    upsampled to the image and scaled to [0, 1]. ``per_row`` triplets per figure row (default: 1 for up to
    3 images, else 4). One colour bar serves every mask (each is scaled to its own min and max)."""
    import matplotlib.pyplot as plt

    images = _check_images(images, mean, std, titles)
    masks = _check_masks(masks, len(images))
    if per_row is not None:
        check_number("per_row", per_row, low=1, integer=True, hint="It is the number of image triplets per row.")
    n = len(images)
    per_row = per_row or (1 if n <= 3 else min(4, n))
    rows = math.ceil(n / per_row)
    up = upsample_masks(masks.cpu(), tuple(images.shape[-2:]))
    colormap = plt.get_cmap(cmap)
    fig, axes = plt.subplots(rows, 3 * per_row, figsize=(2.0 * 3 * per_row, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, per_row)
        img = to_hwc(images[i])
        overlay = _overlay(img, up[i], colormap, alpha)
        name = titles[i] if titles is not None else f"#{i}"
        for j, (panel, label) in enumerate(((img, "original"), (up[i].numpy(), "mask"), (overlay, "overlay"))):
            ax = axes[r, 3 * c + j]
            ax.imshow(panel, cmap=cmap if j == 1 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"{name}: {label}" if j == 0 else label, fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    _map_colorbar(fig, axes, cmap)
    return _finish(fig, save_path, tight=False)


def mask_grid(images: torch.Tensor, columns: dict[str, torch.Tensor], *, mean: Sequence[float] | None = None,
              std: Sequence[float] | None = None, row_titles: Sequence[str] | None = None, alpha: float = 0.5,
              cmap: str = HEAT_CMAP, suptitle: str | None = None, save_path: str | Path | None = None):
    """One image per row: the original, then one overlay per entry of ``columns`` (name -> masks (B, h, w)),
    e.g. the rollout after each layer, or mean/max/min head fusion, side by side; one colour bar for all (each map
    is scaled to its own min and max)."""
    import matplotlib.pyplot as plt

    images = _check_images(images, mean, std, row_titles, "row_titles")
    n, k = len(images), len(columns)
    columns = {name: _check_masks(m, n, f"columns[{name!r}]") for name, m in columns.items()}
    colormap = plt.get_cmap(cmap)
    upsampled = {name: upsample_masks(m.cpu(), tuple(images.shape[-2:])) for name, m in columns.items()}
    fig, axes = plt.subplots(n, k + 1, figsize=(1.7 * (k + 1), 1.8 * n), squeeze=False)
    for i in range(n):
        img = to_hwc(images[i])
        axes[i, 0].imshow(img, interpolation="nearest")  # the pixels as they are (and light PNGs)
        axes[i, 0].set_title(row_titles[i] if row_titles is not None else "original", fontsize=8)
        for j, (name, masks) in enumerate(upsampled.items(), start=1):
            axes[i, j].imshow(_overlay(img, masks[i], colormap, alpha), interpolation="nearest")
            axes[i, j].set_title(name, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    _map_colorbar(fig, axes, cmap)
    return _finish(fig, save_path, tight=False)


def training_curves(history, title: str = "Training", save_path: str | Path | None = None):
    """Loss, accuracy (train and val, per epoch) and learning rate (per step) of the History that fit returns (or
    its ``to_dict()``, e.g. a record's ``history``)."""
    import matplotlib.pyplot as plt

    h = history.to_dict() if hasattr(history, "to_dict") else history
    if not isinstance(h, dict):
        raise TypeError(f"history must be the History that fit returns (or its to_dict()), got "
                        f"{type(history).__name__}.")
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        ax.plot(h["epoch"], h[f"train_{key}"], "o-", label="train")
        if h.get(f"val_{key}"):
            ax.plot(h["epoch"], h[f"val_{key}"], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{label} per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[2].plot(np.arange(1, len(h["lr"]) + 1), h["lr"])
    axes[2].set_xlabel("optimizer step")
    axes[2].set_ylabel("learning rate")
    axes[2].set_title("warmup + cosine schedule")
    axes[2].grid(alpha=0.3)
    fig.suptitle(title)
    return _finish(fig, save_path)


def image_grid(images: torch.Tensor, titles: Sequence[str] | None = None, *, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, ncols: int = 8, suptitle: str | None = None,
               save_path: str | Path | None = None):
    """A grid of images (normalised with ``mean``/``std``, or in [0, 1]) with a title each."""
    import matplotlib.pyplot as plt

    images = _check_images(images, mean, std, titles)
    check_number("ncols", ncols, low=1, integer=True)
    n = len(images)
    ncols = min(ncols, n)
    rows = math.ceil(n / ncols)
    # constrained layout keeps each row's titles clear of the row above (tight_layout let them overlap at 10 columns)
    fig, axes = plt.subplots(rows, ncols, figsize=(1.6 * ncols, 1.9 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        ax.imshow(to_hwc(images[i]), interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    return _finish(fig, save_path, tight=False)


def patch_grid(image: torch.Tensor, patch_size: int, *, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, save_path: str | Path | None = None):
    """One image with its patch grid drawn on it, and its patches laid out in token order."""
    import matplotlib.pyplot as plt

    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        raise ValueError(f"patch_grid shows one image (C, H, W), got "
                         f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}; pass "
                         "images[0] for the first of a batch.")
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1 or \
            image.shape[-1] % patch_size or image.shape[-2] % patch_size:
        raise ValueError(f"patch_size={patch_size!r} must be a positive int that divides the image's "
                         f"{image.shape[-2]}x{image.shape[-1]} pixels.")
    if mean is not None and std is not None:
        image = denormalize(image.detach().float().cpu(), mean, std)
    C, H, W = image.shape
    gh, gw = H // patch_size, W // patch_size
    patches = image.unfold(1, patch_size, patch_size).unfold(2, patch_size, patch_size)  # (C, gh, gw, P, P)
    patches = patches.permute(1, 2, 0, 3, 4).reshape(gh * gw, C, patch_size, patch_size)  # (N, C, P, P)
    fig = plt.figure(figsize=(10, 4.5))
    ax = fig.add_subplot(1, 2, 1)
    ax.imshow(to_hwc(image), extent=(0, W, H, 0))
    for k in range(1, gh):
        ax.axhline(k * patch_size, color="white", lw=0.8)
    for k in range(1, gw):
        ax.axvline(k * patch_size, color="white", lw=0.8)
    ax.set_title(f"{H}x{W} image, {patch_size}x{patch_size} patches -> {gh * gw} tokens")
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    sub = fig.add_gridspec(gh, gw, left=0.55, right=0.98, top=0.88, bottom=0.1, wspace=0.08, hspace=0.08)
    for idx in range(gh * gw):
        pax = fig.add_subplot(sub[idx // gw, idx % gw])
        pax.imshow(to_hwc(patches[idx]))
        pax.axis("off")
    fig.text(0.765, 0.93, "patches in token order (row-major)", ha="center")
    return _finish(fig, save_path, tight=False)  # the patch panel has its own grid spec


def position_similarity(model: vh.VisionTransformer, save_path: str | Path | None = None):
    """Cosine similarity of each patch's position embedding with all others (ViT paper, Fig. 7)."""
    import matplotlib.pyplot as plt

    if not isinstance(model, vh.VisionTransformer):
        raise TypeError(f"position_similarity draws a vit_helpers.VisionTransformer's position embeddings, got "
                        f"{type(model).__name__}; convert a HF ViT with vh.from_hf(model) first.")

    g = model.config.grid_size
    sim = vh.position_similarity(model)
    fig, axes = plt.subplots(g, g, figsize=(min(12, 1.0 * g + 2), min(12, 1.0 * g + 2)), squeeze=False)
    for r in range(g):
        for c in range(g):
            ax = axes[r, c]
            im = ax.imshow(sim[r, c].numpy(), vmin=-1, vmax=1, cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(str(r + 1), fontsize=8)
            if r == g - 1:
                ax.set_xlabel(str(c + 1), fontsize=8)
    fig.supxlabel("input patch column")
    fig.supylabel("input patch row")
    fig.suptitle("Position embedding similarity (cosine)")
    fig.colorbar(im, ax=axes, shrink=0.6, label="cosine similarity")
    return _finish(fig, save_path, tight=False)  # tight_layout fights the shared colour bar


def confusion_counts(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(num_classes, num_classes)`` counts; row = true class, column = predicted class."""
    preds, labels = torch.as_tensor(preds).reshape(-1).long(), torch.as_tensor(labels).reshape(-1).long()
    if preds.shape != labels.shape:
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels; pass one per image.")
    for name, values in (("predictions", preds), ("labels", labels)):
        if values.numel() and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} must be class indices in [0, {num_classes - 1}] for {num_classes} classes, got "
                             f"values from {int(values.min())} to {int(values.max())}; pass the classes the model "
                             "was trained on.")
    idx = labels * num_classes + preds
    return torch.bincount(idx, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
                     title: str = "Confusion matrix (test)", save_path: str | Path | None = None):
    """Counts per (true, predicted) class pair, with the numbers written in the cells. Only the mistakes are
    coloured, on their own scale: on the diagonal's scale every mistake would look white."""
    import matplotlib.pyplot as plt

    k = len(classes)
    cm = confusion_counts(preds, labels, k).numpy()
    mistakes = np.ma.masked_array(cm, mask=np.eye(k, dtype=bool))
    cmap = plt.get_cmap("Blues").with_extremes(bad="0.85")  # the diagonal (correct answers): grey, numbers in bold
    fig, ax = plt.subplots(figsize=(0.6 * k + 3, 0.6 * k + 2.5))
    im = ax.imshow(mistakes, cmap=cmap, vmin=0, vmax=max(int(mistakes.max() or 0), 1))
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    for i in range(k):
        for j in range(k):
            dark = i != j and cm[i, j] > mistakes.max() / 2
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    fontweight="bold" if i == j else "normal", color="white" if dark else "black")
    fig.colorbar(im, ax=ax, label="mistakes (test images); diagonal in grey: correct")
    return _finish(fig, save_path)


def _variant_colors(variants: Sequence[str]) -> dict[str, tuple]:
    import matplotlib.pyplot as plt

    return dict(zip(variants, plt.cm.tab10.colors))


def data_size(summary: dict | None, study_runs: Sequence[dict], runs: Sequence[dict], variants: Sequence[str], *,
              label: str = "this notebook's run", save_path: str | Path | None = None):
    """The data-size study in two panels. Left: mean test accuracy against training-set size, one line per variant
    with a band of one standard deviation over seeds and each seed as a dot (``summary`` from
    ``vitkit.study.summarize`` of ``study_runs``), and ``runs`` (e.g. a notebook's own, one seed) as hollow markers.
    Right: each variant minus the plain ViT (``"vit"``) at the sizes compared, with bars of twice the standard error
    of the difference. Runs are dicts with ``variant``, ``size``, ``test_acc``; the x axis is logarithmic."""
    import matplotlib.pyplot as plt

    if "vit" not in variants:
        raise ValueError(f"variants {list(variants)} lack 'vit': the right panel is each variant minus the plain ViT.")
    by_size = summary["by_size"] if summary else {}
    colors = _variant_colors(variants)
    fig, (ax, dx) = plt.subplots(1, 2, figsize=(13, 4.6), layout="constrained")
    for v in variants:
        sizes = sorted(int(n) for n, per in by_size.items() if v in per)
        if sizes:
            per = [by_size[str(n)][v] for n in sizes]
            mean = np.array([100 * p["mean"] for p in per])
            sd = np.array([100 * (p["std"] or 0.0) for p in per])
            seeds = "/".join(str(p["n"]) for p in per)
            ax.plot(sizes, mean, marker="o", color=colors[v], label=f"{v} (study, seeds per size: {seeds})")
            ax.fill_between(sizes, mean - sd, mean + sd, color=colors[v], alpha=0.2)
            own = [r for r in study_runs if r["variant"] == v]
            ax.scatter([r["size"] for r in own], [100 * r["test_acc"] for r in own], s=8, color=colors[v], alpha=0.6)
        mine = [r for r in runs if r["variant"] == v]
        ax.scatter([r["size"] for r in mine], [100 * r["test_acc"] for r in mine], s=70, facecolors="none",
                   edgecolors=colors[v], linewidths=1.5, zorder=3)
    if runs:
        ax.scatter([], [], s=70, facecolors="none", edgecolors="gray", label=label)
    ax.set(ylabel="test accuracy (%)", title="Accuracy against training-set size, one compute budget per size")
    ax.legend(fontsize=7)
    others = [v for v in variants if v != "vit"]
    for i, v in enumerate(others):
        key = "cnn_minus_vit" if v == "cnn" else "prior_gain"
        pts = [(n, summary[key][str(n)] if v == "cnn" else summary[key][str(n)].get(v))
               for n in (summary["compared_sizes"] if summary else [])]
        pts = [(n * 1.04 ** (i - (len(others) - 1) / 2), d) for n, d in pts if d]  # side by side, not overlapping
        if pts:
            dx.errorbar([n for n, _ in pts], [100 * d["difference"] for _, d in pts], capsize=3, marker="o",
                        color=colors[v], yerr=[100 * d["two_standard_errors"] for _, d in pts],
                        label=f"{v} minus the plain ViT")
    dx.axhline(0, color="gray", lw=1)
    dx.set(ylabel="difference of mean test accuracy (points)",
           title="What each prior (and the CNN) adds to the plain ViT; bars: 2 SE")
    if dx.get_legend_handles_labels()[0]:
        dx.legend(fontsize=7)
    ticks = sorted({int(n) for n in by_size} | {int(r["size"]) for r in runs})
    for a in (ax, dx):
        a.set_xscale("log")
        a.set_xticks(ticks, [f"{n:,}" for n in ticks])
        a.minorticks_off()
        a.set_xlabel("training images (class-balanced subset of CIFAR-10)")
        a.grid(alpha=0.3, which="both")
    return _finish(fig, save_path, tight=False)


def curve_tails(runs: Sequence[dict], variants: Sequence[str], *, limit: float, title: str,
                save_path: str | Path | None = None):
    """The second half of every run's validation curve (``val_acc`` per epoch), one panel per training-set size,
    on the share of the run's training; the last 20 % shaded, and the runs whose ``plateau_move_points`` reached
    ``limit`` either way drawn thick."""
    import matplotlib.pyplot as plt

    sizes = sorted({int(r["size"]) for r in runs})
    if not sizes:
        raise ValueError("no runs to draw: pass the study's runs or a notebook's own.")
    colors = _variant_colors(variants)
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.4 * len(sizes), 3.6), squeeze=False, layout="constrained")
    for ax, size in zip(axes[0], sizes):
        for r in [r for r in runs if int(r["size"]) == size]:
            n = len(r["val_acc"])
            x = np.arange(1, n + 1) / n
            thick = abs(r["plateau_move_points"] or 0) >= limit
            ax.plot(x[n // 2:], [100 * a for a in r["val_acc"][n // 2:]], color=colors[r["variant"]],
                    lw=2.2 if thick else 0.8, alpha=0.9)
        ax.axvspan(0.8, 1.0, color="gray", alpha=0.15)
        ax.set(title=f"{size:,} training images", xlabel="share of the run's training")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("validation accuracy (%)")
    axes[0, -1].legend(handles=[plt.Line2D([], [], color=colors[v], label=v) for v in variants]
                       + [plt.Line2D([], [], color="gray", lw=2.2, label=f"moved ≥ {limit} points")], fontsize=7)
    fig.suptitle(title)
    return _finish(fig, save_path, tight=False)
