"""Typed models of params.yaml, the one source of every stage's parameters.

Loading rejects unknown keys and bad values; the message names the file and
the dotted key path, e.g. ``params.yaml: generate.resolution: ...``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, model_validator

from fourm.params.base import SPLITS, SplitFractions, StrictModel
from fourm.params.evaluate import DecodingParams, EvalTask, EvaluateParams, TransferParams
from fourm.params.kubernetes import KubernetesParams, PodParams, ShardParallelParams, TolerationParams

__all__ = [  # the models of the submodules are part of this module's interface
    "SPLITS",
    "DecodingParams",
    "EvalTask",
    "EvaluateParams",
    "KubernetesParams",
    "PodParams",
    "ShardParallelParams",
    "SplitFractions",
    "StrictModel",
    "TolerationParams",
    "TransferParams",
]

MASKING_SENTINELS = 32  # sentinel tokens span masking uses (fourm/model/masking_config.py)


class SourceParams(StrictModel):
    """Where the raw dataset comes from: synthetic scenes or the user's images (one params switch)."""

    kind: Literal["synthetic", "images"] = Field(
        "synthetic", description="synthetic: render scenes (generate.*); images: ingest `path` (ingest.*)."
    )
    path: str = Field(
        "fourm/data/synthetic.py",
        description="What the source stage reads, a DVC dependency: for images a folder, .tar shard(s) or "
        "s3:// prefix (remote://<dvc remote>/prefix for a configured remote); for synthetic, the generator.",
    )

    @model_validator(mode="after")
    def _images_need_a_path(self) -> SourceParams:
        if self.kind == "images" and self.path.endswith(".py"):
            raise ValueError(f"kind images reads images from path, not from {self.path!r}")
        return self


class GenerateParams(StrictModel):
    """Synthetic scene generation (the embedded default dataset)."""

    seed: int = Field(0, ge=0)
    num_scenes: int = Field(2000, ge=1)
    resolution: int = Field(64, ge=16, le=256)
    splits: SplitFractions = SplitFractions()
    min_objects: int = Field(1, ge=1, le=6)
    max_objects: int = Field(6, ge=1, le=6)
    samples_per_shard: int = Field(256, ge=1)
    workers: int = Field(2, ge=1, description="Processes used to render; results do not depend on it.")

    @model_validator(mode="after")
    def _objects_range(self) -> GenerateParams:
        if self.min_objects > self.max_objects:
            raise ValueError(
                f"min_objects ({self.min_objects}) must not exceed max_objects ({self.max_objects})"
            )
        return self


LabelModality = Literal["depth", "normal", "semseg", "instance", "boxes", "edges", "clip", "caption"]


class LabelParams(ShardParallelParams):
    """Pseudo-labeling: which labeler produces each label modality."""

    labelers: dict[LabelModality, str] = Field(
        default_factory=lambda: {
            "depth": "oracle",
            "normal": "oracle",
            "semseg": "oracle",
            "instance": "oracle",
            "boxes": "oracle",
        }
    )
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Labeler name -> its constructor options, e.g. {'hf-depth': {'model': 'dir/or/hub-id'}}.",
    )
    batch_size: int = Field(64, ge=1)
    workers: int = Field(
        1, ge=1, description="Processes labeling shards on this machine; each builds its labelers once."
    )


class ValidateParams(StrictModel):
    """Validation policy shared by the raw and labeled suites."""

    max_bad_fraction: float = Field(0.01, ge=0, le=1)
    caption_min_chars: int = Field(
        1, ge=0, description="0: sources without captions pass (a captioner fills them in the label stage)."
    )
    caption_max_chars: int = Field(600, ge=1)
    normal_tolerance: float = Field(1e-3, gt=0, description="Allowed | |n| - 1 | per pixel.")
    max_examples: int = Field(10, ge=1, description="Failing sample ids listed per rule.")


