"""The model's input: a masked batch, the contract between masking and the model.

Encoder and decoder tokens come as flat per-sample lists of fixed length (the input
and target budgets), each token tagged with its modality and its position inside that
modality. Padding fills the slots a sample cannot use; it is never attended to and
never contributes to the loss.

Decoder layout rule (the model relies on it): within a sample, the decoder tokens of
one modality are contiguous, and a sequence modality's tokens are in order, so
"causal within a sequence" is ``position_key <= position_query``.

Field       shape   meaning
----------  ------  --------------------------------------------------------------
enc_tokens  (B, E)  token id in its modality's vocabulary (0 at padding)
enc_mod     (B, E)  index of the modality in ``ModelConfig.modalities``
enc_pos     (B, E)  position inside the modality (image: row*grid+col; sequence: index)
enc_pad     (B, E)  True where the slot is padding
dec_tokens  (B, T)  decoder input: for sequences the previous target token (teacher
                    forcing); ignored for image-like modalities (a mask token enters)
dec_mod     (B, T)  modality index, as enc_mod
dec_pos     (B, T)  position inside the modality (sequences: index in the target sequence)
dec_pad     (B, T)  True where the slot is padding
targets     (B, T)  the token to predict at each decoder slot (0 at padding)
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

FIELDS = (
    "enc_tokens",
    "enc_mod",
    "enc_pos",
    "enc_pad",
    "dec_tokens",
    "dec_mod",
    "dec_pos",
    "dec_pad",
    "targets",
)


@dataclass
class MaskedBatch:
    """A batch ready for ``FourM.forward`` (see the module doc for every field)."""

    enc_tokens: torch.Tensor
    enc_mod: torch.Tensor
    enc_pos: torch.Tensor
    enc_pad: torch.Tensor
    dec_tokens: torch.Tensor
    dec_mod: torch.Tensor
    dec_pos: torch.Tensor
    dec_pad: torch.Tensor
    targets: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MaskedBatch:
        return MaskedBatch(
            **{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)}
        )

    def __len__(self) -> int:
        return int(self.enc_tokens.shape[0])

    def split(self, parts: int) -> list[MaskedBatch]:
        """``parts`` micro-batches along the batch dimension (gradient accumulation)."""
        chunks = {f.name: torch.tensor_split(getattr(self, f.name), parts) for f in fields(self)}
        return [MaskedBatch(**{k: v[i] for k, v in chunks.items()}) for i in range(parts)]

    @staticmethod
    def from_numpy(arrays: dict) -> MaskedBatch:
        """From the dict of numpy arrays masking produces (ids as int64, pads as bool)."""
        return MaskedBatch(**{k: torch.as_tensor(arrays[k]) for k in FIELDS})

    def target_counts(self, num_modalities: int) -> torch.Tensor:
        """Non-padding decoder tokens per modality index: ``(num_modalities,)`` int64."""
        valid = ~self.dec_pad
        return torch.bincount(self.dec_mod[valid], minlength=num_modalities)
