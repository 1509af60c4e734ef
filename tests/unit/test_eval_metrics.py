"""Evaluation metrics on hand-checkable cases: depth, normals, semseg, boxes, captions, presence."""

from __future__ import annotations

import numpy as np
import pytest

from fourm.data.scene import CLASSES
from fourm.evaluation.metrics import (
    box_map,
    caption_attribute_scores,
    caption_bleu4,
    caption_objects,
    depth_metrics,
    normal_metrics,
    scene_presence,
    semseg_metrics,
)

pytestmark = pytest.mark.unit

CAPTIONS = [
    "A scene with three objects on a checkered floor: a small red sphere, a large blue cube and a small "
    "green cylinder. The small red sphere is to the left of the large blue cube.",
    "There is one object on the floor: a large white cube.",
    "This image shows a small red sphere and a large cyan cylinder on a tiled floor.",
    "A small red sphere and a large blue cube stand on the ground.",
]


def _box(x0: float, y0: float, x1: float, y1: float, cls: str, score: float | None = None) -> dict:
    b = {"bbox": [x0, y0, x1, y1], "class": cls}
    if score is not None:
        b["score"] = score
    return b


# --------------------------------------------------------------------------- depth


def test_depth_perfect_prediction() -> None:
    t = np.random.default_rng(0).uniform(1, 10, (2, 4, 5))
    m = depth_metrics(t.copy(), t)
    assert m == {"abs_rel": 0.0, "rmse": 0.0, "delta1": 1.0}
    assert all(type(v) is float for v in m.values())


def test_depth_known_factor_and_pooling() -> None:
    t = np.full((2, 2, 2), 2.0)
    assert depth_metrics(t * 1.5, t) == pytest.approx({"abs_rel": 0.5, "rmse": 1.0, "delta1": 0.0})
    # Sample 0 off by 1.1 (inside delta1), sample 1 off by 1.5: pooled over all pixels.
    p = np.stack([np.full((2, 2), 2.2), np.full((2, 2), 3.0)])
    m = depth_metrics(p, t)
    assert m["abs_rel"] == pytest.approx((0.1 + 0.5) / 2)
    assert m["delta1"] == pytest.approx(0.5)


def test_depth_invalid_pixels_and_clipping() -> None:
    t = np.array([[[2.0, 0.0, np.nan, 2.0]]])
    p = np.array([[[2.0, 99.0, 99.0, 0.0]]])  # pixels 1, 2 invalid; pixel 3 pred clipped to epsilon
    m = depth_metrics(p, t)
    assert m["abs_rel"] == pytest.approx(0.5, abs=1e-6)
    assert m["delta1"] == 0.5
    # An explicit mask is combined with the default one.
    m = depth_metrics(p, t, valid=np.array([[[True, True, True, False]]]))
    assert m == {"abs_rel": 0.0, "rmse": 0.0, "delta1": 1.0}


# --------------------------------------------------------------------------- normals


def test_normals_perfect_and_renormalised() -> None:
    t = np.zeros((1, 2, 2, 3))
    t[..., 2] = 1.0
    m = normal_metrics(t * 5.0, t)
    assert m == pytest.approx({"mean_angle": 0.0, "median_angle": 0.0, "within_11_25": 1.0}, abs=1e-6)


def test_normals_ninety_degrees_and_zero_vectors() -> None:
    t = np.zeros((1, 1, 4, 3))
    t[..., 0] = 1.0
    p = np.zeros((1, 1, 4, 3))
    p[0, 0, 0] = [0, 0, 1]  # 90 degrees
    p[0, 0, 1] = [0, 1, 0]  # 90 degrees
    p[0, 0, 2] = [2, 0, 0]  # 0 degrees
    # p[0, 0, 3] stays zero: invalid
    m = normal_metrics(p, t)
    assert m["mean_angle"] == pytest.approx(60.0)
    assert m["median_angle"] == pytest.approx(90.0)
    assert m["within_11_25"] == pytest.approx(1 / 3)
    assert normal_metrics(p[:, :, :2], t[:, :, :2])["mean_angle"] == pytest.approx(90.0)


# --------------------------------------------------------------------------- semantic segmentation


