"""``hf-depth`` and ``hf-normal``: depth from a transformers depth-estimation model, normals from that depth.

Any ``AutoModelForDepthEstimation`` checkpoint (DPT / MiDaS, Depth Anything v1/v2,
GLPN, ZoeDepth, ...). Its prediction is resized back to the sample's H x W
(bilinear) and turned into the positive z-depth the depth tokenizer expects:

- ``output: relative_inverse`` (DPT/MiDaS, relative Depth Anything): the model
  predicts relative inverse depth (disparity, known up to scale and, strictly,
  shift). depth = 1 / max(disparity, disparity_floor * max disparity of the image),
  then scaled per image so that its median is ``median_depth``. Depth is thus
  relative: comparable within an image, not across images.
- ``output: metric`` (metric Depth Anything, ZoeDepth, GLPN): used as is, clamped
  below at ``min_depth``.
- ``output: auto`` (default): ``metric`` when the config says so
  (``depth_estimation_type: metric``, or a GLPN/ZoeDepth model), else ``relative_inverse``.

Normals are derived geometrically (``geometry.normals_from_depth``, a pinhole
camera of ``fov_degrees``), so ``hf-depth`` produces both and runs its model once
when params.yaml selects it for depth and normal. ``hf-normal`` is the same
labeler producing only normals, for when depth comes from another labeler. A
dedicated normal-estimation model is not offered (none has a transformers Auto
class). bf16 is off by default here: finite differences of bf16-rounded depth
would make stair-stepped normals.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fourm.labelers.base import LabelerError, RawSample, register_labeler
from fourm.labelers.geometry import normals_from_depth
from fourm.labelers.hf_load import HfLabeler, inference

OUTPUTS = ("auto", "relative_inverse", "metric")
_METRIC_MODEL_TYPES = ("glpn", "zoedepth")
NORMAL_METHOD = (
    "geometric: pinhole back-projection of the depth, central differences (edge-replicated), "
    "cross product, normalised, facing the camera; camera-space OpenGL axes"
)


def _positive(labeler: str, option: str, value: Any, below: float | None = None) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    if not ok or (below is not None and value >= below):
        bound = f" and < {below:g}" if below is not None else ""
        raise LabelerError(f"{labeler}: option {option} must be a number > 0{bound}, got {value!r}")
    return float(value)


def depth_from_prediction(
    prediction: np.ndarray, output: str, median_depth: float, disparity_floor: float, min_depth: float
) -> np.ndarray:
    """Positive, finite float32 z-depth from one (H, W) model prediction (see the module docstring)."""
    pred = np.asarray(prediction, dtype=np.float64)
    finite = np.isfinite(pred)
    if output == "metric":
        return np.maximum(np.where(finite, pred, min_depth), min_depth).astype(np.float32)
    top = float(pred[finite].max()) if finite.any() else 0.0
    floor = disparity_floor * top if top > 0 else 1.0  # no positive disparity: a flat, constant depth
    depth = 1.0 / np.maximum(np.where(finite, pred, floor), floor)
    return (depth * (median_depth / float(np.median(depth)))).astype(np.float32)


@register_labeler("hf-depth")
class HfDepthLabeler(HfLabeler):
    name = "hf-depth"
    version = "1"
    produces = ("depth", "normal")
    auto_class = "AutoModelForDepthEstimation"
    default_bf16 = False  # see the module docstring: bf16 depth makes stair-stepped normals

    def __init__(
        self,
        model: str,
        output: str = "auto",
        median_depth: float = 5.0,
        disparity_floor: float = 1e-3,
        min_depth: float = 1e-3,
        fov_degrees: float = 45.0,
        **shared: Any,
    ):
        if output not in OUTPUTS:
            raise LabelerError(
                f"{self.name}: option output must be one of {', '.join(OUTPUTS)}, got {output!r}"
            )
        self.median_depth = _positive(self.name, "median_depth", median_depth)
        self.disparity_floor = _positive(self.name, "disparity_floor", disparity_floor, below=1)
        self.min_depth = _positive(self.name, "min_depth", min_depth)
        self.fov_degrees = _positive(self.name, "fov_degrees", fov_degrees, below=180)
        super().__init__(model, **shared)  # device, batch_size, bf16, revision, cache_dir, allow_download
        self.output = output if output != "auto" else self._output_of(self.model.config)

    @staticmethod
    def _output_of(config: Any) -> str:
        kind = getattr(config, "depth_estimation_type", None)
        if kind == "metric" or getattr(config, "model_type", None) in _METRIC_MODEL_TYPES:
            return "metric"
        return "relative_inverse"

    def _label_chunk(self, samples: list[RawSample]) -> list[dict[str, Any]]:
        import torch

        inputs = self._encode(samples)
        with inference(self.device, self.bf16):
            pred = self.model(**inputs).predicted_depth
        pred = pred.float()
        if pred.ndim == 3:
            pred = pred[:, None]
        h, w = samples[0].rgb.shape[:2]
        pred = torch.nn.functional.interpolate(pred, size=(h, w), mode="bilinear", align_corners=False)
        out = []
        for p in pred[:, 0].cpu().numpy():
            depth = depth_from_prediction(
                p, self.output, self.median_depth, self.disparity_floor, self.min_depth
            )
            out.append({"depth": depth, "normal": normals_from_depth(depth, self.fov_degrees)})
        return out

    def provenance(self) -> dict[str, Any]:
        if self.output == "metric":
            depth = {"output": "metric", "normalisation": "none", "min_depth": self.min_depth}
        else:
            depth = {
                "output": "relative_inverse",
                "normalisation": "depth = 1 / max(disparity, disparity_floor * max disparity), "
                "scaled per image to median median_depth",
                "median_depth": self.median_depth,
                "disparity_floor": self.disparity_floor,
            }
        return {
            **super().provenance(),
            "depth": depth,
            "normal": {"method": NORMAL_METHOD, "fov_degrees": self.fov_degrees},
        }


@register_labeler("hf-normal")
class HfNormalLabeler(HfDepthLabeler):
    """Normals only, from the depth of its own depth model (same options as ``hf-depth``)."""

    name = "hf-normal"
    produces = ("normal",)

    def _label_chunk(self, samples: list[RawSample]) -> list[dict[str, Any]]:
        return [{"normal": out["normal"]} for out in super()._label_chunk(samples)]
