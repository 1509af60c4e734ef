"""Image-like modalities through a VQ-VAE: what their values mean, and the tokenizer object.

Each modality has a codec that turns dataset values into network inputs, scores
a reconstruction with the loss that suits it, and turns network outputs back
into dataset values:

- rgb: uint8 (H, W, 3) -> [-1, 1]; loss L1 + MSE;
- depth: float z-depth (H, W) -> log-depth standardised with train-split
  statistics; loss L1 on that scale;
- normal: unit vectors (H, W, 3); loss L1 + angular (1 - cos); outputs renormalised;
- semseg: class ids (H, W) -> one-hot in, per-class logits out; loss cross-entropy;
- edges: 0/1 (H, W) -> one channel; loss binary cross-entropy on logits; out: logit > 0;
- clip: float feature maps (G, G, D) -> standardised per channel with train-split
  statistics (D, the channel count, is the labeler model's width: set by the data);
  loss MSE + (1 - cosine similarity) over channels, as 4M tokenizes CLIP features.

``ImageTokenizer`` implements the ``Tokenizer`` protocol and is saved as a
directory: ``tokenizer.json`` (modality, vocabulary, grid, model config,
normalisation) and ``weights.pt``.
"""

from __future__ import annotations

import io
import json
from abc import ABC, abstractmethod
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fourm.data.scene import CLASSES
from fourm.io import atomic_write_bytes, canonical_json
from fourm.modalities import Modality, get_modality
from fourm.precision import use_bf16
from fourm.tokenizers.base import CONFIG_FILE, TokenizerError
from fourm.tokenizers.vqvae import VQVAE, VQVAEConfig

WEIGHTS_FILE = "weights.pt"
FORMAT_VERSION = 1