class VQVAEParams(StrictModel):
    """VQ-VAE tokenizer architecture and training budget (per image-like modality)."""

    quantizer: Literal["vq", "fsq"] = "vq"
    downsample: int = Field(8, description="Pixels per token side: 64x64 -> 8x8 tokens.")
    patch: int = Field(2, ge=1, description="Pixels folded into channels before the first conv.")
    width: int = Field(32, ge=8, description="Channels after the stem (x2, x4 further down).")
    code_dim: int = Field(32, ge=2)
    fsq_levels: tuple[int, ...] = Field(
        (4, 4, 4, 4, 4), description="FSQ levels; their product is the vocab."
    )
    ema_decay: float = Field(0.99, gt=0, lt=1)
    dead_code_threshold: float = Field(
        0.1, ge=0, description="EMA hits per batch below which a code restarts."
    )
    commitment: float = Field(0.25, ge=0)
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(100, ge=0)
    flip: bool = Field(True, description="Random left-right mirroring while training.")
    bf16: bool = Field(True, description="bf16 autocast (CPU with AMX, or GPU).")
    seed: int = Field(0, ge=0)
    log_every: int = Field(25, ge=1)
    checkpoint_every: int = Field(500, ge=1)

    @model_validator(mode="after")
    def _power_of_two(self) -> VQVAEParams:
        # 1: the values are at the token grid already (feature maps such as clip)
        if self.downsample < 1 or self.downsample & (self.downsample - 1):
            raise ValueError(f"downsample must be a power of two, got {self.downsample}")
        return self


class TextParams(StrictModel):
    """The WordPiece text tokenizer (captions) and the box sequences sharing its vocabulary."""

    vocab_size: int = Field(
        8192, ge=1, le=8192, description="WordPiece trainer maximum, special tokens and alphabet included."
    )
    min_frequency: int = Field(1, ge=1, description="A merge must occur this often to be learned.")
    num_sentinels: int = Field(32, ge=0, le=1000, description="T5 sentinels [S_i] for span masking.")
    coord_bins: int = Field(
        65,
        ge=2,
        le=4097,
        description="Box coordinate bins; resolution + 1 gives every pixel edge its own bin.",
    )


class TokenizersParams(StrictModel):
    """Tokenizer training and evaluation."""

    vqvae: VQVAEParams = VQVAEParams()
    overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="modality -> VQ-VAE params that differ from `vqvae`"
    )
    text: TextParams = TextParams()
    image_modalities: tuple[str, ...] = Field(
        ("rgb", "depth", "normal", "semseg"),
        description="The VQ-VAE tokenizers trained (dvc.yaml's train-tokenizer foreach).",
    )
    eval_split: Literal["train", "val", "test"] = "val"
    eval_preview_samples: int = Field(8, ge=1, description="Rows in each reconstruction grid PNG.")

    @model_validator(mode="after")
    def _image_modalities_known(self) -> TokenizersParams:
        from fourm.modalities import ModalityError, get_modality

        for name in self.image_modalities:
            try:
                tokenizer = get_modality(name).tokenizer
            except ModalityError as err:
                raise ValueError(f"image_modalities: {err}") from None
            if tokenizer != "vqvae":
                raise ValueError(f"image_modalities: {name!r} is not tokenized by a VQ-VAE")
        if len(set(self.image_modalities)) != len(self.image_modalities):
            raise ValueError(f"image_modalities: repeated names in {list(self.image_modalities)}")
        return self

    def vqvae_for(self, modality: str) -> VQVAEParams:
        """The VQ-VAE params of ``modality``: ``vqvae`` with its overrides applied (validated)."""
        merged = {**self.vqvae.model_dump(), **self.overrides.get(modality, {})}
        return VQVAEParams.model_validate(merged)

    @model_validator(mode="after")
    def _overrides_valid(self) -> TokenizersParams:
        for modality in self.overrides:
            try:
                self.vqvae_for(modality)
            except ValidationError as err:
                first = err.errors()[0]
                loc = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"overrides.{modality}.{loc}: {first['msg']}") from None
        return self


TokenModality = Literal["rgb", "depth", "normal", "semseg", "edges", "clip", "caption", "boxes"]


class TokenizeParams(ShardParallelParams):
    """The tokenize stage: which modalities become token shards."""

    modalities: tuple[TokenModality, ...] = ("rgb", "depth", "normal", "semseg", "caption", "boxes")
    publish: bool = Field(True, description="Also upload the token set to the tokens bucket in S3.")

    @model_validator(mode="after")
    def _parts_publish(self) -> TokenizeParams:
        if self.launcher == "kubernetes" and not self.publish:
            raise ValueError("launcher kubernetes hands shards over through S3: it needs publish: true")
        return self

    @model_validator(mode="after")
    def _unique(self) -> TokenizeParams:
        if len(set(self.modalities)) != len(self.modalities) or not self.modalities:
            raise ValueError(f"modalities must be distinct and non-empty, got {list(self.modalities)}")
        return self


