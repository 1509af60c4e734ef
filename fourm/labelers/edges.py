"""``canny``: Canny edges of the RGB, as 4M-21's edge modality (no model).

``skimage.feature.canny`` on ``skimage.color.rgb2gray`` of the sample (a float
image in [0, 1], so absolute thresholds are in those units; with
``use_quantiles`` they are quantiles of the gradient magnitude instead). Output
per sample: a uint8 (H, W) map, 1 on edge pixels and 0 elsewhere.

scikit-image is imported when the labeler is built, not when it is registered.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fourm.labelers.base import LabelerError, RawSample, register_labeler


def _number(option: str, value: Any, allow_none: bool = False, top: float | None = None) -> float | None:
    """``value`` as a float in [0, top] (or None when allowed); else a LabelerError naming ``option``."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not 0 <= value <= (math.inf if top is None else top):
        what = (
            "a finite number >= 0" if top is None else f"a quantile in [0, {top:g}] (use_quantiles is true)"
        )
        raise LabelerError(f"canny: option {option} must be {what}{' or null' * allow_none}, got {value!r}")
    return float(value)


@register_labeler("canny")
class CannyLabeler:
    name = "canny"
    version = "1"
    produces = ("edges",)

    def __init__(
        self,
        sigma: float = 1.0,
        low_threshold: float | None = None,
        high_threshold: float | None = None,
        use_quantiles: bool = False,
    ):
        self.sigma = _number("sigma", sigma)
        top = 1.0 if use_quantiles is True else None  # quantiles lie in [0, 1]
        self.low_threshold = _number("low_threshold", low_threshold, allow_none=True, top=top)
        self.high_threshold = _number("high_threshold", high_threshold, allow_none=True, top=top)
        if not isinstance(use_quantiles, bool):
            raise LabelerError(f"canny: option use_quantiles must be true or false, got {use_quantiles!r}")
        self.use_quantiles = use_quantiles
        low, high = self.low_threshold, self.high_threshold
        if low is not None and high is not None and low > high:
            raise LabelerError(
                f"canny: option low_threshold ({low:g}) must not exceed high_threshold ({high:g})"
            )
        try:
            import skimage
            from skimage.color import rgb2gray
            from skimage.feature import canny
        except ImportError as err:
            raise LabelerError("canny: needs the scikit-image package: pip install scikit-image") from err
        self._skimage_version = skimage.__version__
        self._rgb2gray, self._canny = rgb2gray, canny

    def __call__(self, batch: list[RawSample]) -> list[dict[str, Any]]:
        return [{"edges": self.edges(sample.rgb)} for sample in batch]

    def edges(self, rgb: np.ndarray) -> np.ndarray:
        """The uint8 (H, W) 0/1 edge map of one (H, W, 3) RGB image."""
        found = self._canny(
            self._rgb2gray(rgb),
            sigma=self.sigma,
            low_threshold=self.low_threshold,
            high_threshold=self.high_threshold,
            use_quantiles=self.use_quantiles,
        )
        return found.astype(np.uint8)

    def provenance(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "model": None,
            "weights_sha256": None,
            "method": "skimage.feature.canny(skimage.color.rgb2gray(rgb)); 1 = edge, 0 = not",
            "scikit_image": self._skimage_version,
            "sigma": self.sigma,
            "low_threshold": self.low_threshold,
            "high_threshold": self.high_threshold,
            "use_quantiles": self.use_quantiles,
        }
