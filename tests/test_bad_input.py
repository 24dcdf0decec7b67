"""The long tail of bad input (issue 19): every case gets a message naming the argument, what was given and what to
do, before work starts; where the meaning is unambiguous the input is accepted; a legitimate but odd input (a NaN
pixel in evaluation) gives a result that says so."""
import dataclasses
import gzip
import json
import socket
import threading
import time
import warnings

import pytest
import torch

import vit_helpers as vh
from vitkit import data, explain, plots, records, sources, train
from conftest import loader, quadrant_data, tiny_vit

CFG = dict(image_size=16, patch_size=4, in_channels=3, num_classes=10, dim=16, depth=2, heads=2, mlp_dim=32)


def probs(layers=2, T=17, B=1, heads=2):
    torch.manual_seed(0)
    return [torch.rand(B, heads, T, T).softmax(-1) for _ in range(layers)]


# --- the model's configuration and input ------------------------------------------------------------------------

@pytest.mark.parametrize("change, error, message", [
    (dict(layer_norm_eps=float("nan")), ValueError, "layer_norm_eps must be a finite number > 0.*got nan"),
    (dict(layer_norm_eps=float("inf")), ValueError, "layer_norm_eps must be a finite number"),
    (dict(layer_norm_eps="1e-6"), TypeError, "layer_norm_eps must be a number, got str"),
    (dict(qkv_bias="no"), TypeError, "qkv_bias must be True or False, got 'no'"),
    (dict(qkv_bias=1), TypeError, "qkv_bias must be True or False"),
    (dict(dropout="0.1"), TypeError, "dropout must be a number, got str"),
    (dict(attn_dropout=None), TypeError, "attn_dropout must be a number, got NoneType"),
    (dict(dropout=float("nan")), ValueError, r"dropout must be in \[0, 1\), got nan"),
])
def test_bad_config_values_are_named(change, error, message):
    with pytest.raises(error, match=message):
        vh.VisionTransformer(**{**CFG, **change})


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_input_of_another_float_type_says_how_to_convert(dtype):
    model = vh.VisionTransformer(**CFG)
    with pytest.raises(TypeError, match=rf"images are {dtype} but the model's weights are torch.float32: convert "
                                        r"the batch with x.to\(torch.float32\) \(x.float\(\) for float32\)"):
        model(torch.zeros(1, 3, 16, 16, dtype=dtype))


def test_input_under_autocast_and_a_model_in_the_inputs_dtype_are_fine():
    model = vh.VisionTransformer(**CFG)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 10)
    assert model.double()(torch.zeros(1, 3, 16, 16, dtype=torch.float64)).dtype == torch.float64


# --- rollout and CLS maps ------------------------------------------------------------------------------------

def test_grid_size_as_one_int_means_a_square_grid():
    layers = probs()
    torch.testing.assert_close(vh.attention_rollout(layers, grid_size=4), vh.attention_rollout(layers))
    torch.testing.assert_close(vh.cls_attention_map(layers, grid_size=4), vh.cls_attention_map(layers))


@pytest.mark.parametrize("grid_size", [(4.0, 4.0), (-4, -4), (4,), 4.5, "4x4", (True, 4)])
def test_bad_grid_sizes_are_named(grid_size):
    with pytest.raises(ValueError, match=r"grid_size must be \(h, w\), two positive ints \(or one int for a square "
                                         r"grid\), got"):
        vh.attention_rollout(probs(), grid_size=grid_size)


def test_discard_ratio_as_a_string_is_a_type_error():
    with pytest.raises(TypeError, match=r"discard_ratio must be a number in \[0, 1\), got str \('0.9'\)"):
        vh.attention_rollout(probs(), discard_ratio="0.9")


def test_a_generator_of_layers_is_accepted():
    layers = probs(3)
    torch.testing.assert_close(vh.attention_rollout(a for a in layers), vh.attention_rollout(layers))
    with pytest.raises(TypeError, match="attentions must be a tuple/list of per-layer tensors .*got int"):
        vh.attention_rollout(3)


