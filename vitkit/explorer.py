"""An attention explorer for notebooks (ipywidgets): pick a test image (or upload one), the method (raw attention,
rollout, gradient rollout), the layer, head fusion and discard ratio, and the query token (CLS, or a patch: by a
click where ``ipympl`` is installed, by row/column sliders everywhere) to see that token's attention over the image,
with the model's top-3. Works for ours, HF's and timm's ViTs through :mod:`vitkit.explain`. In a static viewer
(GitHub, nbviewer) the stored output is a still PNG of the same view.

    explorer = AttentionExplorer(model, test_images, class_names=classes, mean=MEAN, std=STD)
    explorer  # the last expression of a cell: the widget (and its still)
"""
from __future__ import annotations

import base64
import html
import contextlib
import io
from typing import Callable, Sequence

import ipywidgets as widgets
import torch
from torch import nn

import vit_helpers as vh
from vitkit.explain import ModelAttentions, attentions_and_gradients, gradient_rollout_matrix
from vitkit.plots import HEAT_CMAP, denormalize, to_hwc, upsample_masks

__all__ = ["METHODS", "attention_view", "AttentionExplorer"]

METHODS = ("raw attention", "rollout", "gradient rollout")


def attention_view(out: ModelAttentions, method: str, layer: int = -1, head_fusion: str = "mean",
                   discard_ratio: float = 0.0, token: int = 0, grads: Sequence[torch.Tensor] | None = None
                   ) -> torch.Tensor:
    """What token ``token`` (0: CLS; ``prefix + r * w + c``: patch (r, c)) attends to, per patch ``(B, h, w)``:
    its row of layer ``layer``'s attention (``"raw attention"``), of the rollout through layer ``layer``
    (``"rollout"``), or of the gradient-weighted rollout through it (``"gradient rollout"``, needs ``grads``
    from :func:`vitkit.explain.attentions_and_gradients`; head fusion and discard do not apply)."""
    depth = len(out.attentions)
    if isinstance(layer, bool) or not isinstance(layer, int) or not -depth <= layer < depth:
        raise ValueError(f"layer must be an int in [{-depth}, {depth - 1}] for this {depth}-layer model, got {layer!r}.")
    upto = layer % depth + 1  # layers 0..layer
    if method == "raw attention":
        return vh.cls_attention_map(out.attentions, layer, head_fusion, out.grid_size, out.num_prefix_tokens, token)
    if method == "rollout":
        R = vh.rollout_matrix(out.attentions[:upto], head_fusion, discard_ratio)  # (B, T, T)
    elif method == "gradient rollout":
        if grads is None:
            raise ValueError("gradient rollout needs grads: out, grads = explain.attentions_and_gradients(model, x).")
        R = gradient_rollout_matrix(out.attentions[:upto], grads[:upto])
    else:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(map(repr, METHODS))}.")
    T = R.shape[-1]
    if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < T:
        raise ValueError(f"token must be an int in [0, {T - 1}] (0: CLS), got {token!r}.")
    return vh.token_map(R[:, token], out.num_prefix_tokens, out.grid_size)


def _ipympl_canvas(fig):
    """An ipympl canvas widget for ``fig`` (clicks reach Python), or None where ipympl is not installed. The
    figure is made here, not through pyplot: the notebook's matplotlib backend is left as it is."""
    import matplotlib

    backend = matplotlib.get_backend()
    try:
        from ipympl.backend_nbagg import Canvas, FigureManager
    except ImportError:
        return None
    finally:
        if matplotlib.get_backend() != backend:  # importing ipympl makes itself pyplot's backend: every later
            matplotlib.use(backend)  # figure would be stored as a widget instead of a PNG
    canvas = Canvas(fig)
    FigureManager(canvas, 0)
    canvas.header_visible = canvas.toolbar_visible = canvas.footer_visible = False
    return canvas


