"""``hf-boxes``: object boxes from a transformers detector, mapped onto the project classes.

Any ``AutoModelForObjectDetection`` checkpoint whose image processor has
``post_process_object_detection`` (DETR, Conditional/Deformable DETR, YOLOS,
RT-DETR, ...). Detections scoring at least ``threshold`` are kept when the
``mapping`` file (JSON or YAML: model label name or id -> one of the object
classes ``scene.CLASSES[1:]``) maps their class; the others are dropped. Boxes
are ``{"class", "bbox": [x0, y0, x1, y1], "score"}`` in pixels of the sample
(floats, 0.01 px), clipped to the image, highest score first; boxes under one
pixel wide or high after clipping are dropped.

It produces boxes only: a detector gives no instance masks, so the label set
gets an ``instance`` member only when another labeler (e.g. ``oracle``) is
selected for it (nothing downstream of the label stage reads ``instance``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fourm.data.scene import CLASSES
from fourm.labelers.base import LabelerError, RawSample, register_labeler
from fourm.labelers.hf_load import HfLabeler, inference, load_class_mapping, require_mapping

MIN_BOX_PIXELS = 1.0  # narrower or lower boxes (after clipping) are dropped


def clip_boxes(
    boxes: np.ndarray, scores: np.ndarray, classes: list[str], height: int, width: int
) -> list[dict[str, Any]]:
    """Box dicts clipped to the image, best score first; boxes under a pixel wide or high are dropped."""
    out = []
    for (x0, y0, x1, y1), score, cls in zip(boxes.tolist(), scores.tolist(), classes, strict=True):
        x0, x1 = (round(min(max(v, 0.0), float(width)), 2) for v in (x0, x1))
        y0, y1 = (round(min(max(v, 0.0), float(height)), 2) for v in (y0, y1))
        if x1 - x0 >= MIN_BOX_PIXELS and y1 - y0 >= MIN_BOX_PIXELS:
            out.append({"class": cls, "bbox": [x0, y0, x1, y1], "score": round(float(score), 4)})
    return sorted(out, key=lambda b: -b["score"])


@register_labeler("hf-boxes")
class HfBoxesLabeler(HfLabeler):
    name = "hf-boxes"
    version = "1"
    produces = ("boxes",)
    auto_class = "AutoModelForObjectDetection"

    def __init__(
        self,
        model: str,
        mapping: str | dict | None = None,
        threshold: float = 0.5,
        **shared: Any,
    ):
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
            raise LabelerError(f"{self.name}: option threshold must be a number in [0, 1], got {threshold!r}")
        self.threshold = float(threshold)
        require_mapping(self.name, mapping)
        super().__init__(model, **shared)  # device, batch_size, bf16, revision, cache_dir, allow_download
        if not hasattr(self.processor, "post_process_object_detection"):
            raise LabelerError(
                f"{self.name}: the image processor of {model!r} ({type(self.processor).__name__}) "
                "has no post_process_object_detection"
            )
        self.mapping, self.mapping_provenance = load_class_mapping(
            self.name, mapping, self.model.config.id2label, boxes=True
        )

    def _label_chunk(self, samples: list[RawSample]) -> list[dict[str, Any]]:
        inputs = self._encode(samples)
        with inference(self.device, self.bf16):
            outputs = self.model(**inputs)
        for key in ("logits", "pred_boxes"):
            if getattr(outputs, key, None) is not None:
                setattr(outputs, key, getattr(outputs, key).float())
        h, w = samples[0].rgb.shape[:2]
        detections = self.processor.post_process_object_detection(
            outputs, threshold=self.threshold, target_sizes=[(h, w)] * len(samples)
        )
        out = []
        for det in detections:
            labels = det["labels"].cpu().numpy()
            keep = np.array([int(k) in self.mapping for k in labels], dtype=bool)
            classes = [CLASSES[self.mapping[int(k)]] for k in labels[keep]]
            boxes = det["boxes"].float().cpu().numpy()[keep]
            scores = det["scores"].float().cpu().numpy()[keep]
            out.append({"boxes": clip_boxes(boxes, scores, classes, h, w)})
        return out

    def provenance(self) -> dict[str, Any]:
        return {**super().provenance(), "threshold": self.threshold, "mapping": self.mapping_provenance}
