"""What every model-backed (Hugging Face transformers) labeler shares.

Finding the weights offline, hashing them for provenance, choosing the device,
running batches (bf16 autocast on CUDA only), and reading class-mapping files.

Weights come from a local directory or from the local Hugging Face cache; no
labeler downloads anything unless its ``allow_download`` option says so. A model
that is in neither place is one ``LabelerError`` that says how to pre-fetch it.
transformers is an optional dependency (``pip install 'fourm[labelers]'``),
imported only when a model-backed labeler is built.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from fourm.data.scene import CLASSES
from fourm.io import sha256_file
from fourm.labelers.base import LabelerError, RawSample

if TYPE_CHECKING:  # torch is imported when a model-backed labeler is built, not when one is registered
    import torch

WEIGHT_SUFFIXES = (".safetensors", ".bin")


def transformers_module(labeler: str) -> ModuleType:
    try:
        import transformers
    except ImportError as err:
        raise LabelerError(
            f"{labeler}: needs the transformers package: pip install 'fourm[labelers]'"
        ) from err
    return transformers


def prefetch_hint(labeler: str, model: str) -> str:
    return (
        f"on a connected machine run `huggingface-cli download {model} --local-dir DIR` "
        f"(`hf download {model} --local-dir DIR` with huggingface_hub >= 1.0), bring DIR here and set "
        f"params.yaml label.options.{labeler}.model to DIR (or set label.options.{labeler}.allow_download: "
        "true to let the labeler download it)"
    )


def resolve_model(
    labeler: str,
    model: str,
    revision: str | None = None,
    cache_dir: str | None = None,
    allow_download: bool = False,
) -> Path:
    """The local directory holding ``model``: the directory itself, or its snapshot in the HF cache.

    Without ``allow_download`` nothing is fetched: a model that is neither a local
    directory nor in the cache raises a ``LabelerError`` naming it and how to pre-fetch it."""
    if not isinstance(model, str) or not model.strip():
        raise LabelerError(f"{labeler}: option 'model' must be a local directory or a hub id, got {model!r}")
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists() or model.startswith(("/", "./", "../", "~", ".\\")):
        raise LabelerError(f"{labeler}: model {model!r} is not a directory ({prefetch_hint(labeler, model)})")
    from huggingface_hub import snapshot_download

    try:
        found = snapshot_download(
            model, revision=revision, cache_dir=cache_dir, local_files_only=not allow_download
        )
    except (OSError, ValueError) as err:  # not cached / not a valid hub id / download failed
        where = "in the local Hugging Face cache" if not allow_download else "downloadable"
        raise LabelerError(
            f"{labeler}: model {model!r} is not a local directory and not {where} "
            f"({type(err).__name__}); {prefetch_hint(labeler, model)}"
        ) from err
    return Path(found)


def weights_digest(labeler: str, directory: Path) -> tuple[str, dict[str, str]]:
    """sha256 over the weight files (``*.safetensors``, ``*.bin``) of a model directory, and each file's."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise LabelerError(f"{labeler}: no weight files (*.safetensors, *.bin) in {directory}")
    each = {p.name: sha256_file(p) for p in files}
    combined = hashlib.sha256("".join(f"{n}\t{h}\n" for n, h in each.items()).encode()).hexdigest()
    return combined, each


def pick_device(labeler: str, device: str) -> torch.device:
    """``auto`` = the first CUDA device when there is one, else the CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise LabelerError(f"{labeler}: option device={device!r} is not a torch device") from err
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise LabelerError(f"{labeler}: option device={device!r} but CUDA is not available here")
    return chosen


def check_positive_int(labeler: str, option: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LabelerError(f"{labeler}: option {option} must be a positive integer, got {value!r}")
    return value


def chunks(batch: list[RawSample], batch_size: int) -> Iterator[list[int]]:
    """Indices of ``batch`` in groups of at most ``batch_size`` samples of one image size."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, sample in enumerate(batch):
        by_shape.setdefault(tuple(sample.rgb.shape), []).append(i)
    for indices in by_shape.values():
        for start in range(0, len(indices), batch_size):
            yield indices[start : start + batch_size]


