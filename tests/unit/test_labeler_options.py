"""Labeler options are checked against the constructor chain before anything is loaded."""

from __future__ import annotations

import pytest

from fourm.labelers import stage as _stage  # noqa: F401  (registers every labeler)
from fourm.labelers.base import LabelerError, labeler_options, make_labeler

pytestmark = pytest.mark.unit

SHARED = ["device", "batch_size", "bf16", "revision", "cache_dir", "allow_download"]


@pytest.mark.parametrize("name", ["hf-depth", "hf-normal", "hf-semseg", "hf-boxes", "hf-caption", "hf-clip"])
def test_model_backed_labelers_take_their_own_and_the_shared_options(name: str) -> None:
    options = labeler_options(name)
    assert options[0] == "model" and options[-len(SHARED) :] == SHARED


def test_unknown_and_missing_options_are_refused_before_loading() -> None:
    with pytest.raises(
        LabelerError, match=r"unknown option 'gird' for labeler 'hf-clip'; it takes: model, grid, "
    ):
        make_labeler("hf-clip", {"model": "/nowhere", "gird": 8})
    with pytest.raises(LabelerError, match=r"labeler 'hf-depth' needs option 'model'"):
        make_labeler("hf-depth", {"batch_size": 2})
    with pytest.raises(LabelerError, match="canny: option sigma must be"):
        make_labeler("canny", {"sigma": -1})