def test_semseg_perfect_ignores_absent_classes() -> None:
    t = np.array([[[0, 0], [1, 1]]])
    assert semseg_metrics(t.copy(), t, num_classes=5) == {"miou": 1.0, "pixel_accuracy": 1.0}


def test_semseg_half_correct() -> None:
    t = np.array([[[0, 0], [1, 1]]])
    p = np.array([[[0, 1], [1, 0]]])
    m = semseg_metrics(p, t, num_classes=4)
    assert m["pixel_accuracy"] == pytest.approx(0.5)
    # Each class: 1 true positive, 1 false positive, 1 false negative -> IoU 1/3; classes 2, 3 absent.
    assert m["miou"] == pytest.approx(1 / 3)


def test_semseg_ignore_index() -> None:
    t = np.array([[[0, 0, 255], [1, 1, 255]]])
    p = np.array([[[0, 0, 1], [1, 1, 7]]])  # wrong/out-of-range values only at ignored pixels
    assert semseg_metrics(p, t, num_classes=2, ignore_index=255) == {"miou": 1.0, "pixel_accuracy": 1.0}
    # A class present only in the prediction counts with IoU 0.
    p2 = np.array([[[0, 0, 0], [1, 2, 0]]])
    m = semseg_metrics(p2, t, num_classes=3, ignore_index=255)
    assert m["pixel_accuracy"] == pytest.approx(0.75)
    assert m["miou"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)


# --------------------------------------------------------------------------- boxes


def test_box_map_perfect() -> None:
    targets = [
        [_box(0, 0, 10, 10, "cube"), _box(20, 20, 40, 35, "sphere")],
        [_box(5, 5, 15, 25, "cylinder")],
    ]
    preds = [[dict(b, score=0.9) for b in s] for s in targets]
    assert box_map(preds, targets) == pytest.approx({"map_50": 1.0, "map": 1.0})


def test_box_map_one_exact_one_missed() -> None:
    # One class, two targets, one exact prediction: precision 1 up to recall 0.5, then nothing.
    # COCO samples precision at 101 recall points 0, 0.01, ..., 1: 51 of them (<= 0.5) score 1.
    # The exact box matches at every IoU threshold, so map == map_50.
    targets = [[_box(0, 0, 10, 10, "cube"), _box(50, 50, 60, 60, "cube")]]
    preds = [[_box(0, 0, 10, 10, "cube")]]  # score defaults to 1.0
    assert box_map(preds, targets) == pytest.approx({"map_50": 51 / 101, "map": 51 / 101})


def test_box_map_empty_sets() -> None:
    targets = [[_box(0, 0, 10, 10, "cube")], [_box(1, 1, 5, 5, "sphere")]]
    assert box_map([[], []], targets) == {"map_50": 0.0, "map": 0.0}
    assert box_map([[_box(0, 0, 1, 1, "cube", 0.5)], []], [[], []]) == {"map_50": 0.0, "map": 0.0}


# --------------------------------------------------------------------------- captions


def test_caption_objects_four_forms() -> None:
    assert caption_objects(CAPTIONS[0]) == [
        ("small", "red", "sphere"),
        ("large", "blue", "cube"),
        ("small", "green", "cylinder"),
    ]
    assert caption_objects(CAPTIONS[1]) == [("large", "white", "cube")]
    assert caption_objects(CAPTIONS[2]) == [("small", "red", "sphere"), ("large", "cyan", "cylinder")]
    assert caption_objects(CAPTIONS[3]) == [("small", "red", "sphere"), ("large", "blue", "cube")]


def test_caption_objects_garbage_and_partial() -> None:
    assert caption_objects("") == []
    assert caption_objects("purple elephants dance on a cloud.") == []
    assert caption_objects(". A small red sphere.") == []  # first sentence is empty
    assert caption_objects("A SMALL RED Sphere and a wobbly blue cube!!") == [
        ("small", "red", "sphere"),
        (None, "blue", "cube"),
    ]
    # Later (relation) sentences are not listings.
    assert caption_objects("A large cube. The small red sphere is behind the large cube.") == [
        ("large", None, "cube")
    ]