def model_inputs(model: torch.nn.Module, encoded: Mapping[str, Any], device: torch.device) -> dict:
    """The processor outputs the model's forward takes, on ``device`` (e.g. YOLOS takes no pixel_mask)."""
    params = inspect.signature(model.forward).parameters
    # a forward that names no pixel_values (a wrapper taking **kwargs) gets everything
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values()) and "pixel_values" not in params
    return {k: v.to(device) for k, v in encoded.items() if (takes_any or k in params) and hasattr(v, "to")}


@contextlib.contextmanager
def inference(device: torch.device, bf16: bool) -> Iterator[None]:
    """No autograd; bf16 autocast when asked for and on CUDA (CPU runs stay float32)."""
    import torch

    use_bf16 = bf16 and device.type == "cuda"
    with (
        torch.inference_mode(),
        torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16),
    ):
        yield


class HfLabeler(ABC):
    """Loading, options and provenance common to the transformers-backed labelers.

    Subclasses set ``name``, ``version``, ``produces``, ``auto_class`` (a transformers
    Auto class name), and implement ``_label_chunk``. Their constructors take their own
    options and pass ``**shared`` on: the options below, which ``make_labeler`` checks
    against this signature (``labeler_options`` follows ``**kwargs`` up the class chain)."""

    name = "hf"
    version = "1"
    produces: tuple[str, ...] = ()
    auto_class = ""
    default_bf16 = True

    def __init__(
        self,
        model: str,
        device: str = "auto",
        batch_size: int = 16,
        bf16: bool | None = None,
        revision: str | None = None,
        cache_dir: str | None = None,
        allow_download: bool = False,
    ):
        """``bf16``: autocast on CUDA; None takes the labeler's ``default_bf16``."""
        self.model_id = model
        self.revision = revision
        self.batch_size = check_positive_int(self.name, "batch_size", batch_size)
        self.bf16 = self.default_bf16 if bf16 is None else bool(bf16)
        self.device = pick_device(self.name, device)
        self.path = resolve_model(self.name, model, revision, cache_dir, allow_download)
        self.weights_sha256, self.weight_files = weights_digest(self.name, self.path)
        import torch

        # float32 weights whatever the checkpoint stores; bf16 only through autocast on CUDA
        self.model = self._load_model().to(device=self.device, dtype=torch.float32).eval()
        self.processor = self._load_processor()

    def _transformers(self) -> ModuleType:
        return transformers_module(self.name)

    def _from_pretrained(self, cls: Any) -> Any:
        try:
            return cls.from_pretrained(str(self.path), local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as err:
            raise LabelerError(
                f"{self.name}: cannot load {getattr(cls, '__name__', cls)} from {self.model_id!r} "
                f"({self.path}): {err}"
            ) from err

    def _load_model(self) -> torch.nn.Module:
        return self._from_pretrained(getattr(self._transformers(), self.auto_class))

    def _load_processor(self) -> Any:
        return self._from_pretrained(self._transformers().AutoImageProcessor)

    def __call__(self, batch: list[RawSample]) -> list[dict[str, Any]]:
        out: list[dict[str, Any] | None] = [None] * len(batch)
        for indices in chunks(batch, self.batch_size):
            samples = [batch[i] for i in indices]
            try:
                labels = self._label_chunk(samples)
            except LabelerError:
                raise
            except Exception as err:  # a model failing on a batch: say which labeler and samples
                ids = ", ".join(s.id for s in samples[:3]) + (" ..." if len(samples) > 3 else "")
                raise LabelerError(f"{self.name}: samples {ids}: {type(err).__name__}: {err}") from err
            for i, label in zip(indices, labels, strict=True):
                out[i] = label
        return out  # type: ignore[return-value]

    @abstractmethod
    def _label_chunk(self, samples: list[RawSample]) -> list[dict[str, Any]]:
        """Labels of one chunk of at most ``batch_size`` samples (each labeler's own model call)."""

    def _encode(self, samples: list[RawSample]) -> dict[str, torch.Tensor]:
        encoded = self.processor(images=[s.rgb for s in samples], return_tensors="pt")
        return model_inputs(self.model, encoded, self.device)

    def provenance(self) -> dict[str, Any]:
        config = self.model.config
        return {
            "name": self.name,
            "version": self.version,
            "model": self.model_id,
            "revision": self.revision,
            "model_type": getattr(config, "model_type", None),
            "architectures": list(getattr(config, "architectures", None) or [type(self.model).__name__]),
            "weights_sha256": self.weights_sha256,
            "weight_files": self.weight_files,
            "bf16": self.bf16,
        }


def require_mapping(labeler: str, mapping: str | Mapping | None) -> None:
    """Refuse a missing mapping option or file before any model is loaded."""
    if mapping is None:
        raise LabelerError(
            f"{labeler}: option 'mapping' is required: a JSON/YAML file mapping the model's labels "
            f"(names or ids) to project classes ({', '.join(CLASSES)})"
        )
    if not isinstance(mapping, Mapping) and not Path(mapping).expanduser().is_file():
        raise LabelerError(f"{labeler}: mapping file {str(mapping)!r} does not exist")


def load_class_mapping(
    labeler: str, mapping: str | Mapping | None, id2label: Mapping[int, str], boxes: bool = False
) -> tuple[dict[int, int], dict[str, Any]]:
    """Model class id -> project class id (``scene.CLASSES``) from a mapping file, and its provenance.

    The file (JSON or YAML) maps model label names, or model class ids, to project
    class names. For semantic segmentation unmapped model classes become floor
    (background, id 0); for boxes (``boxes=True``) they are dropped, and floor is not
    a box class. Unknown project classes and keys that name no model class are errors.
    """
    require_mapping(labeler, mapping)
    if isinstance(mapping, Mapping):
        table, source = dict(mapping), {"sha256": None}
    else:
        path = Path(mapping).expanduser()
        text = path.read_text()
        try:
            table = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as err:
            raise LabelerError(f"{labeler}: mapping file {path}: cannot parse: {err}") from err
        source = {"sha256": hashlib.sha256(text.encode()).hexdigest()}
    if not isinstance(table, dict) or not table:
        raise LabelerError(f"{labeler}: mapping {mapping!r} must be a non-empty table model label -> class")
    id2label = {int(k): str(v) for k, v in id2label.items()}
    by_name: dict[str, list[int]] = {}
    for k, v in id2label.items():
        by_name.setdefault(v, []).append(k)
    allowed = CLASSES[1:] if boxes else CLASSES
    resolved: dict[int, int] = {}
    for key, cls in table.items():
        if cls not in allowed:
            what = "box class" if boxes else "class"
            raise LabelerError(
                f"{labeler}: mapping {key!r} -> {cls!r}: not a project {what} (one of {', '.join(allowed)})"
            )
        if str(key) in by_name:
            ids = by_name[str(key)]
        elif isinstance(key, int) or (isinstance(key, str) and key.strip().lstrip("-").isdigit()):
            ids = [int(key)]
            if ids[0] not in id2label:
                raise LabelerError(f"{labeler}: mapping key {key!r}: the model has no class id {key}")
        else:
            raise LabelerError(
                f"{labeler}: mapping key {key!r} names no class of the model "
                f"(its labels: {', '.join(sorted(by_name)[:20])}{' ...' if len(by_name) > 20 else ''})"
            )
        for i in ids:
            resolved[i] = CLASSES.index(cls)
    source["classes"] = {f"{i} {id2label[i]}": CLASSES[c] for i, c in sorted(resolved.items())}
    return resolved, source


def lookup_table(resolved: Mapping[int, int], num_labels: int) -> np.ndarray:
    """A uint8 table model class id -> project class id, unmapped ids -> 0 (floor)."""
    table = np.zeros(max(num_labels, max(resolved, default=0) + 1), dtype=np.uint8)
    for model_id, class_id in resolved.items():
        table[model_id] = class_id
    return table