class ImageCodec(ABC):
    """Dataset values <-> network tensors, and the reconstruction loss, for one modality."""

    in_channels = 3
    out_channels = 3

    def __init__(self, stats: dict[str, float] | None = None):
        self.stats = stats or {}

    def fit(self, values: np.ndarray) -> dict[str, float]:
        """Normalisation statistics from training values (none by default)."""
        return {}

    @abstractmethod
    def to_input(self, values: np.ndarray) -> torch.Tensor:
        """Dataset values (B, H, W[, C]) -> network input (B, C_in, H, W)."""

    def target(self, values: np.ndarray) -> torch.Tensor:
        """What the decoder output is compared with (the input, unless the loss needs other)."""
        return self.to_input(values)

    def hflip(self, x: torch.Tensor) -> torch.Tensor:
        """Mirror a batch of inputs or targets left-right (an augmentation)."""
        return x.flip(-1)

    @abstractmethod
    def loss(self, out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Reconstruction loss of decoder output ``out`` against ``target``, and its parts for logging."""

    @abstractmethod
    def from_output(self, out: torch.Tensor) -> np.ndarray:
        """Decoder output (B, C_out, H, W) -> dataset values (B, H, W[, C])."""


class RGBCodec(ImageCodec):
    def to_input(self, values: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(values)).permute(0, 3, 1, 2).float()
        return x / 127.5 - 1.0

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        l1 = F.l1_loss(out, target)
        mse = F.mse_loss(out, target)
        return l1 + mse, {"l1": float(l1.detach()), "mse": float(mse.detach())}

    def from_output(self, out: torch.Tensor) -> np.ndarray:
        x = ((out.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1).numpy()


class DepthCodec(ImageCodec):
    in_channels = out_channels = 1

    def fit(self, values: np.ndarray) -> dict[str, float]:
        logd = np.log(np.maximum(values.astype(np.float64), 1e-6))
        return {"log_mean": float(logd.mean()), "log_std": float(logd.std() or 1.0)}

    def to_input(self, values: np.ndarray) -> torch.Tensor:
        logd = torch.from_numpy(np.ascontiguousarray(values)).float().clamp_min(1e-6).log()
        return ((logd - self.stats["log_mean"]) / self.stats["log_std"]).unsqueeze(1)

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        l1 = F.l1_loss(out, target)
        return l1, {"l1": float(l1.detach())}

    def from_output(self, out: torch.Tensor) -> np.ndarray:
        logd = out.float().squeeze(1) * self.stats["log_std"] + self.stats["log_mean"]
        return logd.exp().numpy().astype(np.float32)


def channel_cosine(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity over dim 1 of (B, C, H, W) maps, as ``F.cosine_similarity(a, b, dim=1)``.

    Written as sums of products: on the CPU, PyTorch's norm over a strided channel dim
    (what ``cosine_similarity`` runs) is ~80x slower than these reductions, and took a
    fifth of a normal tokenizer's training step."""
    dot = (a * b).sum(1)
    return dot / (a.square().sum(1) * b.square().sum(1)).sqrt().clamp_min(eps)


class NormalCodec(ImageCodec):
    def to_input(self, values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(values)).permute(0, 3, 1, 2).float()

    def hflip(self, x: torch.Tensor) -> torch.Tensor:
        flipped = x.flip(-1)
        return torch.cat([-flipped[:, :1], flipped[:, 1:]], dim=1)  # mirroring negates n_x

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        l1 = F.l1_loss(out, target)
        angular = (1 - channel_cosine(out.float(), target.float())).mean()
        return l1 + angular, {"l1": float(l1.detach()), "angular": float(angular.detach())}

    def from_output(self, out: torch.Tensor) -> np.ndarray:
        out = out.float()  # F.normalize(out, dim=1), without its slow strided norm (channel_cosine)
        unit = out / out.square().sum(1, keepdim=True).sqrt().clamp_min(1e-12)
        return unit.permute(0, 2, 3, 1).numpy().astype(np.float32)


class SemsegCodec(ImageCodec):
    in_channels = out_channels = len(CLASSES)

    def to_input(self, values: np.ndarray) -> torch.Tensor:
        ids = torch.from_numpy(np.ascontiguousarray(values)).long()
        if int(ids.max()) >= self.in_channels:
            raise TokenizerError(f"semseg: class id {int(ids.max())} outside [0, {self.in_channels})")
        return F.one_hot(ids, self.in_channels).permute(0, 3, 1, 2).float()

    def target(self, values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(values)).long()

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        ce = F.cross_entropy(out.float(), target)
        return ce, {"ce": float(ce.detach())}

    def from_output(self, out: torch.Tensor) -> np.ndarray:
        return out.argmax(dim=1).to(torch.uint8).numpy()


class EdgesCodec(ImageCodec):
    in_channels = out_channels = 1

    def to_input(self, values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(values)).float().clamp(0, 1).unsqueeze(1)

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        bce = F.binary_cross_entropy_with_logits(out.float(), target)
        return bce, {"bce": float(bce.detach())}

    def from_output(self, out: torch.Tensor) -> np.ndarray:
        return (out.float().squeeze(1) > 0).to(torch.uint8).numpy()


class FeatureMapCodec(ImageCodec):
    """Continuous feature maps of any width D; D and per-channel mean/std come from the data."""

    def __init__(self, stats: dict[str, Any] | None = None):
        super().__init__(stats)
        self.in_channels = self.out_channels = int(self.stats.get("channels", 0))

    def fit(self, values: np.ndarray) -> dict[str, Any]:
        if values.ndim != 4:
            raise TokenizerError(f"feature maps must be (N, H, W, D), got shape {values.shape}")
        flat = values.reshape(-1, values.shape[-1]).astype(np.float64)
        std = flat.std(axis=0)
        self.in_channels = self.out_channels = int(values.shape[-1])
        return {
            "channels": self.in_channels,
            "mean": [round(float(v), 7) for v in flat.mean(axis=0)],
            "std": [round(float(v), 7) if v > 1e-8 else 1.0 for v in std],
        }

    def _moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.stats["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        return mean, torch.tensor(self.stats["std"], dtype=torch.float32).view(1, -1, 1, 1)

    def to_input(self, values: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(values)).float().permute(0, 3, 1, 2)
        if x.shape[1] != self.in_channels:
            raise TokenizerError(
                f"feature maps have {x.shape[1]} channels; this tokenizer was trained on {self.in_channels}"
            )
        mean, std = self._moments()
        return (x - mean) / std

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        mse = F.mse_loss(out.float(), target)
        cosine = (1 - F.cosine_similarity(out.float(), target, dim=1)).mean()
        return mse + cosine, {"mse": float(mse.detach()), "cosine": float(cosine.detach())}

    def from_output(self, out: torch.Tensor) -> np.ndarray:
        mean, std = self._moments()
        return (out.float() * std + mean).permute(0, 2, 3, 1).numpy().astype(np.float32)


CODECS: dict[str, type[ImageCodec]] = {
    "rgb": RGBCodec,
    "depth": DepthCodec,
    "normal": NormalCodec,
    "semseg": SemsegCodec,
    "edges": EdgesCodec,
    "clip": FeatureMapCodec,
}


def codec_for(modality: str, stats: dict[str, float] | None = None) -> ImageCodec:
    try:
        return CODECS[modality](stats)
    except KeyError:
        raise TokenizerError(
            f"no VQ-VAE codec for modality {modality!r}; known: {', '.join(CODECS)}"
        ) from None


def _autocast(device: torch.device) -> torch.autocast:
    """bf16 where the device runs it natively (see ``fourm.precision``), else fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(True, device.type))


class ImageTokenizer:
    """A trained VQ-VAE for one image-like modality (the ``Tokenizer`` protocol)."""

    def __init__(self, modality: Modality, model: VQVAE, codec: ImageCodec, resolution: int, meta: dict):
        self.spec = modality
        self.modality = modality.name
        self.model = model.eval()
        self.codec = codec
        self.resolution = resolution
        self.meta = meta
        self.vocab_size = model.quantizer.vocab_size
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def encode(self, batch: list[Any] | np.ndarray, chunk: int = 256) -> np.ndarray:
        """Values (B, H, W[, C]) -> token ids (B, grid²) int64."""
        values = np.asarray(batch)
        out = []
        for i in range(0, len(values), chunk):
            x = self.codec.to_input(values[i : i + chunk]).to(self.device)
            with _autocast(self.device):
                out.append(self.model.encode(x).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.spec.num_tokens), np.int64)

    @torch.no_grad()
    def decode(self, tokens: np.ndarray, chunk: int = 256) -> np.ndarray:
        """Token ids (B, grid²) -> reconstructed values (B, H, W[, C])."""
        tokens = np.asarray(tokens)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise TokenizerError(
                f"{self.modality}: token ids must be in [0, {self.vocab_size}), got "
                f"[{tokens.min()}, {tokens.max()}]"
            )
        out = []
        for i in range(0, len(tokens), chunk):
            t = torch.from_numpy(tokens[i : i + chunk]).long().to(self.device)
            with _autocast(self.device):
                out.append(self.codec.from_output(self.model.decode(t).float().cpu()))
        return np.concatenate(out) if out else np.zeros((0,))

    def save(self, directory: Path | str) -> None:
        """Write ``tokenizer.json`` and ``weights.pt`` (byte-identical for identical weights)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "format_version": FORMAT_VERSION,
            "kind": "vqvae",
            "modality": self.modality,
            "vocab_size": self.vocab_size,
            "grid_size": self.spec.grid_size,
            "resolution": self.resolution,
            "model": {**asdict(self.model.cfg), "fsq_levels": list(self.model.cfg.fsq_levels)},
            "normalisation": self.codec.stats,
            **self.meta,
        }
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(directory / WEIGHTS_FILE, buf.getvalue())
        atomic_write_bytes(directory / CONFIG_FILE, canonical_json(config))

    @staticmethod
    def load(directory: Path | str, modality: str | None = None, device: str = "cpu") -> ImageTokenizer:
        """Load a saved tokenizer; one for another modality or vocabulary is refused."""
        directory = Path(directory)
        config = read_config(directory)
        if config.get("kind") != "vqvae":
            raise TokenizerError(
                f"{directory / CONFIG_FILE}: a {config.get('kind')!r} tokenizer, not a VQ-VAE"
            )
        if modality is not None and config["modality"] != modality:
            raise TokenizerError(
                f"{directory / CONFIG_FILE}: a tokenizer for modality {config['modality']!r}, "
                f"not {modality!r}"
            )
        spec = get_modality(config["modality"])
        if config["vocab_size"] > spec.vocab_size or config["grid_size"] != spec.grid_size:
            raise TokenizerError(
                f"{directory / CONFIG_FILE}: vocab {config['vocab_size']} / grid {config['grid_size']} "
                f"do not fit modality {spec.name!r} (vocab <= {spec.vocab_size}, grid {spec.grid_size})"
            )
        model_cfg = dict(config["model"])
        model_cfg["fsq_levels"] = tuple(model_cfg["fsq_levels"])
        model = VQVAE(VQVAEConfig(**model_cfg))
        try:
            state = torch.load(directory / WEIGHTS_FILE, map_location=device, weights_only=True)
            model.load_state_dict(state)
        except FileNotFoundError:
            raise TokenizerError(f"{directory / WEIGHTS_FILE}: missing") from None
        except (RuntimeError, ValueError, EOFError) as err:
            raise TokenizerError(f"{directory / WEIGHTS_FILE}: cannot load weights: {err}") from None
        model.to(device)
        codec = codec_for(spec.name, config["normalisation"])
        meta = {k: v for k, v in config.items() if k in ("params", "trained_on")}
        return ImageTokenizer(spec, model, codec, config["resolution"], meta)


def read_config(directory: Path) -> dict:
    """A tokenizer directory's ``tokenizer.json``; missing or corrupt raises ``TokenizerError``."""
    path = Path(directory) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise TokenizerError(f"{path}: missing; not a trained tokenizer") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TokenizerError(f"{path}: corrupt: {err}") from None
    if not isinstance(config, dict) or "kind" not in config:
        raise TokenizerError(f"{path}: not a fourm tokenizer config")
    return config
