"""``hf-caption``: the source caption when a sample has one, else a captioning model's (greedy).

Checkpoints: ``VisionEncoderDecoderModel`` (e.g. ViT-GPT2 captioners) or what
``AutoModelForImageTextToText`` (``AutoModelForVision2Seq`` on older
transformers) loads, e.g. BLIP. The model directory needs an image processor
and a tokenizer. Decoding is greedy (no sampling, one beam) up to
``max_new_tokens``, so a caption depends only on the image and the weights.

Captions are not a label-stage modality (the raw set carries them and the raw
suite requires them), so this labeler is for sources without captions: call it
directly, or wire it in where captions get filled.
"""

from __future__ import annotations

from typing import Any

from fourm.labelers.base import RawSample, register_labeler
from fourm.labelers.hf_load import HfLabeler, check_positive_int, inference


@register_labeler("hf-caption")
class HfCaptionLabeler(HfLabeler):
    name = "hf-caption"
    version = "1"
    produces = ("caption",)

    def __init__(
        self,
        model: str,
        max_new_tokens: int = 30,
        use_source_caption: bool = True,
        **shared: Any,
    ):
        self.max_new_tokens = check_positive_int(self.name, "max_new_tokens", max_new_tokens)
        self.use_source_caption = bool(use_source_caption)
        super().__init__(model, **shared)  # device, batch_size, bf16, revision, cache_dir, allow_download
        self.tokenizer = self._from_pretrained(self._transformers().AutoTokenizer)

    def _load_model(self) -> Any:
        tf = self._transformers()
        config = self._from_pretrained(tf.AutoConfig)
        if config.model_type == "vision-encoder-decoder":
            cls = tf.VisionEncoderDecoderModel
        else:
            cls = getattr(tf, "AutoModelForImageTextToText", None) or tf.AutoModelForVision2Seq
        return self._from_pretrained(cls)

    def __call__(self, batch: list[RawSample]) -> list[dict[str, Any]]:
        out: list[dict[str, Any] | None] = [None] * len(batch)
        todo = []
        for i, sample in enumerate(batch):
            if self.use_source_caption and sample.caption and sample.caption.strip():
                out[i] = {"caption": sample.caption}
            else:
                todo.append(i)
        if todo:
            for i, label in zip(todo, super().__call__([batch[i] for i in todo]), strict=True):
                out[i] = label
        return out  # type: ignore[return-value]

    def _label_chunk(self, samples: list[RawSample]) -> list[dict[str, Any]]:
        inputs = self._encode(samples)
        with inference(self.device, self.bf16):
            ids = self.model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1
            )
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [{"caption": " ".join(t.split())} for t in texts]

    def provenance(self) -> dict[str, Any]:
        return {
            **super().provenance(),
            "decoding": {"method": "greedy", "max_new_tokens": self.max_new_tokens},
            "use_source_caption": self.use_source_caption,
        }
