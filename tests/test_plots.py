import matplotlib
import pytest
import torch

import vit_helpers as vh
from vitkit import train, plots

matplotlib.use("Agg")


def test_upsampled_masks_are_scaled_to_unit_range():
    masks = torch.rand(3, 4, 4) * 0.01 + 0.002
    up = plots.upsample_masks(masks, (16, 16))
    assert up.shape == (3, 16, 16)
    for m in up:
        assert m.min().item() == pytest.approx(0.0, abs=1e-6) and m.max().item() == pytest.approx(1.0, abs=1e-6)


def test_attention_figure_layout_and_saving(tmp_path):
    images, masks = torch.randn(10, 1, 28, 28), torch.rand(10, 7, 7)
    fig = plots.attention_maps(images, masks, mean=(0.5,), std=(0.5,), save_path=tmp_path / "att.png")
    assert len(fig.axes) == 3 * 12 + 1  # 10 triplets, 4 per row -> 3 rows of 12 panels, and one colour bar
    assert fig.axes[-1].get_ylabel() == "each map scaled: min 0, max 1"
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:3] == ["#0: original", "mask", "overlay"]
    assert (tmp_path / "att.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="same B"):
        plots.attention_maps(images, masks[:3])


def test_history_figure_has_labelled_axes(tmp_path):
    hist = train.History(epoch=[1, 2], train_loss=[2.0, 1.0], train_acc=[0.3, 0.6], val_loss=[1.8, 1.1],
                         val_acc=[0.35, 0.55], lr=[0.0, 1e-3, 5e-4])
    fig = plots.training_curves(hist, save_path=tmp_path / "h.png")
    assert [ax.get_xlabel() for ax in fig.axes] == ["epoch", "epoch", "optimizer step"]
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "accuracy", "learning rate"]
    assert (tmp_path / "h.png").exists()


def test_other_figures(tmp_path):
    model = vh.VisionTransformer(image_size=16, patch_size=4, in_channels=3, num_classes=3, dim=16, depth=1, heads=2,
                                 mlp_dim=32)
    assert len(plots.position_similarity(model).axes) == 16 + 1  # 4x4 maps + colour bar
    fig = plots.patch_grid(torch.rand(3, 16, 16), 4, save_path=tmp_path / "p.png")
    assert len(fig.axes) == 1 + 16 and (tmp_path / "p.png").exists()
    assert len(plots.image_grid(torch.rand(5, 3, 8, 8), [str(i) for i in range(5)], ncols=3).axes) == 6
    fig = plots.confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2]), ["a", "b", "c"])
    assert fig.axes[0].get_xlabel() == "predicted class"


def test_data_size_figure_draws_the_study_lines_the_differences_and_a_notebooks_own_points(tmp_path):
    from vitkit import study
    accs = {100: {"vit": [0.30, 0.32], "cnn": [0.50, 0.52]}, 400: {"vit": [0.50, 0.52], "cnn": [0.60, 0.62]}}
    runs = [{"variant": v, "size": n, "seed": s, "test_acc": a, "plateau_move_points": 0.1,
             "val_acc": [0.1 * (i + 1) + a for i in range(10)]}
            for n, per in accs.items() for v, seeds in per.items() for s, a in enumerate(seeds)]
    runs[2]["plateau_move_points"] = 0.7  # cnn, 100 images, seed 0
    own = [{"variant": "vit", "size": 100, "test_acc": 0.33}]
    fig = plots.data_size(study.summarize(runs), runs, own, ["vit", "cnn"], save_path=tmp_path / "d.png")
    left, right = fig.axes
    assert [tuple(line.get_ydata()) for line in left.get_lines()] == [(31.0, 51.0), (51.0, 61.0)]  # means in %
    assert left.get_legend_handles_labels()[1] == ["vit (study, seeds per size: 2/2)", "cnn (study, seeds per size: 2/2)",
                                                   "this notebook's run"]
    assert [t.get_text() for t in left.get_xticklabels()] == ["100", "400"] and left.get_xscale() == "log"
    (bars,) = right.containers  # one errorbar: the CNN minus the plain ViT, at both sizes
    assert list(bars.lines[0].get_ydata()) == pytest.approx([20.0, 10.0])
    assert (tmp_path / "d.png").exists()
    tails = plots.curve_tails(runs, ["vit", "cnn"], limit=0.5, title="tails")
    assert len(tails.axes) == 2 and [ax.get_title() for ax in tails.axes] == ["100 training images", "400 training images"]
    widths = [line.get_linewidth() for line in tails.axes[0].get_lines()]
    assert sorted(widths) == [0.8, 0.8, 0.8, 2.2]  # the one run that moved by the limit or more is thick
    with pytest.raises(ValueError, match="lack 'vit'"):
        plots.data_size(None, [], own, ["cnn"])


def test_confusion_matrix_colours_only_the_mistakes():
    # 9 correct "a", 2 "b" taken for "a", 1 "c" taken for "b": the colour scale ends at the largest mistake (2)
    labels = torch.tensor([0] * 9 + [1, 1, 2])
    preds = torch.tensor([0] * 9 + [0, 0, 1])
    image = plots.confusion_matrix(preds, labels, ["a", "b", "c"]).axes[0].images[0]
    assert image.get_clim() == (0, 2)
    assert image.get_array().mask.tolist() == torch.eye(3, dtype=torch.bool).tolist()
    assert image.get_array()[1, 0] == 2 and image.get_array()[2, 1] == 1


def test_confusion_matrix_counts():
    cm = plots.confusion_counts(torch.tensor([0, 1, 1, 2, 2]), torch.tensor([0, 1, 2, 2, 2]), 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 2]]


def test_mask_grid_rows_and_columns():
    columns = {"layer 1": torch.rand(3, 4, 4), "layer 2": torch.rand(3, 4, 4)}
    fig = plots.mask_grid(torch.rand(3, 3, 16, 16), columns, row_titles=["a", "b", "c"])
    assert len(fig.axes) == 3 * 3 + 1  # and the colour bar that every map shares
    assert fig.axes[-1].get_ylabel() == "each map scaled: min 0, max 1"
    assert [ax.get_title() for ax in fig.axes[:3]] == ["a", "layer 1", "layer 2"]
    with pytest.raises(ValueError, match="expected \\(3, h, w\\)"):
        plots.mask_grid(torch.rand(3, 3, 16, 16), {"bad": torch.rand(2, 4, 4)})


@pytest.mark.parametrize("call, message", [
    (lambda: plots.image_grid(torch.rand(3, 8, 8)), r"images must be a batch \(B, C, H, W\)"),
    (lambda: plots.image_grid(torch.rand(2, 3, 8, 8), mean=(0.5, 0.5, 0.5)), "pass both mean and std"),
    (lambda: plots.image_grid(torch.rand(2, 3, 8, 8), mean=(0.5,), std=(0.5,)), "the images have 3 channel"),
    (lambda: plots.image_grid(torch.rand(2, 3, 8, 8), ["only one"]), "1 titles for 2 images"),
    (lambda: plots.attention_maps(torch.rand(2, 1, 8, 8), torch.rand(2, 2, 2), titles=["a"]), "1 titles for 2"),
    (lambda: plots.mask_grid(torch.rand(2, 1, 8, 8), {"m": torch.rand(2, 2, 2)}, row_titles=["a", "b", "c"]),
     "3 row_titles for 2 images"),
])
def test_plots_check_their_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()