def test_caption_attribute_scores_mismatched_colour() -> None:
    target = CAPTIONS[3]
    pred = "A small green sphere and a large blue cube stand on the ground."
    s = caption_attribute_scores([pred, target], [target, target])
    assert s == pytest.approx(
        {"count_accuracy": 1.0, "shape_accuracy": 1.0, "colour_accuracy": 0.5, "attribute_accuracy": 2.5 / 3}
    )
    s = caption_attribute_scores(["There is one object on the floor: a large blue cube."], [target])
    assert s == pytest.approx(
        {"count_accuracy": 0.0, "shape_accuracy": 0.0, "colour_accuracy": 0.0, "attribute_accuracy": 0.0}
    )


def test_caption_bleu4() -> None:
    assert caption_bleu4(CAPTIONS, CAPTIONS) == pytest.approx(1.0)
    assert 0.0 < caption_bleu4(CAPTIONS[:1], CAPTIONS[3:]) < 1.0
    assert caption_bleu4(["purple elephants"], [CAPTIONS[1]]) == 0.0


# --------------------------------------------------------------------------- presence


def test_scene_presence_constructed_maps() -> None:
    sphere, cube, cylinder = CLASSES.index("sphere"), CLASSES.index("cube"), CLASSES.index("cylinder")
    maps = np.zeros((2, 10, 10), dtype=np.int64)
    maps[0, :2] = sphere  # 20 % of the pixels
    maps[0, 9, 9] = cube  # 1 %: below min_fraction, not predicted
    maps[1, :1] = cube
    maps[1, 1:2] = cylinder
    maps[1, 2:3] = sphere
    captions = [
        "A small red sphere and a large blue cylinder stand on the ground.",  # named: sphere, cylinder
        "There is one object on the floor: a large white cube.",  # named: cube
    ]
    # Predicted {sphere} and {cube, cylinder, sphere}: 2 hits of 4 predicted, of 3 named.
    m = scene_presence(maps, captions, CLASSES, min_fraction=0.05)
    assert m == pytest.approx({"precision": 0.5, "recall": 2 / 3})
    # Nothing predicted, nothing named: both 1.0 by definition.
    assert scene_presence(np.zeros((1, 4, 4), dtype=np.int64), ["noise"], CLASSES) == {
        "precision": 1.0,
        "recall": 1.0,
    }
    # Nothing predicted while shapes are named (the all-floor baseline): no precision earned.
    empty = scene_presence(np.zeros((1, 4, 4), dtype=np.int64), captions[1:], CLASSES)
    assert empty == {"precision": 0.0, "recall": 0.0}


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: depth_metrics(np.ones((2, 3)), np.ones((2, 3))), r"pred must have shape \(N, H, W\)"),
        (lambda: depth_metrics(np.ones((1, 2, 3)), np.ones((1, 3, 2))), "same shape"),
        (lambda: depth_metrics(np.ones((1, 2, 2)), np.ones((1, 2, 2)), np.ones((2, 2))), "valid"),
        (lambda: depth_metrics(np.ones((1, 2, 2)), np.zeros((1, 2, 2))), "no valid pixels"),
        (lambda: normal_metrics(np.ones((1, 3, 4, 4)), np.ones((1, 3, 4, 4))), r"\(N, H, W, 3\)"),
        (lambda: semseg_metrics(np.ones((1, 2, 2)), np.ones((1, 2, 2)), 2), "integer class map"),
        (lambda: semseg_metrics(np.full((1, 2, 2), 3), np.ones((1, 2, 2), int), 2), "outside"),
        (lambda: semseg_metrics(np.ones((0, 2, 2), int), np.ones((0, 2, 2), int), 2), "at least one"),
        (lambda: box_map([[]], [[], []]), "one entry per sample"),
        (lambda: box_map([[{"bbox": 0}]], [[]]), r"pred_boxes\[0\]\[0\]"),
        (lambda: box_map([[]], [[_box(5, 0, 1, 1, "cube")]]), "xmin <= xmax"),
        (lambda: caption_attribute_scores(["a"], ["a", "b"]), "same length"),
        (lambda: caption_bleu4("a cube", "a cube"), "sequence of N strings"),
        (lambda: scene_presence(np.zeros((2, 2, 2), int), ["a"], CLASSES), "one entry per map"),
        (lambda: scene_presence(np.full((1, 2, 2), 9), ["a"], CLASSES), "outside"),
    ],
)
def test_bad_inputs_raise(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