class AttentionExplorer:
    """Widgets over one model and a batch of normalised images ``(N, C, H, W)``; see the module docstring.

    ``class_names``: a list, or a dict id -> name (HF's ``config.id2label``). ``mean``/``std`` undo the
    normalisation for display. ``preprocess``: PIL image -> ``(C, H, W)`` tensor, to accept uploads (None: no
    upload). ``interactive``: None uses ipympl when installed; False always draws a still image widget."""

    def __init__(self, model: nn.Module, images: torch.Tensor, *, class_names: Sequence[str] | dict,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 preprocess: Callable | None = None, interactive: bool | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module (ours, HF or timm ViT), got {type(model).__name__}.")
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or len(images) == 0:
            raise ValueError("images must be a non-empty batch (N, C, H, W) of normalised images, got "
                             f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}.")
        if (mean is None) != (std is None):
            raise ValueError("pass both mean and std (to undo the normalisation for display) or neither.")
        self.model, self.images, self.preprocess = model, images.detach().cpu(), preprocess
        self.names = dict(class_names) if isinstance(class_names, dict) else dict(enumerate(class_names))
        self.mean, self.std = mean, std
        self._cache: dict[int, tuple[ModelAttentions, tuple[torch.Tensor, ...]]] = {}
        self._holding = False
        first, _ = self._forward(0)
        self.depth, self.prefix, self.grid = len(first.attentions), first.num_prefix_tokens, first.grid_size
        self.controls = self._make_controls()
        self._make_figure(interactive)
        for name, control in self.controls.items():
            control.observe(self._on_upload if name == "upload" else self._on_change, names="value")
        self.message = widgets.HTML("")  # what went wrong in a callback (an exception there never reaches the cell)
        self.widget = widgets.VBox([widgets.HBox([self.controls[k] for k in row]) for row in self._ROWS]
                                   + [self.message, self.view])
        self._redraw()

    _ROWS = (("image", "upload"), ("method", "layer"), ("head_fusion", "discard_ratio"), ("query", "row", "column"))

    def _make_controls(self) -> dict[str, widgets.Widget]:
        h, w = self.grid
        style = {"description_width": "initial"}
        narrow = widgets.Layout(width="170px")
        return {
            "image": widgets.IntSlider(0, 0, len(self.images) - 1, description="image", style=style),
            "upload": widgets.FileUpload(accept="image/*", multiple=False, description="upload",
                                         disabled=self.preprocess is None),
            "method": widgets.Dropdown(options=METHODS, value="rollout", description="method"),
            # counted from 1, as the notebooks' figures count layers ("layers 1-6")
            "layer": widgets.IntSlider(self.depth, 1, self.depth, description="layer", style=style),
            "head_fusion": widgets.Dropdown(options=("mean", "max", "min"), description="heads", layout=narrow),
            "discard_ratio": widgets.FloatSlider(0.0, min=0.0, max=0.95, step=0.05, description="discard",
                                                 style=style),
            "query": widgets.Dropdown(options=("CLS", "patch"), description="query", layout=narrow),
            "row": widgets.IntSlider(h // 2, 0, h - 1, description="row", style=style),
            "column": widgets.IntSlider(w // 2, 0, w - 1, description="column", style=style),
        }

    def _make_figure(self, interactive: bool | None) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle

        self.figure = Figure(figsize=(7.2, 3.2), dpi=80)
        canvas = _ipympl_canvas(self.figure) if interactive is not False else None
        if canvas is None:
            FigureCanvasAgg(self.figure)
            self.view = widgets.Image(format="png")
        else:
            self.view = canvas
            canvas.mpl_connect("button_press_event", self._on_click)
        self.ax_image, self.ax_top = self.figure.subplots(1, 2, width_ratios=(1, 1.1))
        self.ax_image.set_axis_off()
        self.image_artist = self.ax_image.imshow(self._display_image(0))
        self.overlay = self.ax_image.imshow(torch.zeros(self.images.shape[-2:]).numpy(), cmap=HEAT_CMAP, alpha=0.45,
                                            vmin=0, vmax=1)
        self.marker = self.ax_image.add_patch(Rectangle((0, 0), 1, 1, fill=False, edgecolor="white", lw=2))

    def _display_image(self, index: int):
        img = self.images[index]
        return to_hwc(denormalize(img, self.mean, self.std) if self.mean is not None else img.clamp(0, 1))

    def _forward(self, index: int) -> tuple[ModelAttentions, tuple[torch.Tensor, ...]]:
        """Attentions and the gradients of the predicted class for image ``index`` (cached), in eval mode."""
        if index not in self._cache:
            device = next(self.model.parameters()).device
            out, grads = attentions_and_gradients(self.model, self.images[index:index + 1].to(device))
            out = ModelAttentions(out.logits.detach().cpu(), tuple(a.detach().cpu() for a in out.attentions),
                                  out.num_prefix_tokens, out.grid_size)
            self._cache[index] = out, tuple(g.cpu() for g in grads)
        return self._cache[index]

    def token(self) -> int:
        """The query token: 0 (CLS) or the selected patch's token index."""
        c = self.controls
        return 0 if c["query"].value == "CLS" else self.prefix + c["row"].value * self.grid[1] + c["column"].value

    def current(self) -> torch.Tensor:
        """The map shown now, ``(h, w)``, as :func:`attention_view` computes it from the controls."""
        c = self.controls
        out, grads = self._forward(c["image"].value)
        return attention_view(out, c["method"].value, c["layer"].value - 1, c["head_fusion"].value,
                              c["discard_ratio"].value, self.token(), grads)[0]

    def top3(self) -> list[tuple[str, float]]:
        probs = self._forward(self.controls["image"].value)[0].logits.float().softmax(-1)[0]
        top = probs.topk(min(3, len(probs)))
        return [(str(self.names.get(int(i), int(i))), float(p)) for p, i in zip(top.values, top.indices)]

    def _redraw(self) -> None:
        c = self.controls
        c["head_fusion"].disabled = c["method"].value == "gradient rollout"
        c["discard_ratio"].disabled = c["method"].value != "rollout"
        c["row"].disabled = c["column"].disabled = c["query"].value == "CLS"
        H, W = self.images.shape[-2:]
        self.image_artist.set_data(self._display_image(c["image"].value))
        self.overlay.set_data(upsample_masks(self.current()[None], (H, W))[0].numpy())
        ph, pw = H / self.grid[0], W / self.grid[1]
        self.marker.set_visible(c["query"].value == "patch")
        self.marker.set_bounds(c["column"].value * pw - 0.5, c["row"].value * ph - 0.5, pw, ph)
        query = "CLS" if c["query"].value == "CLS" else f"patch ({c['row'].value}, {c['column'].value})"
        layers = (f"layer {c['layer'].value}" if c["method"].value == "raw attention"
                  else f"layers 1-{c['layer'].value}")
        self.ax_image.set_title(f"{c['method'].value}, {layers} of {self.depth}: {query}", fontsize=9)
        self._draw_top3()
        if isinstance(self.view, widgets.Image):
            self.view.value = self.still()
        else:
            self.view.draw_idle()

    def _draw_top3(self) -> None:
        ax, top = self.ax_top, self.top3()
        ax.clear()
        ax.barh(range(len(top))[::-1], [p for _, p in top], color="tab:blue")
        ax.set_yticks(range(len(top))[::-1], [name.split(",")[0][:22] for name, _ in top], fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_xlabel("probability", fontsize=8)
        ax.set_title(f"prediction: {top[0][0].split(',')[0][:22]} ({top[0][1]:.0%})", fontsize=9)
        self.figure.tight_layout()

    @contextlib.contextmanager
    def _hold(self):
        """Change several controls with one redraw."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        self._redraw()

    def _on_change(self, change=None) -> None:
        if not self._holding:
            self._redraw()

    def _on_click(self, event) -> None:
        """A click on the image selects that patch as the query."""
        if event.inaxes is not self.ax_image or event.xdata is None:
            return
        H, W = self.images.shape[-2:]
        row = min(int((event.ydata + 0.5) / (H / self.grid[0])), self.grid[0] - 1)
        column = min(int((event.xdata + 0.5) / (W / self.grid[1])), self.grid[1] - 1)
        with self._hold():
            self.controls["query"].value = "patch"
            self.controls["row"].value, self.controls["column"].value = max(row, 0), max(column, 0)

    MAX_UPLOAD_PIXELS = 40_000_000  # a photo is a few megapixels; a "decompression bomb" claims billions

    def _on_upload(self, change) -> None:
        """An uploaded image joins the batch (through ``preprocess``) and is shown; a file that is not one is named
        in the explorer's message line, and nothing else changes."""
        files = change["new"]
        if not files:
            return
        entry = files[0] if isinstance(files, (list, tuple)) else next(iter(files.values()))
        name = entry.get("name", "the upload") if isinstance(entry, dict) else "the upload"
        try:
            x = self._decode(bytes(entry["content"]), name)
        except ValueError as e:
            self.message.value = f"<b>upload:</b> {html.escape(str(e))}"
            return
        self.message.value = ""
        self.images = torch.cat([self.images, x[None].cpu()])
        with self._hold():
            self.controls["image"].max = len(self.images) - 1
            self.controls["image"].value = len(self.images) - 1

    def _decode(self, content: bytes, name: str) -> torch.Tensor:
        """The uploaded file as a preprocessed image, or a ValueError saying why not."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(content)) as im:
                if im.width * im.height > self.MAX_UPLOAD_PIXELS:
                    raise ValueError(f"{name} is {im.width}x{im.height} pixels, more than the "
                                     f"{self.MAX_UPLOAD_PIXELS:,} an upload may have; resize it first.")
                rgb = im.convert("RGB")
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as e:
            raise ValueError(f"{name} is not an image this explorer can read ({type(e).__name__}); upload a PNG or "
                             "JPEG photo.") from None
        x = self.preprocess(rgb)
        if tuple(x.shape) != tuple(self.images.shape[1:]):
            raise ValueError(f"preprocess returned {tuple(x.shape)}, the explorer's images are "
                             f"{tuple(self.images.shape[1:])}; make it resize and normalise to that.")
        return x

    def still(self) -> bytes:
        """The current view as PNG bytes."""
        buf = io.BytesIO()
        self.figure.savefig(buf, format="png")
        return buf.getvalue()

    def _repr_mimebundle_(self, **kwargs):
        """The widget for Jupyter, with a still PNG of the same view for viewers that cannot run widgets."""
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["image/png"] = base64.b64encode(self.still()).decode()
        return bundle
