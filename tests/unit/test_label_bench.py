"""`fourm bench label`'s argument parsing and image preparation."""

from __future__ import annotations

import numpy as np
import pytest

from fourm.labelers.base import LabelerError
from fourm.labelers.bench import _square, parse_assignments

pytestmark = pytest.mark.unit


def test_models_and_options_become_labeler_options():
    parsed = parse_assignments(
        ["hf-depth=models/depth", "hf-semseg=org/seg=v2"],
        ["hf-semseg.mapping=map.yaml", "hf-boxes.threshold=0.5", "hf-depth.bf16=false"],
    )
    assert parsed == {
        "hf-depth": {"model": "models/depth", "bf16": False},
        "hf-semseg": {"model": "org/seg=v2", "mapping": "map.yaml"},
        "hf-boxes": {"threshold": 0.5},
    }
    for bad in (["hf-depth"], ["=dir"], ["hf-depth="]):
        with pytest.raises(LabelerError, match="expected NAME=DIR_OR_HUB_ID"):
            parse_assignments(bad, [])
    for bad in (["threshold=0.5"], ["hf-boxes.threshold"], [".threshold=1"]):
        with pytest.raises(LabelerError, match="expected NAME.KEY=VALUE"):
            parse_assignments([], bad)


def test_photographs_are_centre_cropped_to_a_square():
    image = np.zeros((40, 100, 3), np.uint8)
    image[:, 30:70] = 255  # the centre 40 columns
    out = _square(image, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8 and (out == 255).all()
    gray = _square(np.full((20, 20), 7, np.uint8), 8)
    assert gray.shape == (8, 8, 3) and (gray == 7).all()
