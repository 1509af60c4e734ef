"""The ``oracle`` labeler: exact labels for synthetic samples, from their scene graph.

It re-renders the scene the sample came from and returns the renderer's ground
truth. It refuses a sample whose stored RGB is not the scene's render (a real
photograph, or an edited image), since its labels would then be wrong.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fourm.data.raycast import boxes_from_instances, render_scene
from fourm.data.scene import Scene
from fourm.labelers.base import LabelerError, RawSample, register_labeler


@register_labeler("oracle")
class OracleLabeler:
    name = "oracle"
    version = "1"
    produces = ("depth", "normal", "semseg", "instance", "boxes")

    def __call__(self, batch: list[RawSample]) -> list[dict[str, Any]]:
        return [self._label(sample) for sample in batch]

    def _label(self, sample: RawSample) -> dict[str, Any]:
        if sample.scene is None:
            raise LabelerError(
                f"oracle: sample {sample.id}: no scene graph; oracle labels only synthetic samples"
            )
        scene = Scene.from_dict(sample.scene)
        rendered = render_scene(scene, sample.rgb.shape[0])
        if not np.array_equal(rendered.rgb, sample.rgb):
            raise LabelerError(f"oracle: sample {sample.id}: stored RGB differs from the scene's render")
        return {
            "depth": rendered.depth,
            "normal": rendered.normal,
            "semseg": rendered.semseg,
            "instance": rendered.instance,
            "boxes": boxes_from_instances(rendered.instance, scene),
        }

    def provenance(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "model": None, "weights_sha256": None}
