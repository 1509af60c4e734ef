"""The whole DVC DAG on real photographs with model-backed labelers, chosen only by params.yaml.

The workspace is the project's dvc.yaml and code, unchanged; params.yaml switches the source to
a folder of scikit-image photographs (crops, with a few sidecar captions and planted bad files)
and the labelers to tiny, randomly initialised transformers models saved on disk (their real
loading and inference code runs). Labels are meaningless, the DAG and its records are real:
source -> validate -> label -> validate-labels -> tokenizers (incl. edges and CLIP) -> tokenize
-> pretrain -> evaluate, and the labelers' provenance reaches the model's lineage.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fourm.data.format import Dataset
from fourm.io import sha256_file
from fourm.labelers import tiny_models
from fourm.settings import Settings
from tests.photos import write_photo_folder
from tests.workspace import TINY_PARAMS, _merge, make_workspace, run

pytestmark = pytest.mark.integration

IMAGE_MODALITIES = ["rgb", "depth", "normal", "semseg", "edges", "clip"]
MODALITIES = [*IMAGE_MODALITIES, "caption", "boxes"]


# replaces the synthetic labeler table whole (no oracle: photos have no scene graph)
LABELERS = {
    "depth": "hf-depth",
    "normal": "hf-depth",
    "semseg": "hf-semseg",
    "boxes": "hf-boxes",
    "caption": "hf-caption",
    "clip": "hf-clip",
    "edges": "canny",
}


def _real_params(photos: Path, models: dict[str, Path], mapping: Path) -> dict:
    return _merge(
        TINY_PARAMS,
        {
            "source": {"kind": "images", "path": str(photos)},
            "ingest": {"samples_per_shard": 8, "splits": {"train": 0.6, "val": 0.2, "test": 0.2}},
            # most photos come without captions: the captioner fills them in the label stage
            "validate": {"caption_min_chars": 0, "max_bad_fraction": 0.05},
            "label": {
                "options": {
                    "hf-depth": {"model": str(models["depth"])},
                    "hf-semseg": {"model": str(models["semseg"]), "mapping": str(mapping)},
                    "hf-boxes": {"model": str(models["boxes"]), "mapping": str(mapping), "threshold": 0.0},
                    "hf-caption": {"model": str(models["caption"]), "max_new_tokens": 8},
                    "hf-clip": {"model": str(models["clip"]), "grid": 8},
                },
                "batch_size": 8,
            },
            "tokenizers": {
                "image_modalities": IMAGE_MODALITIES,
                # CLIP maps are 8x8 already: one token per feature vector
                "overrides": {"clip": {"downsample": 1, "patch": 1}},
            },
            "tokenize": {"modalities": MODALITIES},
            "pretrain": {"model": {"inputs": MODALITIES, "targets": MODALITIES}},
            # a detector may find more objects than a synthetic scene holds (YOLOS here: up to 10)
            "evaluate": {"transfer": {"max_count": 10}},
        },
    )


@pytest.fixture(scope="module")
def label_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Path]:
    root = tmp_path_factory.mktemp("real-models")
    torch.manual_seed(0)
    mapping = root / "mapping.yaml"
    mapping.write_text("ball: sphere\nbox: cube\n3: cylinder\n")
    models = {
        "depth": tiny_models.depth_model(root / "depth"),
        "semseg": tiny_models.semseg_model(root / "semseg"),
        "boxes": tiny_models.boxes_model(root / "boxes"),
        "caption": tiny_models.caption_model(root / "caption"),
        "clip": tiny_models.clip_vision_model(root / "clip"),
    }
    return models, mapping


def test_the_dag_runs_on_ingested_photographs_selected_by_params_only(
    s3_settings: Settings, tmp_path: Path, label_models: tuple[dict[str, Path], Path]
) -> None:
    models, mapping = label_models
    photos = write_photo_folder(tmp_path / "photos")
    params = _real_params(tmp_path / "photos", models, mapping)
    ws, env = make_workspace(tmp_path, s3_settings, params, replace={"label.labelers": LABELERS})

    first = run(["dvc", "repro"], ws, env)
    for stage in ("source", "validate", "label", "validate-labels", "train-text-tokenizer",
                  "eval-tokenizers", "tokenize", "pretrain", "evaluate",
                  *(f"train-tokenizer@{m}" for m in IMAGE_MODALITIES)):  # fmt: skip
        assert f"Running stage '{stage}'" in first.stdout, stage

    source = json.loads((ws / "reports" / "source.json").read_text())
    assert source["kind"] == "images" and source["num_ingested"] == len(photos)
    assert source["quarantined"] == {"empty_file": 1, "not_image": 1}

    labels = Dataset.open(ws / "data" / "labels")
    assert {"edges", "clip", "caption"} <= set(labels.card["modalities"])
    accepted = json.loads((ws / "reports" / "validate_labels.json").read_text())
    assert accepted["passed"] and accepted["num_bad"] == 0

    tokens = json.loads((ws / "data" / "tokens" / "tokens.json").read_text())
    assert set(tokens["modalities"]) == set(MODALITIES)
    metrics = json.loads((ws / "reports" / "evaluate" / "metrics.json").read_text())
    assert "rgb->depth" in metrics["tasks"]
    tok_eval = json.loads((ws / "reports" / "tokenizers" / "eval.json").read_text())
    assert {"edge_f1", "pixel_accuracy"} <= set(tok_eval["tokenizers"]["edges"])
    assert tok_eval["tokenizers"]["clip"]["cosine"] > -1
    assert (ws / "reports" / "tokenizers" / "recon" / "recon_clip.png").read_bytes()[:4] == b"\x89PNG"

    _check_provenance_in_lineage(env["FOURM_REGISTRY_URL"], ws, models)

    again = run(["dvc", "repro"], ws, env)
    assert "Running stage" not in again.stdout


def _check_provenance_in_lineage(url: str, ws: Path, models: dict[str, Path]) -> None:
    """Every labeler's model id and weights hash is on the label-set artifact upstream of the model."""
    from fourm.registry.api import Registry

    reg = Registry(url)
    try:
        _, outputs = reg.run_io(reg.runs(stage="pretrain")[0].id)
        assert outputs[0].sha256 == sha256_file(ws / "models" / "pretrain" / "model.pt")
        graph = reg.lineage(f"artifact:{outputs[0].id}", "upstream")
        label_run = reg.runs(stage="label")[0]
        label_set = next(a for a in reg.run_io(label_run.id)[1] if a.kind == "label set")
        assert f"artifact:{label_set.id}" in graph.nodes
        provenance = label_set.metadata["labelers"]
        for modality, family in (("depth", "depth"), ("semseg", "semseg"), ("boxes", "boxes"),
                                 ("caption", "caption"), ("clip", "clip")):  # fmt: skip
            assert provenance[modality]["model"] == str(models[family])
            assert len(provenance[modality]["weights_sha256"]) == 64
        assert provenance["edges"]["name"] == "canny"
    finally:
        reg.close()
