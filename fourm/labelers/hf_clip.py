"""``hf-clip``: a CLIP vision model's patch feature map (4M's CLIP feature-map modality).

Checkpoints: a ``CLIPVisionModel`` or a full ``CLIPModel`` (its vision tower is
loaded, the text tower ignored). The whole image is resized (bicubic, aspect
ratio not kept, so the map stays aligned with the other label maps) to
``grid * patch_size`` pixels per side, rescaled and normalised with the image
processor's ``rescale_factor``, ``image_mean`` and ``image_std``, and run with
``interpolate_pos_encoding=True``, so the patch map is natively ``grid x grid``.

Output per sample: float32 (grid, grid, D), D the vision hidden size: the last
hidden state's patch tokens (CLS dropped), row-major (row = image y), **with
the vision tower's post-layernorm applied**, as 4M's CLIP targets are
(``ln_post`` on every token). 4M also multiplies by the CLIP visual projection
(D = the joint embedding size); a vision-only checkpoint has no projection, so
it is not applied here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from fourm.labelers.base import LabelerError, RawSample, register_labeler
from fourm.labelers.hf_load import HfLabeler, check_positive_int, inference

MODEL_TYPES = ("clip_vision_model", "clip")
FEATURE = "last_hidden_state patch tokens (CLS dropped), post-layernorm, row-major (grid, grid, D)"


@register_labeler("hf-clip")
class HfClipLabeler(HfLabeler):
    name = "hf-clip"
    version = "1"
    produces = ("clip",)

    def __init__(
        self,
        model: str,
        grid: int = 8,
        **shared: Any,
    ):
        self.grid = check_positive_int(self.name, "grid", grid)
        super().__init__(model, **shared)  # device, batch_size, bf16, revision, cache_dir, allow_download
        self.input_size = self.grid * self.model.config.patch_size
        self.rescale = float(getattr(self.processor, "rescale_factor", 1 / 255))
        self.mean = [float(v) for v in self.processor.image_mean]
        self.std = [float(v) for v in self.processor.image_std]

    def _load_model(self) -> Any:
        tf = self._transformers()
        model_type = getattr(self._from_pretrained(tf.AutoConfig), "model_type", None)
        if model_type not in MODEL_TYPES:
            raise LabelerError(
                f"{self.name}: model {self.model_id!r} is a {model_type!r} checkpoint; "
                "hf-clip takes a CLIPVisionModel or CLIPModel checkpoint"
            )
        # CLIPVisionModel loads the vision tower of a full CLIPModel checkpoint too
        return self._from_pretrained(tf.CLIPVisionModel)

    def _pixels(self, samples: list[RawSample]) -> Any:
        import torch

        size = (self.input_size, self.input_size)
        images = np.stack(
            [np.asarray(Image.fromarray(s.rgb).resize(size, Image.Resampling.BICUBIC)) for s in samples]
        ).astype(np.float32)
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        normalised = (images * self.rescale - mean) / std
        return torch.from_numpy(normalised).permute(0, 3, 1, 2).contiguous().to(self.device)

    def _label_chunk(self, samples: list[RawSample]) -> list[dict[str, Any]]:
        # transformers < 5 nests the tower under .vision_model; 5 flattened it
        tower = getattr(self.model, "vision_model", self.model)
        with inference(self.device, self.bf16):
            hidden = self.model(pixel_values=self._pixels(samples), interpolate_pos_encoding=True)
            tokens = tower.post_layernorm(hidden.last_hidden_state[:, 1:])
        b, n, d = tokens.shape
        if n != self.grid * self.grid:
            raise LabelerError(f"{self.name}: the model gave {n} patch tokens, expected {self.grid}^2")
        maps = tokens.float().reshape(b, self.grid, self.grid, d).cpu().numpy()
        out = []
        for sample, features in zip(samples, maps, strict=True):
            if not np.isfinite(features).all():
                raise LabelerError(f"{self.name}: sample {sample.id}: non-finite CLIP features")
            out.append({"clip": features})
        return out

    def provenance(self) -> dict[str, Any]:
        return {
            **super().provenance(),
            "clip": {
                "feature": FEATURE,
                "post_layernorm": True,
                "grid": self.grid,
                "input_size": self.input_size,
                "resize": "bicubic (PIL), whole image, aspect ratio not kept",
                "rescale_factor": self.rescale,
                "image_mean": self.mean,
                "image_std": self.std,
            },
        }
