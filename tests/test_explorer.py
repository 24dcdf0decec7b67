"""The attention explorer driven from Python, without a browser: change a control, check that the map it shows
is the one the maths gives (rollout, raw attention, gradient rollout, a patch's own row) and that the figure's
data follows; clicks, uploads, the still for static viewers; ours, HF's and timm's models."""
import base64
import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import vit_helpers as vh
from vitkit import explain
from vitkit.explorer import AttentionExplorer, attention_view
from vitkit.plots import upsample_masks
from conftest import ROOT

pytest.importorskip("ipywidgets")
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def tiny():
    torch.manual_seed(0)
    return vh.VisionTransformer(image_size=16, patch_size=4, in_channels=3, num_classes=5, dim=16, depth=3, heads=2,
                                mlp_dim=32).eval()


@pytest.fixture(params=[None, False], ids=["ipympl-or-still", "still"])
def explorer(request):
    torch.manual_seed(1)
    return AttentionExplorer(tiny(), torch.randn(3, 3, 16, 16), class_names=list("abcde"), mean=MEAN, std=STD,
                             interactive=request.param)


def _attn(model, x):
    with torch.no_grad():
        return model(x, return_attentions=True)[1]


def test_default_view_is_the_cls_rollout_and_the_figure_shows_it(explorer):
    x = explorer.images[:1]
    torch.testing.assert_close(explorer.current(), explain.explain_rollout(explorer.model, x)[0])
    shown = torch.as_tensor(explorer.overlay.get_array())
    torch.testing.assert_close(shown, upsample_masks(explorer.current()[None], (16, 16))[0])


def test_each_control_changes_the_map_as_the_maths_says(explorer):
    c, model = explorer.controls, explorer.model
    x = explorer.images[1:2]
    c["image"].value = 1
    c["method"].value = "raw attention"
    c["layer"].value = 1  # the slider counts layers from 1
    before = torch.as_tensor(explorer.overlay.get_array()).clone()
    torch.testing.assert_close(explorer.current(), vh.cls_attention_map(_attn(model, x), layer=0)[0])
    c["query"].value, c["row"].value, c["column"].value = "patch", 2, 3
    token = 1 + 2 * 4 + 3
    torch.testing.assert_close(explorer.current(), _attn(model, x)[0][0, :, token, 1:].mean(0).reshape(4, 4))
    assert not torch.allclose(torch.as_tensor(explorer.overlay.get_array()), before)  # the figure followed
    assert explorer.marker.get_visible() and explorer.marker.get_x() == 3 * 4 - 0.5
    c["method"].value, c["layer"].value, c["head_fusion"].value, c["discard_ratio"].value = "rollout", 2, "max", 0.5
    expected = vh.rollout_matrix(_attn(model, x)[:2], "max", 0.5)[0, token, 1:].reshape(4, 4)
    torch.testing.assert_close(explorer.current(), expected)
    c["method"].value, c["query"].value, c["layer"].value = "gradient rollout", "CLS", 3
    torch.testing.assert_close(explorer.current(), explain.explain_gradient_rollout(model, x)[0])
    assert c["head_fusion"].disabled and c["discard_ratio"].disabled and c["row"].disabled


def test_the_prediction_and_top3_follow_the_image(explorer):
    explorer.controls["image"].value = 2
    probs = explorer.model(explorer.images[2:3]).softmax(-1)[0]
    top = probs.topk(3)
    assert [name for name, _ in explorer.top3()] == ["abcde"[i] for i in top.indices]
    bars = sorted((b.get_width() for b in explorer.ax_top.patches), reverse=True)
    torch.testing.assert_close(torch.tensor(bars, dtype=torch.float32), top.values.detach(), rtol=1e-5, atol=1e-6)
    assert explorer.ax_top.get_title().startswith(f"prediction: {'abcde'[top.indices[0]]}")


def test_a_click_on_the_image_selects_that_patch(explorer):
    explorer._on_click(SimpleNamespace(inaxes=explorer.ax_image, xdata=13.2, ydata=5.0))  # pixel (x, y)
    c = explorer.controls
    assert (c["query"].value, c["row"].value, c["column"].value) == ("patch", 1, 3)
    assert explorer.token() == 1 + 1 * 4 + 3
    explorer._on_click(SimpleNamespace(inaxes=explorer.ax_top, xdata=0.5, ydata=0.5))  # elsewhere: nothing
    assert (c["row"].value, c["column"].value) == (1, 3)


def upload(ex, name, content: bytes) -> None:
    """What the browser does: the upload widget's value becomes the file (ipywidgets 8's layout)."""
    ex.controls["upload"].value = ({"name": name, "type": "image/png", "size": len(content),
                                    "content": memoryview(content),
                                    "last_modified": __import__("datetime").datetime(2026, 1, 1)},)


