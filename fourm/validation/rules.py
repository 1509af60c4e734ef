"""The validation rules of the raw and labeled suites, as plain data.

Each rule checks one column of the per-sample statistics (``stats.py``); the
Great Expectations adapter (``gx_suite.py``) turns rules into expectations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fourm.data.scene import CLASSES
from fourm.params import SPLITS, ValidateParams


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    column: str
    check: Literal["unique", "in_set", "between"]
    value_set: tuple | None = None
    min_value: float | None = None
    max_value: float | None = None
    strict_min: bool = False


def _common(kind: str) -> list[Rule]:
    return [
        Rule("id_unique", f"every {kind} sample id appears once", "id", "unique"),
        Rule("split_valid", f"split is one of {', '.join(SPLITS)}", "split", "in_set", SPLITS),
        Rule(
            "sample_readable",
            "the sample is present and readable in its shard",
            "readable",
            "in_set",
            (True,),
        ),
        Rule(
            "shard_sha256_matches",
            "the shard's sha256 matches dataset.json",
            "shard_sha_ok",
            "in_set",
            (True,),
        ),
    ]


def raw_rules(params: ValidateParams, resolution: int) -> list[Rule]:
    size = f"{resolution}x{resolution}"
    return _common("raw") + [
        Rule("rgb_decodable", "the RGB image decodes", "rgb_decodable", "in_set", (True,)),
        Rule("rgb_size", f"the RGB image is {size}", "rgb_size", "in_set", (size,)),
        Rule(
            "rgb_channels",
            "the RGB image has 3 channels",
            "rgb_channels",
            "between",
            min_value=3,
            max_value=3,
        ),
        Rule(
            "caption_length",
            f"the caption has {params.caption_min_chars}..{params.caption_max_chars} characters",
            "caption_chars",
            "between",
            min_value=params.caption_min_chars,
            max_value=params.caption_max_chars,
        ),
    ]


def label_rules(
    params: ValidateParams, resolution: int, members: tuple[str, ...] = (), clip_shape: str | None = None
) -> list[Rule]:
    """The labeled suite; ``members`` adds the rules of the optional label members the set holds
    (edges, clip, caption), ``clip_shape`` the feature-map shape every sample must share."""
    size = f"{resolution}x{resolution}"
    n_classes = len(CLASSES)
    return _core_label_rules(params, size, n_classes) + _optional_label_rules(
        params, size, members, clip_shape
    )


def _optional_label_rules(
    params: ValidateParams, size: str, members: tuple[str, ...], clip_shape: str | None
) -> list[Rule]:
    rules = []
    if "edges" in members:
        rules += [
            Rule("edges_size", f"edges are {size}", "edges_size", "in_set", (size,)),
            Rule(
                "edges_binary",
                "edge maps hold only 0 and 1",
                "edges_nonbinary",
                "between",
                min_value=0,
                max_value=0,
            ),
        ]
    if "clip" in members:
        rules += [
            Rule(
                "clip_shape",
                f"every CLIP feature map is grid x grid x D = {clip_shape}",
                "clip_shape",
                "in_set",
                (clip_shape,),
            ),
            Rule(
                "clip_finite",
                "CLIP features are finite",
                "clip_nonfinite",
                "between",
                min_value=0,
                max_value=0,
            ),
        ]
    if "caption" in members:
        # a source may lack captions (caption_min_chars 0 for the raw suite); a captioner may not
        least = max(1, params.caption_min_chars)
        rules.append(
            Rule(
                "label_caption_length",
                f"the labeled caption has {least}..{params.caption_max_chars} characters",
                "label_caption_chars",
                "between",
                min_value=least,
                max_value=params.caption_max_chars,
            )
        )
    return rules


def _core_label_rules(params: ValidateParams, size: str, n_classes: int) -> list[Rule]:
    return _common("labeled") + [
        Rule("id_in_source", "the id is an accepted raw sample", "in_source", "in_set", (True,)),
        Rule(
            "labels_decodable",
            "depth, normal, semseg and boxes decode",
            "labels_decodable",
            "in_set",
            (True,),
        ),
        Rule("label_size", f"depth, normal and semseg are {size}", "label_size", "in_set", (size,)),
        Rule(
            "depth_finite",
            "depth has no NaN or infinite pixel",
            "depth_nonfinite",
            "between",
            min_value=0,
            max_value=0,
        ),
        Rule(
            "depth_positive", "depth is > 0 everywhere", "depth_min", "between", min_value=0, strict_min=True
        ),
        Rule(
            "normal_unit_length",
            f"normals have unit length within {params.normal_tolerance:g}",
            "normal_norm_err",
            "between",
            min_value=0,
            max_value=params.normal_tolerance,
        ),
        Rule(
            "semseg_known_class",
            f"semseg ids are class ids 0..{n_classes - 1}",
            "semseg_max",
            "between",
            min_value=0,
            max_value=n_classes - 1,
        ),
        Rule(
            "boxes_inside_image",
            "every box lies inside the image",
            "boxes_outside",
            "between",
            min_value=0,
            max_value=0,
        ),
        Rule(
            "boxes_ordered",
            "every box has x0 < x1 and y0 < y1",
            "boxes_inverted",
            "between",
            min_value=0,
            max_value=0,
        ),
        Rule(
            "boxes_known_class",
            f"every box class is one of {', '.join(CLASSES[1:])}",
            "boxes_unknown_class",
            "between",
            min_value=0,
            max_value=0,
        ),
    ]
