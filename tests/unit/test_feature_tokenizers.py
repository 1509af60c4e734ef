"""VQ-VAE tokenizers of the edges and CLIP feature-map modalities: codecs, round trips, metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fourm.data.preview import colorize_features
from fourm.modalities import get_modality
from fourm.params import VQVAEParams
from fourm.tokenizers.base import TokenizerError
from fourm.tokenizers.image import FeatureMapCodec, ImageTokenizer, codec_for
from fourm.tokenizers.metrics import edge_metrics, feature_metrics
from fourm.tokenizers.preview import reconstruction_grid
from fourm.tokenizers.train import model_config, train_vqvae

pytestmark = pytest.mark.unit

TINY = VQVAEParams(
    steps=3, batch_size=4, width=8, code_dim=8, warmup_steps=1, log_every=1, checkpoint_every=99
)


def _features(n: int = 8, grid: int = 8, width: int = 12) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.normal(size=(n, grid, grid, width)) * np.arange(1, width + 1) + 5).astype(np.float32)


def test_feature_codec_learns_channels_and_moments_from_the_data() -> None:
    values = _features()
    codec = codec_for("clip")
    assert codec.in_channels == 0  # unknown until fitted: the labeler's model sets D
    with pytest.raises(TokenizerError, match="channel count comes from the data"):
        model_config(get_modality("clip"), TINY.model_copy(update={"downsample": 1, "patch": 1}), 8)
    codec.stats = codec.fit(values)
    assert codec.in_channels == codec.out_channels == 12 and codec.stats["channels"] == 12
    x = codec.to_input(values)
    assert x.shape == (8, 12, 8, 8)
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 0.05  # standardised per channel
    np.testing.assert_allclose(codec.from_output(x), values, rtol=1e-4, atol=1e-4)
    with pytest.raises(TokenizerError, match="13 channels; this tokenizer was trained on 12"):
        codec.to_input(_features(width=13))
    reloaded = FeatureMapCodec(codec.stats)
    assert reloaded.in_channels == 12


def test_clip_tokenizer_round_trips_at_the_feature_grid(tmp_path: Path) -> None:
    values = _features()
    params = TINY.model_copy(update={"downsample": 1, "patch": 1})
    result = train_vqvae(get_modality("clip"), params, values, resolution=8)
    result.tokenizer.save(tmp_path)
    tokenizer = ImageTokenizer.load(tmp_path, modality="clip")
    tokens = tokenizer.encode(values)
    assert tokens.shape == (8, 64) and tokens.max() < tokenizer.vocab_size
    recon = tokenizer.decode(tokens)
    assert recon.shape == values.shape and recon.dtype == np.float32
    metrics = feature_metrics(values, recon)
    assert -1 <= metrics["cosine"] <= 1 and metrics["relative_mse"] > 0
    png = reconstruction_grid("clip", values[:2], recon[:2])
    assert png[:4] == b"\x89PNG"


def test_edges_tokenizer_round_trips_to_binary_maps(tmp_path: Path) -> None:
    edges = np.zeros((8, 64, 64), np.uint8)
    edges[:, 16, 8:56] = 1
    result = train_vqvae(get_modality("edges"), TINY, edges, resolution=64)
    result.tokenizer.save(tmp_path)
    recon = ImageTokenizer.load(tmp_path, modality="edges").decode(result.tokenizer.encode(edges))
    assert recon.shape == edges.shape and recon.dtype == np.uint8 and set(np.unique(recon)) <= {0, 1}
    assert "bce" in result.history[-1]


def test_grid_mismatch_names_the_override() -> None:
    with pytest.raises(TokenizerError, match=r"tokenizers.overrides.clip.downsample\): 8px / 8"):
        model_config(
            get_modality("clip"), TINY, 8, codec_for("clip", {"channels": 4, "mean": [0] * 4, "std": [1] * 4})
        )


def test_edge_and_feature_metrics() -> None:
    truth = np.zeros((1, 4, 4), np.uint8)
    truth[0, 0, :] = 1  # 4 edge pixels
    pred = np.zeros_like(truth)
    pred[0, 0, :2] = 1
    pred[0, 3, 0] = 1  # 2 hits, 1 false alarm
    m = edge_metrics(truth, pred)
    assert m["edge_precision"] == pytest.approx(2 / 3) and m["edge_recall"] == pytest.approx(0.5)
    assert m["pixel_accuracy"] == pytest.approx(13 / 16)
    values = _features(n=2)
    assert feature_metrics(values, values)["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert feature_metrics(values, values)["relative_mse"] == 0.0


def test_feature_colours_follow_the_reference() -> None:
    values = _features(n=1)[0]
    rgb = colorize_features(values)
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8 and rgb.min() == 0 and rgb.max() == 255
    np.testing.assert_array_equal(colorize_features(values, values), rgb)
    assert colorize_features(values[..., :2]).shape == (8, 8, 3)  # fewer than 3 channels
