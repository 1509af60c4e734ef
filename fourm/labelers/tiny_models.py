"""Tiny, randomly initialised transformers checkpoints for each model-backed labeler family.

Saved with their image processors (and tokenizer), so they load through the same
offline ``from_pretrained(dir, local_files_only=True)`` path as real checkpoints.
The tests and ``fourm bench label`` use them: their labels are noise, their
speed is that of the labeler's code around a minimal model, not of a real model.
"""

from __future__ import annotations

from pathlib import Path

RES = 64
LABELS = {0: "background", 1: "ball", 2: "box", 3: "can"}
MAPPING = "ball: sphere\nbox: cube\n3: cylinder\n"  # model labels by name and by id -> project classes


def depth_model(root: Path) -> Path:
    """Depth Anything (DINOv2 backbone) at 56x56, biased to a positive disparity everywhere."""
    import torch
    import transformers as tf

    backbone = tf.Dinov2Config(
        image_size=56, patch_size=14, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=64, out_features=["stage1", "stage2", "stage3", "stage4"],
        reshape_hidden_states=False,
    )  # fmt: skip
    config = tf.DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[16, 16, 16, 16],
        fusion_hidden_size=16, head_hidden_size=16, patch_size=14,
    )  # fmt: skip
    model = tf.DepthAnythingForDepthEstimation(config)
    with torch.no_grad():  # a positive disparity everywhere, so depth is not the floor case only
        model.head.conv3.bias.fill_(1.0)
    model.save_pretrained(root)
    tf.DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=False).save_pretrained(root)
    return root


def semseg_model(root: Path) -> Path:
    """SegFormer with two encoder blocks and the four classes of ``LABELS``."""
    import transformers as tf

    config = tf.SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=16,
        num_labels=len(LABELS), id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
    )  # fmt: skip
    tf.SegformerForSemanticSegmentation(config).save_pretrained(root)
    tf.SegformerImageProcessor(size={"height": RES, "width": RES}).save_pretrained(root)
    return root


def boxes_model(root: Path) -> Path:
    """YOLOS with 10 detection tokens and the classes of ``LABELS``."""
    import transformers as tf

    config = tf.YolosConfig(
        image_size=[RES, RES], patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_detection_tokens=10, num_labels=len(LABELS), id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
    )  # fmt: skip
    tf.YolosForObjectDetection(config).save_pretrained(root)
    tf.YolosImageProcessor(size={"shortest_edge": RES, "longest_edge": RES}).save_pretrained(root)
    return root


def caption_model(root: Path) -> Path:
    """A ViT encoder + BERT decoder (VisionEncoderDecoder) with an 11-word vocabulary."""
    import transformers as tf

    root.mkdir(parents=True)
    words = ["a", "the", "red", "blue", "green", "sphere", "cube", "cylinder", "on", "floor", "and"]
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = tf.BertTokenizer(str(root / "vocab.txt"))
    encoder = tf.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64,
    )  # fmt: skip
    decoder = tf.BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, is_decoder=True, add_cross_attention=True, max_position_embeddings=64,
    )  # fmt: skip
    config = tf.VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    model = tf.VisionEncoderDecoderModel(config)
    for cfg in (model.config, model.generation_config):
        cfg.decoder_start_token_id = tokenizer.cls_token_id
        cfg.pad_token_id = tokenizer.pad_token_id
        cfg.eos_token_id = tokenizer.sep_token_id
    model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    tf.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root)
    return root


def clip_vision_model(root: Path) -> Path:
    """A CLIP vision tower (patch 8, hidden size 32)."""
    import transformers as tf

    vision = tf.CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64,
    )  # fmt: skip
    tf.CLIPVisionModel(vision).save_pretrained(root)
    tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        root
    )
    return root


# labeler -> (model directory, builder, needs the class mapping, other options)
_FAMILIES = {
    "hf-depth": ("depth", depth_model, False, {}),
    "hf-normal": ("depth", depth_model, False, {}),
    "hf-semseg": ("semseg", semseg_model, True, {}),
    "hf-boxes": ("boxes", boxes_model, True, {"threshold": 0.0}),
    "hf-caption": ("caption", caption_model, False, {"use_source_caption": False, "max_new_tokens": 8}),
    "hf-clip": ("clip", clip_vision_model, False, {}),
}
TINY_FAMILIES = tuple(_FAMILIES)


def tiny_labeler_options(root: Path, labelers: list[str] | None = None) -> dict[str, dict]:
    """Build tiny models under ``root`` (once each); return labeler name -> its options
    (``label.options`` style) for each of ``labelers`` (default: every family here)."""
    import torch

    torch.manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    mapping = root / "mapping.yaml"
    mapping.write_text(MAPPING)
    options: dict[str, dict] = {}
    for name in labelers if labelers is not None else TINY_FAMILIES:
        directory, build, mapped, extra = _FAMILIES[name]
        if not (root / directory).exists():
            build(root / directory)
        options[name] = {
            "model": str(root / directory),
            **({"mapping": str(mapping)} if mapped else {}),
            **extra,
        }
    return options
