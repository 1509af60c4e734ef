"""Preview drawing (fourm/data/preview.py) with what a model may generate."""

from __future__ import annotations

import numpy as np
import pytest

from fourm.data.preview import draw_boxes

pytestmark = pytest.mark.unit


def test_generated_boxes_that_are_empty_or_inverted_are_drawn_where_their_corners_are() -> None:
    rgb = np.zeros((16, 16, 3), np.uint8)
    boxes = [
        {"class": "cube", "bbox": [2.0, 2.0, 6.0, 6.0]},
        {"class": "cube", "bbox": [12.0, 3.0, 9.0, 8.0]},  # x1 < x0
        {"class": "cube", "bbox": [4.0, 12.0, 4.0, 12.0]},  # empty
    ]
    img = np.asarray(draw_boxes(rgb, boxes, scale=2))
    assert img.shape == (32, 32, 3)
    drawn = img.any(axis=2)
    assert drawn[4, 4] and drawn[6, 18] and drawn[24, 8]  # a corner of each box is outlined
    assert not drawn[7, 7] and not drawn[0, 31]  # inside the first box, and far from every box
