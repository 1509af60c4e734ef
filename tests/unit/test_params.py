"""params.yaml loading: the repo's file is valid; bad keys and values name the dotted path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fourm.params import Params, ParamsError, dump_params, load_params, parse_params
from tests.conftest import REPO

pytestmark = pytest.mark.unit


def test_repo_params_yaml_is_valid_and_complete() -> None:
    params = load_params(REPO / "params.yaml")
    # every section is written out explicitly: params.yaml is the one source
    sections = {
        "source",
        "generate",
        "ingest",
        "label",
        "validate",
        "registry",
        "tokenizers",
        "tokenize",
        "pretrain",
        "evaluate",
        "register",
    }
    assert set(dump_params(params)) == sections
    assert set(yaml.safe_load((REPO / "params.yaml").read_text())) == sections
    assert dump_params(params) == dump_params(parse_params(dump_params(params)))


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"generate": {"num_scenes": -5}}, "generate.num_scenes: Input should be greater than or equal to 1"),
        ({"generate": {"resolution": 1000}}, "generate.resolution"),
        ({"generate": {"nmu_scenes": 5}}, "generate.nmu_scenes: unknown key"),
        (
            {"generate": {"splits": {"train": 0.5, "val": 0.1, "test": 0.1}}},
            "generate.splits: Value error, split fractions must sum to 1",
        ),
        (
            {"generate": {"min_objects": 5, "max_objects": 2}},
            "min_objects (5) must not exceed max_objects (2)",
        ),
        ({"label": {"labelers": {"colour": "oracle"}}}, "label.labelers.colour"),
        ({"source": {"kind": "images"}}, "source: Value error, kind images reads images from path"),
        ({"source": {"kind": "folder", "path": "x"}}, "source.kind: Input should be 'synthetic' or 'images'"),
        ({"tokenizers": {"image_modalities": ["rgb", "caption"]}}, "'caption' is not tokenized by a VQ-VAE"),
        ({"tokenizers": {"image_modalities": ["rgb", "sound"]}}, "unknown modality 'sound'"),
        ({"tokenizers": {"vqvae": {"downsample": 3}}}, "downsample must be a power of two, got 3"),
        ({"validate": {"max_bad_fraction": 2}}, "validate.max_bad_fraction"),
        ({"pretrian": {}}, "pretrian: unknown key"),
        ({"pretrain": {"model": {"size": "huge"}}}, "pretrain.model.size: Input should be 'debug'"),
        (
            {"pretrain": {"batch_size": 30, "processes": 4}},
            "batch_size 30 must be divisible by grad_accum x processes",
        ),
        (
            {"pretrain": {"masking": {"alphas": [0.5, 0]}}},
            "alphas must be a non-empty list of positive numbers",
        ),
        ({"pretrain": {"masking": {"target_alphas": {"rgb": -1}}}}, "per-modality alphas must be >= 0"),
        ({"pretrain": {"model": {"inputs": ["pixels"]}}}, "pretrain.model.inputs.0"),
        ({"pretrain": {"steps": 10, "warmup_steps": 10}}, "warmup_steps (10) must be below steps (10)"),
        ({"tokenizers": {"text": {"num_sentinels": 8}}}, "num_sentinels (8) must be at least 32"),
        (
            {"tokenizers": {"vqvae": {"downsample": 6}}},
            "tokenizers.vqvae: Value error, downsample must be a power",
        ),
        ({"tokenizers": {"vqvae": {"quantizer": "rvq"}}}, "tokenizers.vqvae.quantizer"),
        ({"tokenizers": {"overrides": {"rgb": {"stpes": 10}}}}, "overrides.rgb.stpes: Extra inputs"),
        ({"tokenizers": {"text": {"vocab_size": 100000}}}, "tokenizers.text.vocab_size"),
        ({"tokenize": {"modalities": ["rgb", "rgb"]}}, "modalities must be distinct"),
        ({"tokenize": {"modalities": ["pixels"]}}, "tokenize.modalities.0"),
        (
            {"evaluate": {"image_samples": 4, "image": {"temperature": 0}}},
            "image_samples 4 with image.temperature 0",
        ),
        ({"evaluate": {"image_samples": 0}}, "evaluate.image_samples"),
    ],
)
def test_bad_values_name_file_and_dotted_key(data: dict, fragment: str) -> None:
    with pytest.raises(ParamsError) as err:
        parse_params(data, "params.yaml")
    assert fragment in str(err.value)
    assert str(err.value).startswith("params.yaml: ")


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("generate: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match="top level must be a mapping"):
        load_params(bad)


def test_defaults_are_frozen() -> None:
    p = Params()
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError on frozen models
        p.generate.seed = 3  # type: ignore[misc]


def test_overrides_apply_per_modality() -> None:
    params = parse_params({"tokenizers": {"overrides": {"rgb": {"steps": 7}}}})
    assert params.tokenizers.vqvae_for("rgb").steps == 7
    assert params.tokenizers.vqvae_for("depth").steps == params.tokenizers.vqvae.steps
