"""Evaluation and `fourm generate` end to end on a tiny dataset, real tokenizers and a real model file.

The model is a debug-size 4M with random weights: these tests check the machinery (tokenize ->
generate -> detokenize -> metrics -> reports, registry records, bad input), not model quality;
the demo model's figures are in docs/evaluation.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fourm import stages
from fourm.data.samples import DatasetInputs
from fourm.evaluation.stage import run_evaluate
from fourm.inference import AnyToAny, InferenceError
from fourm.model.config import model_config
from fourm.model.model import FourM
from fourm.params import EvaluateParams, TokenizersParams, TransferParams, VQVAEParams
from fourm.registry.api import Registry
from fourm.settings import Settings
from fourm.tokenizers.load import tokenizer_fingerprint
from fourm.tokenizers.stage import run_train_tokenizer
from fourm.train.outputs import save_model
from tests.datasets import tiny_labeled_dataset

pytestmark = pytest.mark.integration

# the tokenizers of the synthetic scenes' modalities (edges and clip come with real-image labelers)
SYNTHETIC_TOKENIZERS = ("rgb", "depth", "normal", "semseg", "text")

ALL = ("rgb", "depth", "normal", "semseg", "caption", "boxes")
TOKENIZERS = TokenizersParams(
    vqvae=VQVAEParams(steps=4, batch_size=4, width=8, code_dim=8, warmup_steps=1, log_every=2, bf16=False)
)
PARAMS = EvaluateParams(
    batch_size=2,
    gallery_samples=2,
    transfer=TransferParams(steps=3, batch_size=4, warmup_steps=1, eval_batch_size=8),
)


def _save_random_model(path: Path, tokenizers: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = model_config("debug", inputs=ALL, targets=ALL)
    fingerprints = {m: tokenizer_fingerprint(m, tokenizers) for m in ALL}
    save_model(path, config, FourM(config).state_dict(), {"tokenizers": fingerprints, "step": 0})
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[DatasetInputs, Path, Path]:
    root = tmp_path_factory.mktemp("eval")
    inputs = tiny_labeled_dataset(root / "data", num_scenes=40)
    for name in SYNTHETIC_TOKENIZERS:
        run_train_tokenizer(name, TOKENIZERS, inputs, root / "tokenizers" / name)
    model = _save_random_model(root / "model.pt", root / "tokenizers")
    return inputs, root / "tokenizers", model


def test_evaluation_scores_every_task_against_its_baseline_and_is_reproducible(setup, tmp_path: Path) -> None:
    inputs, tokenizers, model = setup
    report = run_evaluate(PARAMS, model, tokenizers, inputs, tmp_path / "a")
    assert set(report["tasks"]) == set(PARAMS.tasks)
    depth = report["tasks"]["rgb->depth"]["metrics"]
    assert set(depth) == {"abs_rel", "rmse", "delta1"}
    assert all(
        np.isfinite([v["model"], v["baseline"]]).all()
        for t in report["tasks"].values()
        for v in t["metrics"].values()
    )
    assert report["tasks"]["rgb->boxes"]["metrics"]["map_50"]["baseline"] == 0.0  # the empty box set
    assert set(report["transfer"]) >= {"pretrained", "scratch", "majority_baseline"}
    out = tmp_path / "a"
    for name in (
        "metrics.json",
        "metrics.csv",
        "report.md",
        "gallery.png",
        "gallery_caption.png",
        "rgb_to_depth.png",
    ):
        assert (out / name).stat().st_size > 0, name
    assert Image.open(out / "gallery.png").size[0] > 500
    assert "seconds" not in (out / "metrics.json").read_text()
    run_evaluate(PARAMS, model, tokenizers, inputs, tmp_path / "b")
    assert (out / "metrics.json").read_bytes() == (tmp_path / "b" / "metrics.json").read_bytes()


def test_image_targets_are_scored_on_the_aggregate_of_sampled_predictions(setup, tmp_path: Path) -> None:
    inputs, tokenizers, model = setup
    sampled = PARAMS.image.model_copy(update={"steps": 1, "temperature": 1.0})
    base = PARAMS.model_copy(
        update={
            "tasks": ("rgb->depth", "rgb->semseg", "caption->semseg"),
            "image": sampled,
            "transfer": TransferParams(enabled=False),
        }
    )
    one = run_evaluate(base, model, tokenizers, inputs, tmp_path / "one")
    three = base.model_copy(update={"image_samples": 3})
    first = run_evaluate(three, model, tokenizers, inputs, tmp_path / "three")
    again = run_evaluate(three, model, tokenizers, inputs, tmp_path / "again")
    assert first["image_samples"] == 3 and one["image_samples"] == 1
    assert (tmp_path / "three" / "metrics.json").read_bytes() == (
        tmp_path / "again" / "metrics.json"
    ).read_bytes()
    assert "mean of 3 sampled predictions" in (tmp_path / "three" / "report.md").read_text()
    # the first of the three draws is the single-sample run's prediction; the aggregate is not
    assert (
        one["tasks"]["rgb->depth"]["metrics"]["rmse"]["model"]
        != first["tasks"]["rgb->depth"]["metrics"]["rmse"]["model"]
    )
    assert again["tasks"] == first["tasks"]
    # from a caption, objects land anywhere: one draw (the same as the single-sample run's), not a mean
    assert one["tasks"]["caption->semseg"] == first["tasks"]["caption->semseg"]


def test_sampled_draws_equal_one_generate_call_per_seed_across_batches(setup) -> None:
    """``AnyToAny.sample``: draw k is ``generate`` with seed + k, also when the samples span batches."""
    from fourm.model.generate import GenerationStep

    _, tokenizers, model = setup
    a2a = AnyToAny.load(model, tokenizers)
    rgb = np.random.default_rng(0).integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    given = a2a.encode({"rgb": rgb})
    step = GenerationStep("depth", steps=1, temperature=1.0)
    got = a2a.sample(given, step, 3, seed=7, batch_size=2)
    for k, draw in enumerate(got):
        want = a2a.generate(given, [step], seed=7 + k, batch_size=2)["depth"]
        assert torch.equal(draw.tokens, want.tokens) and bool(draw.known.all())
    assert not torch.equal(got[0].tokens, got[1].tokens)
    with pytest.raises(InferenceError, match="count must be >= 1"):
        a2a.sample(given, step, 0)


def test_a_tokenizer_the_model_was_not_trained_with_is_refused_and_nothing_written(
    setup, tmp_path: Path
) -> None:
    inputs, tokenizers, model = setup
    other = tmp_path / "tokenizers"
    for name in SYNTHETIC_TOKENIZERS:
        src = tokenizers / name
        (other / name).mkdir(parents=True)
        for f in src.iterdir():
            (other / name / f.name).write_bytes(f.read_bytes())
    run_train_tokenizer(
        "depth",
        TOKENIZERS.model_copy(update={"vqvae": TOKENIZERS.vqvae.model_copy(update={"seed": 5})}),
        inputs,
        other / "depth.new",
    )
    (other / "depth").rename(other / "depth.old")
    (other / "depth.new").rename(other / "depth")
    with pytest.raises(InferenceError, match="model/tokenizer mismatch: .* depth tokens"):
        run_evaluate(PARAMS, model, other, inputs, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_evaluate_stage_records_model_dataset_and_report_in_the_registry(setup, tmp_path: Path) -> None:
    inputs, tokenizers, model = setup
    settings = Settings(home=tmp_path / "home", registry_url=f"sqlite:///{tmp_path / 'reg.db'}")
    params = PARAMS.model_copy(update={"tasks": ("rgb->depth",), "transfer": TransferParams(enabled=False)})
    stages.evaluate(params, model, tokenizers, inputs, tmp_path / "out", settings=settings)
    with Registry(settings.effective_registry_url) as reg:
        (run,) = reg.runs("evaluate")
        ins, outs = reg.run_io(run.id)
    assert run.status == "succeeded"
    assert {a.kind for a in ins} >= {"model checkpoint", "validated dataset", "tokenizer"}
    assert [a.kind for a in outs] == ["evaluation report"]
    assert outs[0].metadata["beats_baseline"].keys() == {"rgb->depth"}


# -- fourm generate ---------------------------------------------------------------------------


def _fourm(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "fourm", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )


@pytest.fixture()
def photo(setup, tmp_path: Path) -> Path:
    inputs, _, _ = setup
    from fourm.evaluation.data import load_split

    rgb = load_split(inputs, "test", 1).rgb[0]
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    return path


def test_generate_writes_every_output_and_a_grid(setup, photo: Path, tmp_path: Path) -> None:
    _, tokenizers, model = setup
    out = tmp_path / "gen"
    proc = _fourm(
        ["generate", "--model", str(model), "--tokenizers", str(tokenizers), "-i", f"rgb={photo}",
         "--plan", "rgb -> caption -> semseg -> depth -> boxes", "--out", str(out), "--steps", "4"],
        tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for name in (
        "caption.txt",
        "semseg.png",
        "semseg.npy",
        "depth.png",
        "depth.npy",
        "boxes.png",
        "boxes.json",
        "grid.png",
    ):
        assert (out / name).is_file(), name
    assert np.load(out / "depth.npy").shape == (64, 64)
    assert json.loads((out / "generation.json").read_text())["plan"] == [
        "caption",
        "semseg",
        "depth",
        "boxes",
    ]
    again = tmp_path / "again"
    _fourm(
        ["generate", "--model", str(model), "--tokenizers", str(tokenizers), "-i", f"rgb={photo}",
         "--plan", "caption -> semseg -> depth -> boxes", "--out", str(again), "--steps", "4"],
        tmp_path,
    )  # fmt: skip
    assert (again / "semseg.npy").read_bytes() == (out / "semseg.npy").read_bytes()  # same seed, same output


@pytest.mark.parametrize(
    ("inputs", "plan", "message"),
    [
        (["rgb=missing.png"], "depth", "rgb input: missing.png: no such file"),
        (["rgb=small.png"], "depth", r"rgb input: expected images of 64x64x3, got shape \(16, 16, 3\)"),
        (["rgb=notes.png"], "depth", "rgb input: notes.png: not a readable image"),
        (["colour=photo.png"], "depth", "unknown modality 'colour'"),
        (["rgb=photo.png"], "depth -> colour", "unknown modality 'colour'"),
        (
            ["caption=" + "word " * 300],
            "semseg",
            "caption input 0 is longer than the model's maximum of 128 tokens",
        ),
    ],
)
def test_generate_refuses_bad_input_with_one_line_and_writes_nothing(
    setup, photo: Path, tmp_path: Path, inputs: list[str], plan: str, message: str
) -> None:
    _, tokenizers, model = setup
    Image.new("RGB", (16, 16)).save(tmp_path / "small.png")
    (tmp_path / "notes.png").write_text("not an image")
    args = [
        "generate",
        "--model",
        str(model),
        "--tokenizers",
        str(tokenizers),
        "--plan",
        plan,
        "--out",
        "out",
    ]
    for i in inputs:
        args += ["-i", i]
    proc = _fourm(args, tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error:"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    import re

    assert re.search(message, proc.stderr), proc.stderr
    assert not (tmp_path / "out").exists()


def test_generate_refuses_a_model_tokenizer_mismatch(setup, photo: Path, tmp_path: Path) -> None:
    _, tokenizers, _ = setup
    model = tmp_path / "m.pt"
    torch.manual_seed(0)
    config = model_config("debug", inputs=ALL, targets=ALL)
    save_model(model, config, FourM(config).state_dict(), {"tokenizers": {"rgb": "0" * 64}})
    proc = _fourm(
        ["generate", "--model", str(model), "--tokenizers", str(tokenizers), "-i", f"rgb={photo}",
         "--plan", "depth", "--out", "out"],
        tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "model/tokenizer mismatch" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_loading_by_registry_reference(setup, tmp_path: Path) -> None:
    """`name:version` resolves to the registered checkpoint (sha256-checked)."""
    from fourm.inference import resolve_model
    from fourm.registry.hooks import file_artifact

    _, tokenizers, model = setup
    url = f"sqlite:///{tmp_path / 'reg.db'}"
    with Registry(url) as reg:
        spec = file_artifact(model, "model checkpoint")
        art = reg.register_artifact(spec.kind, spec.name, spec.uri, spec.sha256, spec.size)
        reg.register_model_version("tiny4m", art.id)
    assert resolve_model("tiny4m:1", url) == model
    assert AnyToAny.load(resolve_model("tiny4m:1", url), tokenizers).model.config.size == "debug"
    with pytest.raises(InferenceError, match="neither a model file nor a registered model"):
        resolve_model("tiny4m:7", url)
