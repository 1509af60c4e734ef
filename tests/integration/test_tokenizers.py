"""Tokenizer stages on a tiny real dataset: train, evaluate, tokenize to S3, resume, refuse bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fourm.data.loader import StreamLoader, TokenStream
from fourm.data.samples import DatasetInputs
from fourm.data.token_set import TokenSet
from fourm.data.tokenize import run_tokenize
from fourm.io import sha256_bytes
from fourm.params import TokenizeParams, TokenizersParams, VQVAEParams
from fourm.settings import Settings
from fourm.storage.object_store import ObjectStore
from fourm.tokenizers.base import TokenizerError
from fourm.tokenizers.stage import run_eval_tokenizers, run_train_tokenizer
from tests.datasets import tiny_labeled_dataset

pytestmark = pytest.mark.integration

# the tokenizers of the synthetic scenes' modalities (edges and clip come with real-image labelers)
SYNTHETIC_TOKENIZERS = ("rgb", "depth", "normal", "semseg", "text")

PARAMS = TokenizersParams(
    vqvae=VQVAEParams(steps=4, batch_size=4, width=8, code_dim=8, warmup_steps=1, log_every=2, bf16=False),
    eval_preview_samples=2,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[DatasetInputs, Path]:
    root = tmp_path_factory.mktemp("tok")
    inputs = tiny_labeled_dataset(root / "data")
    for name in SYNTHETIC_TOKENIZERS:
        run_train_tokenizer(name, PARAMS, inputs, root / "tokenizers" / name, root / f"{name}_loss.csv")
    return inputs, root / "tokenizers"


def test_eval_measures_every_tokenizer_and_draws_reconstructions(trained, tmp_path: Path) -> None:
    inputs, tokenizers = trained
    report = run_eval_tokenizers(PARAMS, inputs, tokenizers, preview_dir=tmp_path)
    got = report["tokenizers"]
    assert set(got) == {"rgb", "depth", "normal", "semseg", "text"}
    assert {"psnr", "ssim", "code_usage", "perplexity"} <= set(got["rgb"])
    assert {"abs_rel", "delta1"} <= set(got["depth"]) and "angular_mean" in got["normal"]
    assert 0 <= got["semseg"]["miou"] <= 1
    # text and boxes round-trip exactly on every evaluation sample
    assert got["text"]["caption_exact"] == 1.0 and got["text"]["boxes_exact"] == 1.0
    assert got["text"]["samples"] > 0
    for name in ("rgb", "depth", "normal", "semseg"):
        assert (tmp_path / f"recon_{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_tokenize_publishes_to_s3_and_a_rerun_reuses_every_shard(
    trained, tmp_path: Path, store: ObjectStore, s3_settings: Settings
) -> None:
    inputs, tokenizers = trained
    uri = f"s3://{s3_settings.buckets.tokens}/test-{sha256_bytes(str(tmp_path).encode())[:8]}"
    first = run_tokenize(TokenizeParams(), inputs, tokenizers, tmp_path / "a", uri, store)
    assert first.encoded_shards == first.num_shards > 0 and first.reused_shards == 0
    assert first.num_samples == 24 and first.truncated == {m: 0 for m in TokenizeParams().modalities}

    again = run_tokenize(TokenizeParams(), inputs, tokenizers, tmp_path / "b", uri, store)
    assert again.reused_shards == first.num_shards and again.encoded_shards == 0
    assert (tmp_path / "a" / "tokens.json").read_bytes() == (tmp_path / "b" / "tokens.json").read_bytes()

    remote = TokenSet.open(uri, store=store)
    local = TokenSet.open(tmp_path / "a")
    shard = local.shards()[0]["name"]
    for key, value in local.read_shard(shard).items():
        assert np.array_equal(remote.read_shard(shard)[key], value)
    # every tokenizer's fingerprint is recorded with the shards it made
    assert set(remote.card["tokenizers"]) == set(TokenizeParams().modalities)
    assert remote.shards()[0]["provenance"]["tokenizers"] == remote.card["tokenizers"]

    stream = TokenStream(
        uri,
        "train",
        ["rgb", "caption"],
        batch_size=4,
        store_factory=lambda: ObjectStore.from_settings(s3_settings),
    )
    seen = [i for batch in StreamLoader(stream) for i in batch["id"]]
    assert sorted(seen) == sorted(
        i for s in remote.shards("train") for i in remote.read_shard(s["name"])["ids"]
    )


def test_a_changed_tokenizer_is_not_reused(
    trained, tmp_path: Path, store: ObjectStore, s3_settings: Settings
) -> None:
    inputs, tokenizers = trained
    uri = f"s3://{s3_settings.buckets.tokens}/changed-{sha256_bytes(str(tmp_path).encode())[:8]}"
    run_tokenize(TokenizeParams(modalities=("depth",)), inputs, tokenizers, tmp_path / "a", uri, store)
    other = tmp_path / "tokenizers"
    shutil.copytree(tokenizers, other)
    retrained = PARAMS.model_copy(update={"vqvae": PARAMS.vqvae.model_copy(update={"seed": 1})})
    run_train_tokenizer("depth", retrained, inputs, other / "depth")
    second = run_tokenize(TokenizeParams(modalities=("depth",)), inputs, other, tmp_path / "b", uri, store)
    assert second.reused_shards == 0 and second.encoded_shards == second.num_shards


def test_a_tokenizer_for_another_modality_is_refused(trained, tmp_path: Path) -> None:
    inputs, tokenizers = trained
    wrong = tmp_path / "tokenizers"
    shutil.copytree(tokenizers, wrong)
    shutil.rmtree(wrong / "depth")
    shutil.copytree(tokenizers / "rgb", wrong / "depth")
    with pytest.raises(
        TokenizerError, match=r"depth/tokenizer.json: a tokenizer for modality 'rgb', not 'depth'"
    ):
        run_tokenize(TokenizeParams(), inputs, wrong, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_cli_refuses_bad_input_with_one_line(trained, tmp_path: Path) -> None:
    inputs, tokenizers = trained
    run_tokenize(TokenizeParams(modalities=("caption",)), inputs, tokenizers, tmp_path / "tokens")
    card_path = tmp_path / "tokens" / "tokens.json"
    card = json.loads(card_path.read_text())
    entry = card["shards"][0]["files"]["caption"]
    bad = np.load(tmp_path / "tokens" / entry["path"])
    bad[0, 1] = card["modalities"]["caption"]["vocab_size"] + 5  # a token id outside the vocabulary
    np.save(tmp_path / "tokens" / entry["path"], bad)
    data = (tmp_path / "tokens" / entry["path"]).read_bytes()
    entry.update(sha256=sha256_bytes(data), size=len(data))
    card_path.write_text(json.dumps(card))
    fourm = [sys.executable, "-m", "fourm"]
    proc = subprocess.run(
        [*fourm, "tokens", "validate", str(tmp_path / "tokens")], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert "outside vocab" in proc.stderr and card["shards"][0]["name"] in proc.stderr

    proc = subprocess.run(
        [
            *fourm,
            "tokenizer",
            "train",
            "pixels",
            "--raw",
            str(inputs.raw),
            "--labels",
            str(inputs.labels),
            "--accepted",
            str(inputs.accepted),
        ],
        capture_output=True,
        text=True,
    )
    assert (
        proc.returncode == 1
        and "unknown tokenizer 'pixels'" in proc.stderr
        and "Traceback" not in proc.stderr
    )


def test_wandb_offline_run_is_written_under_home(trained, tmp_path: Path, s3_settings: Settings) -> None:
    """W&B in offline mode (the default outside tests): the run lands under <home>/wandb."""
    from fourm import stages

    inputs, _ = trained
    settings = s3_settings.model_copy(
        update={
            "wandb_mode": "offline",
            "home": tmp_path / "home",
            "registry_url": f"sqlite:///{tmp_path / 'reg.db'}",
        }
    )
    report = stages.train_tokenizer("semseg", PARAMS, inputs, tmp_path / "semseg", settings=settings)
    assert report.vocab_size == 1024
    runs = list((tmp_path / "home" / "wandb").rglob("offline-run-*"))
    assert runs, "no offline W&B run written"
    assert any(p.suffix == ".wandb" for p in runs[0].rglob("*"))


def test_parts_assemble_the_same_token_set_as_one_run(
    trained, tmp_path: Path, store: ObjectStore, s3_settings: Settings
) -> None:
    inputs, tokenizers = trained
    params = TokenizeParams(modalities=("depth", "caption"))
    whole = run_tokenize(params, inputs, tokenizers, tmp_path / "whole")
    uri = f"s3://{s3_settings.buckets.tokens}/parts-{sha256_bytes(str(tmp_path).encode())[:8]}"
    parts = [
        run_tokenize(params, inputs, tokenizers, tmp_path / "x", uri, store, part=(i, 3)) for i in range(3)
    ]
    assert sum(p.encoded_shards for p in parts) == whole.num_shards and not (tmp_path / "x").exists()
    assembled = run_tokenize(params, inputs, tokenizers, tmp_path / "assembled", uri, store)
    assert assembled.encoded_shards == 0 and assembled.reused_shards == whole.num_shards
    assert (tmp_path / "assembled/tokens.json").read_bytes() == (tmp_path / "whole/tokens.json").read_bytes()
    with pytest.raises(ValueError, match="needs tokenize.publish"):
        run_tokenize(params, inputs, tokenizers, tmp_path / "y", part=(0, 2))


def test_tokenize_parts_run_as_an_indexed_job_on_kubernetes(
    trained, tmp_path: Path, s3_settings: Settings
) -> None:
    """``tokenize.launcher: kubernetes``: one pod per range of shards (`fourm tokenize --part
    $(JOB_COMPLETION_INDEX)/2`) publishes to S3, then the caller assembles the set reusing
    every shard. Pods run on the stand-in API server (tests/kube_standin.py), seeing this
    machine's files as a cluster's pods would see a shared volume."""

    from fourm import stages
    from tests.kube_cluster import fourm_standin

    inputs, tokenizers = trained
    params = TokenizeParams(
        modalities=("depth", "caption"),
        launcher="kubernetes",
        parts=2,
        kubernetes={"cpu": "1", "memory": "2Gi", "wandb_secret": None, "pending_timeout_s": 60},
    )
    with fourm_standin(tmp_path / "kube", s3_settings) as kube:
        lines: list[str] = []
        report = stages.tokenize(
            params,
            inputs,
            tokenizers,
            tmp_path / "tokens",
            s3_settings,
            kube_api=kube.api_client(),
            log=lines.append,
        )
        pods = kube.pods()
    assert report.encoded_shards == 0 and report.reused_shards == report.num_shards > 0
    assert sorted(p["spec"]["containers"][0]["args"][-1] for p in pods) == ["$(JOB_COMPLETION_INDEX)/2"] * 2
    assert [p["status"]["phase"] for p in pods] == ["Succeeded", "Succeeded"]
    assert any("tokenize part 0/2" in line for line in lines)