def test_an_upload_joins_the_images_and_is_shown():
    from PIL import Image

    def preprocess(pil):
        x = torch.from_numpy(np.asarray(pil.resize((16, 16)), dtype=np.float32)).permute(2, 0, 1) / 255
        return (x - 0.5) / 0.25

    ex = AttentionExplorer(tiny(), torch.randn(2, 3, 16, 16), class_names=list("abcde"), mean=MEAN, std=STD,
                           preprocess=preprocess, interactive=False)
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(buf, format="PNG")
    upload(ex, "red.png", buf.getvalue())
    assert len(ex.images) == 3 and ex.controls["image"].value == 2 and ex.controls["image"].max == 2
    torch.testing.assert_close(ex.current(), explain.explain_rollout(ex.model, ex.images[2:3])[0])
    no_upload = AttentionExplorer(tiny(), torch.randn(2, 3, 16, 16), class_names=list("abcde"), interactive=False)
    assert no_upload.controls["upload"].disabled


def test_the_stored_output_has_the_widget_and_a_still_of_the_same_view():
    ex = AttentionExplorer(tiny(), torch.randn(2, 3, 16, 16), class_names=list("abcde"), interactive=False)
    bundle = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    png = base64.b64decode(bundle["image/png"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png == ex.view.value  # the still is what the widget shows
    ex.controls["layer"].value = 1
    assert ex.view.value != png


def test_hf_and_timm_models_through_the_same_explainers():
    transformers = pytest.importorskip("transformers")
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    cfg = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=32, num_labels=5)
    torch.manual_seed(0)
    hf = transformers.ViTForImageClassification(cfg).eval()
    hf.set_attn_implementation("eager")
    timm_model = timm_vit.VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2,
                                            num_classes=5, reg_tokens=2).eval()
    x = torch.randn(2, 3, 16, 16)
    for model in (hf, timm_model):
        ex = AttentionExplorer(model, x, class_names=list("abcde"), interactive=False)
        torch.testing.assert_close(ex.current(), explain.explain_rollout(model, x[:1])[0])
        ex.controls["method"].value = "gradient rollout"
        torch.testing.assert_close(ex.current(), explain.explain_gradient_rollout(model, x[:1])[0])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"images must be a non-empty batch \(N, C, H, W\)"):
        AttentionExplorer(tiny(), torch.randn(3, 16, 16), class_names=list("abcde"))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        AttentionExplorer("vit", torch.randn(1, 3, 16, 16), class_names=list("abcde"))
    with pytest.raises(ValueError, match="pass both mean and std"):
        AttentionExplorer(tiny(), torch.randn(1, 3, 16, 16), class_names=list("abcde"), mean=MEAN)
    out = explain.forward_with_attentions(tiny(), torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="unknown method 'grad'"):
        attention_view(out, "grad")
    with pytest.raises(ValueError, match=r"layer must be an int in \[-3, 2\]"):
        attention_view(out, "rollout", layer=3)
    with pytest.raises(ValueError, match="gradient rollout needs grads"):
        attention_view(out, "gradient rollout")
    with pytest.raises(ValueError, match=r"token must be an int in \[0, 16\]"):
        attention_view(out, "raw attention", token=17)


def test_an_upload_that_is_not_an_image_or_is_too_large_is_named_in_the_widget():
    from PIL import Image

    ex = AttentionExplorer(tiny(), torch.randn(2, 3, 16, 16), class_names=list("abcde"), mean=MEAN, std=STD,
                           preprocess=lambda pil: torch.zeros(3, 16, 16), interactive=False)
    upload(ex, "notes.txt", b"not an image at all")
    assert "notes.txt is not an image this explorer can read" in ex.message.value and len(ex.images) == 2
    ex.MAX_UPLOAD_PIXELS = 1000  # as a decompression bomb claims far more pixels than any photo has
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(buf, format="PNG")
    upload(ex, "big.png", buf.getvalue())
    assert "big.png is 40x30 pixels, more than the 1,000 an upload may have" in ex.message.value
    assert len(ex.images) == 2 and ex.controls["image"].max == 1


def test_opening_the_explorer_leaves_the_notebooks_figure_backend_as_it_was():
    """Importing ipympl makes it pyplot's backend; the explorer puts the old one back, so that the figures drawn
    after it are still stored as PNGs (a fresh process: ipympl switches only on its first import)."""
    import subprocess
    import sys

    pytest.importorskip("ipympl")
    code = ("import matplotlib; matplotlib.use('agg'); import torch, vit_helpers as vh; "
            "from vitkit.explorer import AttentionExplorer; "
            "m = vh.VisionTransformer(image_size=16, patch_size=4, in_channels=1, num_classes=3, dim=16, depth=1, "
            "heads=2, mlp_dim=32); AttentionExplorer(m, torch.rand(2, 1, 16, 16), class_names=list('abc')); "
            "import ipympl; print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "agg"