def test_layer_index_of_the_wrong_type_is_not_called_out_of_range():
    with pytest.raises(TypeError, match=r"layer must be an int .*got float \(1.0\)"):
        vh.cls_attention_map(probs(), layer=1.0)
    with pytest.raises(ValueError, match="layer=5 is out of range for 2 layers"):
        vh.cls_attention_map(probs(), layer=5)


def test_from_hf_with_a_replaced_classifier_says_what_to_do():
    pytest.importorskip("transformers")
    hf = vh.to_hf(vh.VisionTransformer(**CFG))
    hf.classifier = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(16, 10))
    with pytest.raises(TypeError, match="classifier is a Sequential.*original linear classifier"):
        vh.from_hf(hf)


# --- labels in fit and evaluate -------------------------------------------------------------------------------

def _labelled(labels, n=8):
    x = torch.rand(n, 1, 16, 16)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels), batch_size=n)


@pytest.mark.parametrize("labels, error, message", [
    (torch.arange(8) % 6, ValueError, r"class indices in \[0, 3\] for a model with 4 classes, got values from 0 to 5"),
    (torch.arange(8) - 1, ValueError, "got values from -1 to 6"),
    (torch.nn.functional.one_hot(torch.arange(8) % 4, 4).float(), ValueError, r"one-hot .*labels.argmax\(1\)"),
    ((torch.arange(8) % 4).float(), TypeError, r"integer class indices, got torch.float32: .*labels.long\(\)"),
])
def test_bad_labels_are_named_in_fit_and_evaluate(labels, error, message):
    with pytest.raises(error, match=message):
        train.fit(tiny_vit(), _labelled(labels), epochs=1, device="cpu", precision="fp32", progress=False,
                  verbose=False)
    with pytest.raises(error, match=message):
        train.evaluate(tiny_vit(), _labelled(labels))


def test_labels_on_a_device_are_not_range_checked_per_step():
    """The range check reads CPU labels only (where loaders yield them): labels already on a device cost no
    synchronisation. A meta tensor stands in for a GPU one: reading its values would raise."""
    from vitkit.checks import check_labels
    check_labels(torch.empty(8, dtype=torch.long, device="meta"), num_classes=4)
    with pytest.raises(ValueError, match="one-hot"):  # the shape is still checked: metadata, no values read
        check_labels(torch.empty(8, 4, device="meta"), num_classes=4)


