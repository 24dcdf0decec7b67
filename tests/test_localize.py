"""The localization data set (cluttered MNIST) and its metrics, on hand-made digits and maps."""
import re

import pytest
import torch

from vitkit import localize
from vitkit.sources import InMemoryImages


@pytest.fixture(scope="module")
def digits():
    """60 '28x28 digits': a random blob of ink each (values 0-255), labels 0-9."""
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(60, 1, 28, 28, dtype=torch.uint8)
    for i in range(60):
        x0, y0 = (int(v) for v in torch.randint(2, 10, (2,), generator=g))
        w, h = (int(v) for v in torch.randint(8, 16, (2,), generator=g))
        images[i, 0, y0:y0 + h, x0:x0 + w] = torch.randint(60, 256, (h, w), dtype=torch.uint8, generator=g)
    return InMemoryImages(images, torch.arange(60) % 10, [str(i) for i in range(10)], source="blobs")


def test_canvases_are_deterministic_from_the_seed(digits):
    a, boxes_a = localize.cluttered_mnist(digits, 20, seed=3)
    b, boxes_b = localize.cluttered_mnist(digits, 20, seed=3)
    c, _ = localize.cluttered_mnist(digits, 20, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(boxes_a, boxes_b) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (20, 1, 64, 64) and a.images.dtype == torch.uint8


def test_the_box_is_the_tight_box_of_the_digits_ink(digits):
    spec = localize.ClutterSpec()
    images, boxes, digit_only, _ = localize.cluttered_mnist(digits, 30, seed=0, return_parts=True)
    for img, box in zip(digit_only[:, 0], boxes):
        ys, xs = torch.nonzero(img > spec.ink, as_tuple=True)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == tuple(box.tolist())  # contains it, tightly
        side_x, side_y = int(box[2] - box[0]), int(box[3] - box[1])
        assert side_x <= spec.max_side and side_y <= spec.max_side
    assert torch.equal(images.images >= digit_only, torch.ones_like(digit_only, dtype=torch.bool))  # clutter adds


def test_clutter_never_covers_the_digits_box_beyond_the_set_fraction(digits):
    spec = localize.ClutterSpec()
    _, boxes, _, places = localize.cluttered_mnist(digits, 40, seed=1, return_parts=True)
    assert places.shape == (40, spec.fragments, 2)
    for box, fragments in zip(boxes, places):
        for x, y in fragments.tolist():
            inside = (min(int(box[2]), x + spec.fragment) - max(int(box[0]), x),
                      min(int(box[3]), y + spec.fragment) - max(int(box[1]), y))  # the fragment's pixels in the box
            assert max(0, inside[0]) * max(0, inside[1]) <= spec.max_overlap * spec.fragment ** 2
            assert 0 <= x <= spec.canvas - spec.fragment and 0 <= y <= spec.canvas - spec.fragment


def test_pointing_game_on_hand_made_maps():
    boxes = torch.tensor([[16, 16, 32, 32]] * 3)
    maps = torch.zeros(3, 4, 4)  # 16-pixel cells on a 64x64 canvas
    maps[0, 1, 1] = 1.0  # cell centre (24, 24): inside
    maps[1, 3, 3] = 1.0  # (56, 56): outside
    maps[2, 0, 0] = maps[2, 1, 1] = 1.0  # a tie: the first cell (8, 8) counts, outside
    assert localize.pointing_game(maps, boxes, 64).tolist() == [True, False, False]
    edge = torch.zeros(1, 4, 4)
    edge[0, 1, 2] = 1.0  # centre (40, 24): x1 = 40 is exclusive
    assert localize.pointing_game(edge, torch.tensor([[16, 16, 40, 32]]), 64).tolist() == [False]
    # offset (rows, columns): the point moves to (x, y) = (40 - 1, 24 + 10) = (39, 34): inside x, outside y
    assert localize.pointing_game(edge, torch.tensor([[16, 16, 40, 32]]), 64, offset=(0.0, -1.0)).tolist() == [True]
    assert localize.pointing_game(edge, torch.tensor([[16, 16, 40, 32]]), 64, offset=(10.0, -1.0)).tolist() == [False]


def test_iou_of_known_boxes():
    a = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    b = torch.tensor([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    torch.testing.assert_close(localize.box_iou(a, b), torch.tensor([1.0, 50 / 150, 0.0]))


def test_box_from_map_takes_the_largest_region():
    m = torch.zeros(1, 8, 8)
    m[0, 1:3, 1:3] = 1.0  # a small blob at the maximum's height...
    m[0, 4:8, 3:8] = 0.9  # ...and a larger one just below it
    box = localize.box_from_map(m, 8, fraction=0.5)
    assert box.tolist() == [[3, 4, 8, 8]]
    assert localize.box_from_map(m, 8, fraction=0.95).tolist() == [[1, 1, 3, 3]]  # only the top blob remains
    truth = torch.tensor([[3, 4, 8, 8], [0, 0, 2, 2]])
    assert localize.box_accuracy(m.expand(2, 8, 8), truth, 8, 0.5).tolist() == [True, False]


def test_bad_metric_input_is_named():
    with pytest.raises(ValueError, match=r"boxes must be \(2, 4\)"):
        localize.pointing_game(torch.rand(2, 4, 4), torch.zeros(3, 4), 64)
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\)"):
        localize.box_from_map(torch.rand(1, 4, 4), 64, 1.5)
    with pytest.raises(TypeError, match="one-channel InMemoryImages"):
        localize.cluttered_mnist(torch.zeros(3, 1, 28, 28), 2)


@pytest.mark.parametrize("spec, message", [
    (dict(canvas=20, min_side=20, max_side=20), "spec.canvas=20 leaves 0 px beside a 20-px digit"),
    (dict(max_overlap=-0.5), r"spec.max_overlap must be in \[0, 1\], got -0.5"),
    (dict(canvas=16), "spec.max_side=32 does not fit spec.canvas=16"),
    (dict(fragments=-1), "spec.fragments must be >= 0, got -1"),
    (dict(fragment=40), "spec.fragment=40 is larger than the 28x28 source digits"),
    (dict(min_side=30, max_side=24), "spec.min_side=30 is larger than spec.max_side=24"),
    (dict(ink=300), r"spec.ink must be in \[0, 254\]"),
])
def test_impossible_clutter_is_refused_at_once_instead_of_hanging(digits, spec, message):
    import threading
    outcome = {}

    def attempt():
        try:
            localize.cluttered_mnist(digits, 4, spec=localize.ClutterSpec(**spec))
        except ValueError as e:
            outcome["error"] = str(e)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=5)  # a hang fails here instead of blocking the suite
    assert not worker.is_alive(), "cluttered_mnist hung"
    assert re.search(message, outcome.get("error", "")), outcome


def test_a_one_image_source_and_inkless_digits_are_refused(digits):
    one = InMemoryImages(digits.images[:1], digits.labels[:1], digits.classes)
    with pytest.raises(ValueError, match="the source split has 1 image"):
        localize.cluttered_mnist(one, 2)
    blank = InMemoryImages(torch.zeros_like(digits.images[:50]), digits.labels[:50], digits.classes)
    blank.images[:, :, 10:12, 10:12] = 255  # a 2x2 dot: a digit box, but no 8x8 piece holds 8 ink pixels
    with pytest.raises(ValueError, match="no clutter fragment found after 10000 random draws"):
        localize.cluttered_mnist(blank, 1)


def test_nan_maps_and_invalid_boxes_are_named():
    maps, boxes = torch.rand(3, 4, 4), torch.tensor([[0, 0, 8, 8]] * 3)
    maps[1] = float("nan")
    maps[2, 0, 0] = float("nan")  # one NaN cell would hide the real peak
    for score in (lambda m, b: localize.pointing_game(m, b, 16), lambda m, b: localize.box_accuracy(m, b, 16, 0.5)):
        with pytest.raises(ValueError, match=r"maps \[1, 2\] hold NaN or infinite values"):
            score(maps, boxes)
    with pytest.raises(ValueError, match=r"maps \[1, 2\] hold NaN"):
        localize.box_from_map(maps, 16, 0.5)
    good = torch.rand(3, 4, 4)
    for bad in ([[0, 0, 8, 8], [8, 8, 4, 12], [0, 0, 8, 8]], [[0, 0, 8, 8], [0, 0, 8, 8], [-2, 0, 20, 8]],
                [[0, 0, 8, 8], [3, 3, 3, 9], [0, 0, 8, 8]]):
        with pytest.raises(ValueError, match=r"boxes \[\d\] are empty, inverted or outside the 16x16 image"):
            localize.pointing_game(good, torch.tensor(bad), 16)
    with pytest.raises(ValueError, match="image_size must be a positive int, got 0"):
        localize.pointing_game(good, boxes, 0)
    with pytest.raises(ValueError, match="image_size must be a positive int, got 0"):
        localize.box_from_map(good, 0, 0.5)
