"""The evaluate stage's params: tasks, decoding, and the transfer (object counting) run."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, model_validator

from fourm.params.base import StrictModel

EvalTask = Literal[
    "rgb->depth", "rgb->normal", "rgb->semseg", "rgb->boxes", "rgb->caption", "caption->semseg"
]


class DecodingParams(StrictModel):
    """How one kind of target is generated (fourm/model/generate.py)."""

    method: Literal["maskgit", "roar", "autoregressive"] | None = Field(
        None, description="None: MaskGIT for image-like targets, autoregressive for sequences."
    )
    steps: int = Field(8, ge=1, description="Parallel decoding steps (MaskGIT/ROAR).")
    schedule: Literal["cosine", "linear"] = "cosine"
    temperature: float = Field(0.0, ge=0, description="0 = greedy.")
    temperature_schedule: Literal["constant", "linear", "cosine"] = "constant"
    top_k: int = Field(0, ge=0, description="0 = no top-k filter.")
    top_p: float = Field(1.0, gt=0, le=1)
    guidance: float = Field(1.0, ge=0, description="Classifier-free guidance scale; 1 = off.")


class TransferParams(StrictModel):
    """Fine-tune the pretrained encoder (a ViT on pixel patches) to count objects, vs. from scratch."""

    enabled: bool = True
    steps: int = Field(200, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_steps: int = Field(30, ge=0)
    max_count: int = Field(6, ge=1)
    eval_batch_size: int = Field(256, ge=1)


class EvaluateParams(StrictModel):
    """Downstream evaluation on a held-out split through the real tokenizers and decoding."""

    split: str = Field("test", description="Split of the labeled dataset to evaluate on.")
    max_samples: int = Field(0, ge=0, description="0 = every sample of the split.")
    tasks: tuple[EvalTask, ...] = get_args(EvalTask)  # every task
    batch_size: int = Field(50, ge=1)
    seed: int = Field(0, ge=0)
    bf16: bool = Field(True, description="Only where the hardware runs bf16 natively.")
    image: DecodingParams = DecodingParams()
    image_samples: int = Field(
        1,
        ge=1,
        description="Image-to-image tasks (rgb -> depth): score one estimate from this many sampled"
        " predictions (the mean; the renormalised mean for normals; the per-pixel majority for semseg)."
        " > 1 needs image.temperature > 0.",
    )
    sequence: DecodingParams = DecodingParams()
    presence_min_fraction: float = Field(
        0.01, gt=0, lt=1, description="caption->semseg: a class is present above this share of pixels."
    )
    gallery_samples: int = Field(6, ge=1)
    transfer: TransferParams = TransferParams()

    @model_validator(mode="after")
    def _distinct_tasks(self) -> EvaluateParams:
        if len(set(self.tasks)) != len(self.tasks) or not self.tasks:
            raise ValueError(f"tasks must be a non-empty list without repeats, got {list(self.tasks)}")
        if self.image_samples > 1 and self.image.temperature == 0:
            raise ValueError(
                f"image_samples {self.image_samples} with image.temperature 0: greedy samples are all the"
                " same; set image.temperature > 0 (e.g. 1.0) or image_samples: 1"
            )
        return self