ModelSize = Literal["debug", "tiny", "demo", "b", "l", "xl"]


class PretrainModelParams(StrictModel):
    """Which 4M: a named size (fourm/model/config.py SIZES) and the modalities it reads and predicts."""

    size: ModelSize = "demo"
    inputs: tuple[TokenModality, ...] = ("rgb", "depth", "normal", "semseg", "caption", "boxes")
    targets: tuple[TokenModality, ...] = ("rgb", "depth", "normal", "semseg", "caption", "boxes")
    feed_forward: Literal["gelu", "swiglu"] = "gelu"
    qk_norm: bool = False
    bias: bool = True


class MaskingParams(StrictModel):
    """Per-sample token budgets split across modalities by a mixture of symmetric Dirichlets."""

    input_budget: int = Field(128, ge=1, description="Encoder tokens per sample.")
    target_budget: int = Field(128, ge=1, description="Decoder tokens per sample.")
    alphas: tuple[float, ...] = Field(
        (0.2, 0.5, 1.0), description="Mixture of symmetric Dirichlet concentrations, one picked per sample."
    )
    input_alphas: dict[TokenModality, float] = Field(
        default_factory=dict,
        description="Per-modality alpha for inputs (overrides the mixture; 0 = never input).",
    )
    target_alphas: dict[TokenModality, float] = Field(
        default_factory=dict, description="Per-modality alpha for targets (0 = never a target)."
    )
    mean_span_length: float = Field(3.0, gt=0, description="T5 span masking of captions and boxes.")
    input_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Share of samples trained with no input at all, for classifier-free guidance.",
    )

    @model_validator(mode="after")
    def _positive(self) -> MaskingParams:
        if not self.alphas or any(a <= 0 for a in self.alphas):
            raise ValueError(f"alphas must be a non-empty list of positive numbers, got {list(self.alphas)}")
        bad = {k: v for k, v in {**self.input_alphas, **self.target_alphas}.items() if v < 0}
        if bad:
            raise ValueError(f"per-modality alphas must be >= 0, got {bad}")
        return self


