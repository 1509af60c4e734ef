"""``hf-semseg``: semantic segmentation from a transformers model, mapped onto the project classes.

Any ``AutoModelForSemanticSegmentation`` checkpoint (SegFormer, BEiT, DPT, UPerNet,
MobileViT, ...). Class logits are resized to the sample's H x W (bilinear), the
arg-max class is mapped through the ``mapping`` file (JSON or YAML: model label
name or id -> one of ``scene.CLASSES``), and model classes the file leaves out
become floor (0, background). Mask2Former/MaskFormer (universal segmentation) are
not supported here.
"""

from __future__ import annotations

from typing import Any

from fourm.labelers.base import RawSample, register_labeler
from fourm.labelers.hf_load import HfLabeler, inference, load_class_mapping, lookup_table, require_mapping


@register_labeler("hf-semseg")
class HfSemsegLabeler(HfLabeler):
    name = "hf-semseg"
    version = "1"
    produces = ("semseg",)
    auto_class = "AutoModelForSemanticSegmentation"

    def __init__(
        self,
        model: str,
        mapping: str | dict | None = None,
        **shared: Any,
    ):
        require_mapping(self.name, mapping)
        super().__init__(model, **shared)  # device, batch_size, bf16, revision, cache_dir, allow_download
        id2label = self.model.config.id2label
        self.mapping, self.mapping_provenance = load_class_mapping(self.name, mapping, id2label)
        import torch

        self.table = torch.as_tensor(lookup_table(self.mapping, len(id2label)), device=self.device)

    def _label_chunk(self, samples: list[RawSample]) -> list[dict[str, Any]]:
        import torch

        inputs = self._encode(samples)
        with inference(self.device, self.bf16):
            logits = self.model(**inputs).logits
        h, w = samples[0].rgb.shape[:2]
        logits = torch.nn.functional.interpolate(
            logits.float(), size=(h, w), mode="bilinear", align_corners=False
        )
        classes = self.table[logits.argmax(dim=1)]
        return [{"semseg": c} for c in classes.cpu().numpy()]

    def provenance(self) -> dict[str, Any]:
        return {**super().provenance(), "mapping": self.mapping_provenance}
