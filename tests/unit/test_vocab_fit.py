"""Vocabularies fitted to the token set: a small text tokenizer gets small tables and heads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fourm.data.token_set import TokenSet
from fourm.data.token_shards import ModalitySpec, TokenSetWriter
from fourm.model.config import ModelConfig, model_config
from fourm.model.model import FourM
from fourm.params import PretrainParams
from fourm.train.checkpoint import CheckpointStore
from fourm.train.data import VOCAB_MULTIPLE, fit_vocabularies
from fourm.train.distributed import DistInfo
from fourm.train.loop import train_4m
from fourm.train.outputs import load_model, save_model

pytestmark = pytest.mark.unit

TEXT_VOCAB = 339  # what the demo's WordPiece tokenizer uses of the caption modality's 8192 ids


def _token_set(root: Path, caption_vocab: int = TEXT_VOCAB) -> Path:
    specs = {
        "rgb": ModalitySpec.for_modality("rgb", "rgb-tok"),
        "caption": ModalitySpec(caption_vocab, 128, "text-tok"),
    }
    writer = TokenSetWriter(root, specs)
    rng = np.random.default_rng(0)
    for split, n in (("train", 32), ("val", 8)):
        caption = np.zeros((n, 128), dtype=np.int64)
        caption[:, 0], caption[:, 1:6], caption[:, 6] = 2, rng.integers(10, caption_vocab, (n, 5)), 3
        tokens = {"rgb": rng.integers(0, 1024, (n, 64)), "caption": caption}
        writer.add_shard(f"{split}-000000", split, [f"{split}-{i}" for i in range(n)], tokens)
    writer.finish({"name": root.name})
    return root


def test_text_vocab_is_cut_to_the_token_set_rounded_up(tmp_path):
    config = model_config("debug", ("rgb", "caption"), ("rgb", "caption"))
    fitted = fit_vocabularies(config, TokenSet.open(_token_set(tmp_path / "t")))
    assert fitted.vocab_overrides == (("caption", 384),)  # 339 -> the next multiple of 64
    assert fitted.vocab_size("caption") == 384 and 384 % VOCAB_MULTIPLE == 0
    assert fitted.vocab_size("rgb") == 1024  # already the registry's size: no override
    model = FourM(fitted)
    assert model.heads["caption"].out_features == 384
    assert model.encoder_embed.token["caption"].num_embeddings == 384
    assert model.heads["caption"].weight is model.decoder_embed.token["caption"].weight  # still tied
    # encoder table + tied decoder table/head + head bias
    removed = 8192 - 384
    assert FourM(config).num_parameters() - model.num_parameters() == 2 * removed * config.dim + removed


def test_fitted_config_survives_the_model_file(tmp_path):
    config = fit_vocabularies(
        model_config("debug", ("rgb", "caption"), ("caption",)), TokenSet.open(_token_set(tmp_path / "t"))
    )
    assert ModelConfig.from_dict(config.to_dict()) == config
    model = FourM(config)
    save_model(tmp_path / "model.pt", config, model.state_dict(), {})
    loaded, _ = load_model(tmp_path / "model.pt")
    assert loaded.config == config and loaded.heads["caption"].out_features == 384


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ((("depth", 64),), r"'depth', which is not a modality of this model"),
        ((("caption", 9000),), r"caption=9000 is outside 1\.\.8192"),
        ((("caption", 0),), r"caption=0 is outside"),
    ],
)
def test_bad_vocab_override_is_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        model_config("debug", ("rgb", "caption"), ("caption",), vocab_overrides=overrides)


def test_training_builds_the_fitted_model_and_its_ids_stay_in_range(tmp_path):
    torch.set_num_threads(1)
    params = PretrainParams.model_validate(
        {
            "model": {"size": "debug", "inputs": ["rgb", "caption"], "targets": ["rgb", "caption"]},
            "masking": {"input_budget": 16, "target_budget": 16},
            "steps": 3, "batch_size": 8, "warmup_steps": 1, "eval_every": 3, "eval_batches": 1,
            "checkpoint_every": 3, "loader_workers": 0, "buffer_size": 8, "bf16": False,
            "upload_checkpoints": False,
        }
    )  # fmt: skip
    result = train_4m(
        params,
        TokenSet.open(_token_set(tmp_path / "t")),
        CheckpointStore(tmp_path / "ckpt"),
        DistInfo(0, 1, 0, torch.device("cpu")),
    )
    assert result.config.vocab_size("caption") == 384
    assert result.model.heads["caption"].out_features == 384
    assert np.isfinite(result.validation[-1]["caption"])