class PretrainParams(StrictModel):
    """4M pretraining: model, masking, optimisation, checkpoints, processes."""

    model: PretrainModelParams = PretrainModelParams()
    masking: MaskingParams = MaskingParams()
    steps: int = Field(1500, ge=1)
    batch_size: int = Field(64, ge=1, description="Global batch (all processes and accumulation steps).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    lr: float = Field(1e-3, gt=0)
    min_lr_factor: float = Field(0.1, ge=0, le=1, description="Cosine schedule ends at lr * this.")
    weight_decay: float = Field(0.05, ge=0)
    warmup_steps: int = Field(100, ge=0)
    clip_grad: float = Field(1.0, gt=0)
    bf16: bool = Field(
        True, description="bf16 autocast where the hardware runs it natively (fourm/precision.py)."
    )
    seed: int = Field(0, ge=0)
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(250, ge=1)
    eval_batches: int = Field(4, ge=1)
    checkpoint_every: int = Field(250, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    upload_checkpoints: bool = Field(True, description="Mirror checkpoints to the checkpoints bucket in S3.")
    loader_workers: int = Field(1, ge=0)
    buffer_size: int = Field(512, ge=0, description="Shuffle window of the streaming loader.")
    processes: int = Field(1, ge=1, description="Local launcher: torchrun processes (DDP).")
    strategy: Literal["ddp", "fsdp"] = "ddp"
    launcher: Literal["local", "kubernetes"] = Field(
        "local", description="Where training runs: this machine (torchrun) or Kubernetes pods."
    )
    kubernetes: KubernetesParams = KubernetesParams()

    @property
    def world_size(self) -> int:
        """Training processes in all: ``processes`` locally, nodes x procs per node on Kubernetes."""
        return self.kubernetes.world_size if self.launcher == "kubernetes" else self.processes

    @model_validator(mode="after")
    def _batch_divides(self) -> PretrainParams:
        if self.batch_size % (self.grad_accum * self.world_size):
            raise ValueError(
                f"batch_size {self.batch_size} must be divisible by grad_accum x processes "
                f"({self.grad_accum} x {self.world_size}, launcher {self.launcher})"
            )
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below steps ({self.steps})")
        return self


class MetricBounds(StrictModel):
    """Bounds a metric must meet; either side may be open."""

    min: float | None = None
    max: float | None = None


class RegistryParams(StrictModel):
    """Promotion gates of the model registry."""

    thresholds: dict[str, MetricBounds] = Field(
        default_factory=dict, description="metric -> bounds, checked when promoting to staging or production"
    )
    compare_metric: str | None = Field(
        None, description="metric a new production version must not be worse on than the current one"
    )
    higher_is_better: bool = True


class RegisterParams(StrictModel):
    """The model version the pipeline's last stage registers."""

    model_name: str = Field(
        "fourm-4m", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Registry model the version joins."
    )
    description: str = Field("", description="Free text stored with the version (shown in its card).")


Channel = Annotated[int, Field(ge=0, le=255)]


class IngestParams(StrictModel):
    """Ingesting real images (a folder, webdataset tars, s3://) into a raw dataset."""

    resolution: int = Field(64, ge=16, le=256, description="Side of the square RGB images written.")
    mode: Literal["center_crop", "pad"] = Field(
        "center_crop",
        description="center_crop: shorter side to resolution, centre crop; "
        "pad: longer side to resolution, centred on pad_color.",
    )
    resample: Literal["lanczos", "bicubic"] = "lanczos"
    pad_color: tuple[Channel, Channel, Channel] = Field((0, 0, 0), description="RGB fill of mode pad.")
    min_size: int = Field(32, ge=1, description="Images whose shorter side is smaller are quarantined.")
    captions: str | None = Field(
        None, description="A CSV (file,caption) or JSONL ({file, caption}) caption mapping."
    )
    source_format: Literal["auto", "images", "webdataset"] = Field(
        "auto", description="auto: webdataset for s3://, globs, .tar files and folders holding only tars."
    )
    splits: SplitFractions = SplitFractions()
    samples_per_shard: int = Field(256, ge=1)
    name: str | None = Field(None, description="Dataset name in the card (default: ingest-<source name>).")


class Params(StrictModel):
    """All of params.yaml."""

    source: SourceParams = SourceParams()
    generate: GenerateParams = GenerateParams()
    ingest: IngestParams = IngestParams()
    label: LabelParams = LabelParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    registry: RegistryParams = RegistryParams()
    tokenizers: TokenizersParams = TokenizersParams()
    tokenize: TokenizeParams = TokenizeParams()
    pretrain: PretrainParams = PretrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    register_: RegisterParams = Field(RegisterParams(), alias="register")  # BaseModel.register is ABCMeta's

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _sentinels_for_masking(self) -> Params:
        used = {*self.pretrain.model.inputs, *self.pretrain.model.targets} & {"caption", "boxes"}
        if used and self.tokenizers.text.num_sentinels < MASKING_SENTINELS:
            raise ValueError(
                f"tokenizers.text.num_sentinels ({self.tokenizers.text.num_sentinels}) must be at least "
                f"{MASKING_SENTINELS}: pretraining span-masks {sorted(used)} with up to {MASKING_SENTINELS} "
                "sentinel tokens"
            )
        return self


class ParamsError(ValueError):
    """params.yaml is missing, malformed or has a bad value."""


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        detail = e["msg"]
        if e["type"] == "extra_forbidden":
            detail = "unknown key"
        elif "input" in e and not isinstance(e["input"], dict):
            detail += f" (got {e['input']!r})"
        lines.append(f"{path}: {loc}: {detail}")
    return "\n".join(lines)


def parse_params(data: dict, source: Path | str = "params.yaml") -> Params:
    """Validate a params mapping; errors name ``source`` and the dotted key."""
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ParamsError(_format_errors(Path(source), err)) from None


def load_params(path: Path | str = "params.yaml") -> Params:
    """Load and validate params.yaml."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return parse_params(data, path)


def dump_params(params: Params) -> dict:
    """Params as the plain mapping params.yaml holds."""
    return params.model_dump(by_alias=True, mode="json")