def test_evaluate_counts_nan_images_and_warns():
    ds = quadrant_data(32, 0)
    x, y = torch.stack([ds[i][0] for i in range(32)]), ds.labels
    x[3, 0, 0, 0] = float("nan")
    with pytest.warns(UserWarning, match="1 of 32 images gave a NaN or infinite loss"):
        out = train.evaluate(tiny_vit(), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                                                     batch_size=16))
    assert out["nonfinite"] == 1 and out["n"] == 32 and torch.isfinite(torch.tensor(out["loss"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert train.evaluate(tiny_vit(), loader(ds))["nonfinite"] == 0


# --- records and plots ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("wall", [None, "60", float("nan"), True])
def test_save_results_needs_a_wall_time(tmp_path, wall):
    with pytest.raises(TypeError, match=r"wall_time_s must be the run's wall-clock time in seconds .*got"):
        records.save_results(tmp_path / "r.json", metrics={}, config={}, seed=0, dataset="x", wall_time_s=wall)
    assert not (tmp_path / "r.json").exists()


def test_plots_name_bad_masks_and_images():
    images, masks = torch.rand(2, 3, 16, 16), torch.rand(2, 4, 4)
    with pytest.raises(TypeError, match=r"masks must be a tensor \(B, h, w\), got list; stack a list"):
        plots.attention_maps(images, [m for m in masks])
    bad = masks.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="masks hold NaN or inf values, which would draw blank panels"):
        plots.attention_maps(images, bad)
    with pytest.raises(ValueError, match=r"look channels-last \(B, H, W, C\).*images.permute\(0, 3, 1, 2\)"):
        plots.attention_maps(images.permute(0, 2, 3, 1), masks)
    with pytest.raises(TypeError, match="images must be a tensor batch"):
        plots.image_grid([images[0]])
    with pytest.raises(ValueError, match=r"columns\['rollout'\] hold NaN"):
        plots.mask_grid(images, {"rollout": bad})


def test_confusion_matrix_refuses_classes_it_would_drop():
    with pytest.raises(ValueError, match=r"predictions must be class indices in \[0, 9\] .*from 0 to 11"):
        plots.confusion_counts(torch.tensor([0, 11]), torch.tensor([0, 1]), 10)
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        plots.confusion_matrix(torch.tensor([0, 1, 2]), torch.tensor([0, 1]), [str(i) for i in range(10)])
    assert plots.confusion_counts(torch.tensor([0, 9]), torch.tensor([0, 9]), 10).sum() == 2


# --- files and downloads --------------------------------------------------------------------------------------

def test_truncated_gz_idx_file_is_named(fake_mnist):
    root, _, _ = fake_mnist
    raw = root / "MNIST" / "raw"
    payload = gzip.compress((raw / "train-labels-idx1-ubyte").read_bytes())
    (raw / "train-labels-idx1-ubyte").unlink()
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(payload[: len(payload) // 2])
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.gz is truncated or corrupt .*delete it"):
        sources.load_mnist(root, download=False)


def test_load_image_accepts_home_paths_and_file_urls(tmp_path, monkeypatch):
    from PIL import Image
    Image.new("RGB", (5, 4), "red").save(tmp_path / "x.png")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.load_image("~/x.png").size == (5, 4)
    assert data.load_image((tmp_path / "x.png").as_uri()).size == (5, 4)
    with pytest.raises(TypeError, match="load_image takes a path or URL, got Tensor"):
        data.load_image(torch.zeros(3, 4, 5))


@pytest.fixture
def slow_server():
    """A server that answers every request slowly but steadily, so no single read times out."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            threading.Thread(target=trickle, args=(conn,), daemon=True).start()

    def trickle(conn):
        try:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
            while not stop.is_set():  # a byte every 0.1 s: no single read ever waits long
                conn.sendall(b"x")
                time.sleep(0.1)
        except OSError:  # the client gave up
            pass
        finally:
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}/"
    stop.set()
    srv.close()


def test_upper_case_http_urls_are_urls(slow_server):
    with pytest.raises(data.DataNotFoundError, match="could not download"):  # fetched (and timed out), not a path
        data.load_image(slow_server.replace("http", "HTTP") + "photo.jpg", timeout_s=0.3)


def test_a_download_that_trickles_is_bounded_in_all(slow_server, tmp_path, monkeypatch):
    import torchvision
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [slow_server, slow_server])
    start = time.perf_counter()
    with pytest.raises(vh.DataNotFoundError, match="did not finish within download_timeout_s=1 s"):
        data.load_mnist(tmp_path, download=True, timeout_s=1.0)
    assert time.perf_counter() - start < 5  # not 4 files x 2 mirrors x a minute of trickling


# --- further cases of the same kinds, found by trying the public functions -----------------------------------------

@pytest.mark.parametrize("call, error, message", [
    (lambda: vh.warmup_cosine_schedule(None, 1, 10), TypeError, "optimizer must be a torch.optim.Optimizer, got NoneType"),
    (lambda: vh.load_model(__file__), ValueError, r"test_bad_input.py is not a readable safetensors file"),
    (lambda: explain.explain("rollout", vh.VisionTransformer(**CFG), torch.rand(2, 3, 16, 16), batch_size=0),
     ValueError, "batch_size must be a positive int, got 0"),
    (lambda: explain.perturbation_curve(vh.VisionTransformer(**CFG), torch.rand(2, 3, 16, 16), torch.tensor([0, 1]),
                                        torch.rand(2, 4, 4), fractions=(0, 1.5)),
     ValueError, r"fractions must be at least two increasing shares of the patches in \[0, 1\]"),
    (lambda: explain.remove_patches(torch.rand(2, 3, 16, 16), torch.rand(2, 4, 4), 2.0), ValueError,
     r"fraction must be in \[0, 1\], got 2.0"),
    (lambda: explain.mass_on_mask(torch.rand(2, 4, 4), torch.rand(3, 16, 16)), ValueError,
     "need one entry per image each"),
    (lambda: data.mnist_loaders("./data", mean=0.5), TypeError, r"mean must be a tuple with one value per channel"),
    (lambda: data.cifar10_loaders(5), TypeError, r"root must be a folder path \(str or Path\), got int"),
    (lambda: records.save_results("/tmp", metrics={}, config={}, seed=0, dataset="x", wall_time_s=1), ValueError,
     "is a folder; pass the record's file path"),
    (lambda: records.save_results("/tmp/r.json", metrics={}, config={}, seed="0", dataset="x", wall_time_s=1),
     TypeError, "seed must be the run's int seed, got str"),
    (lambda: plots.training_curves(None), TypeError, "history must be the History that fit returns"),
    (lambda: plots.patch_grid(torch.rand(2, 3, 16, 16), 4), ValueError, r"one image \(C, H, W\).*images\[0\]"),
    (lambda: plots.patch_grid(torch.rand(3, 16, 16), 5), ValueError, "patch_size=5 must be a positive int that divides"),
    (lambda: plots.position_similarity(torch.nn.Linear(2, 2)), TypeError, r"convert a HF ViT with vh.from_hf"),
    (lambda: plots.denormalize(torch.rand(2, 3, 4, 4), (0.5,), (0.5, 0.5)), ValueError, "mean/std have 1/2 values"),
    (lambda: plots.upsample_masks(torch.rand(4, 4), (16, 16)), ValueError, r"masks.unsqueeze\(0\)"),
    (lambda: train.fit(tiny_vit(), loader(quadrant_data(8, 0)), 5, epochs=1), TypeError,
     "val_loader must be a DataLoader"),
    (lambda: train.fit(tiny_vit(), loader(quadrant_data(8, 0)), epochs=1, resume="yes"), TypeError,
     "resume must be True or False"),
    (lambda: train.fit(tiny_vit(), loader(quadrant_data(8, 0)), epochs=1, checkpoint=5), TypeError,
     "checkpoint must be a file path"),
])
def test_further_bad_input_is_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_the_last_unclear_inputs_are_named():
    with pytest.raises(ValueError, match=r"attentions hold a batch of 0 images"):
        vh.attention_rollout((torch.rand(0, 2, 5, 5),))
    with pytest.raises(ValueError, match="per_row must be a positive int, got 0"):
        plots.attention_maps(torch.rand(2, 1, 8, 8), torch.rand(2, 2, 2), per_row=0)
    with pytest.raises(TypeError, match="fit got unknown setting.*'lrr'.*FitConfig's fields are: epochs"):
        train.fit(tiny_vit(), loader(quadrant_data(8, 0)), epochs=1, lrr=0.1)
    with pytest.raises(TypeError, match=r"fit needs epochs=\.\.\. \(or a FitConfig\)"):
        train.fit(tiny_vit(), loader(quadrant_data(8, 0)))
    with pytest.raises(ValueError, match="lr_update must be 'step'"):
        train.FitConfig(epochs=1, lr_update="batch")


def test_weights_whose_header_is_unknown_or_not_json_are_named(tmp_path):
    from safetensors.torch import save_file
    model = tiny_vit()
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    config = json.loads(json.dumps(dataclasses.asdict(model.config)))
    save_file(tensors, str(tmp_path / "newer.safetensors"), metadata={"vit_config": json.dumps({**config, "rope": 1})})
    with pytest.raises(ValueError, match=r"newer.safetensors: its vit_config holds fields rope that this vit_helpers"):
        vh.load_model(tmp_path / "newer.safetensors")
    save_file(tensors, str(tmp_path / "edited.safetensors"), metadata={"vit_config": "{dim: 16"})
    with pytest.raises(ValueError, match=r"edited.safetensors: its header is not valid JSON"):
        vh.load_model(tmp_path / "edited.safetensors")
