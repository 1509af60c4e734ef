"""The 4M encoder-decoder, read top-down: embed -> encode -> decode -> logits -> loss.

Shapes: B batch, E encoder slots (input budget), T decoder slots (target budget),
D model dim, V_m the vocabulary of modality m. The batch layout is fourm/model/batch.py.

Attention rules (Mizrahi et al. 2023, Sec. 3):
- encoder: every real input token attends to every real input token;
- decoder self-attention: only among tokens of the same modality, causal within
  sequence modalities (captions, boxes); cross-attention to every real encoder token;
- padding is never a key, so it cannot change a real token's output. In the decoder
  each query may always attend to itself, and a sample with no real encoder token may
  attend to its first slot, so no attention row is fully masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fourm.modalities import get_modality
from fourm.model.batch import MaskedBatch
from fourm.model.config import ModelConfig
from fourm.model.embeddings import DecoderEmbedding, EncoderEmbedding, PatchEmbedding
from fourm.model.layers import DecoderBlock, EncoderBlock, attention_bias


@dataclass
class FourMOutput:
    """``loss``: modality-balanced cross-entropy; ``ce_sums``/``counts``: per modality index."""

    loss: torch.Tensor
    ce_sums: torch.Tensor  # (M,) summed token cross-entropy per modality, fp32
    counts: torch.Tensor  # (M,) real target tokens per modality

    def modality_losses(self, names: tuple[str, ...]) -> dict[str, float]:
        """Mean cross-entropy per modality that had targets in this batch."""
        sums, counts = self.ce_sums.tolist(), self.counts.tolist()
        return {n: s / c for n, s, c in zip(names, sums, counts, strict=True) if c}


def balanced_loss(ce_sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean over modalities (with targets) of each modality's mean token cross-entropy."""
    present = counts > 0
    per_modality = ce_sums[present] / counts[present].to(ce_sums.dtype)
    return per_modality.mean() if per_modality.numel() else ce_sums.sum() * 0.0


class FourM(nn.Module):
    """Any-to-any masked encoder-decoder over the modalities of ``config``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.modalities = config.modalities
        d = config.dim
        self.encoder_embed = EncoderEmbedding(config)
        self.encoder = nn.ModuleList([EncoderBlock(config) for _ in range(config.encoder_depth)])
        self.encoder_norm = nn.LayerNorm(d, eps=config.norm_eps, bias=config.bias)
        self.context_proj = nn.Linear(d, d, bias=config.bias)  # encoder space -> decoder context
        self.decoder_embed = DecoderEmbedding(config)
        self.decoder = nn.ModuleList([DecoderBlock(config) for _ in range(config.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(d, eps=config.norm_eps, bias=config.bias)
        self.heads = nn.ModuleDict(
            {name: nn.Linear(d, config.vocab_size(name), bias=config.bias) for name in config.targets}
        )
        self.patch_embed = PatchEmbedding(config) if "rgb_patches" in config.inputs else None
        # Sequence modalities whose decoder is causal (a buffer, so it follows .to(device)).
        is_seq = [get_modality(n).kind in ("sequence", "boxes") for n in self.modalities]
        self.register_buffer("is_sequence", torch.tensor(is_seq), persistent=False)
        self._init_weights()
        if config.tie_embeddings:
            for name, table in self.decoder_embed.token.items():
                self.heads[name].weight = table.weight  # decoder input and output embeddings tied

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        for p in (self.encoder_embed.positions.modality, self.decoder_embed.positions.modality):
            nn.init.normal_(p, std=0.02)
        nn.init.normal_(self.decoder_embed.mask_token, std=0.02)

    # -- masks ----------------------------------------------------------------------------

    @staticmethod
    def key_padding_mask(pad: torch.Tensor) -> torch.Tensor | None:
        """(B, 1, 1, M) True = may attend, or None when nothing is padded (faster kernels).

        A sample whose slots are all padding may attend to its first slot, so no query row is
        fully masked (some kernels return NaN for those); its outputs are padding anyway."""
        if not bool(pad.any()):
            return None
        keep = ~pad
        keep[:, 0] |= pad.all(dim=1)
        return keep[:, None, None, :]

    def decoder_self_mask(self, mod: torch.Tensor, pos: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, T): same modality, not padding, causal inside sequences; self always allowed."""
        same = mod[:, :, None] == mod[:, None, :]  # (B, T, T) query x key
        causal = pos[:, None, :] <= pos[:, :, None]
        allowed = same & ~pad[:, None, :] & (causal | ~self.is_sequence[mod][:, :, None])
        allowed |= torch.eye(mod.shape[1], dtype=torch.bool, device=mod.device)
        return allowed[:, None]

    # -- the forward pass -------------------------------------------------------------------

    def encode(self, batch: MaskedBatch) -> torch.Tensor:
        """Input tokens -> encoder states (B, E, D)."""
        x = self.encoder_embed(batch.enc_tokens, batch.enc_mod, batch.enc_pos)  # (B, E, D)
        mask = attention_bias(self.key_padding_mask(batch.enc_pad))
        for block in self.encoder:
            x = block(x, mask)
        return self.encoder_norm(x)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """RGB pixels (B, 3, H, W) -> encoder states (B, grid², D): the encoder as a ViT backbone."""
        if self.patch_embed is None:
            raise ValueError("this model has no rgb_patches input; add it to the config's inputs")
        x = self.patch_embed(images)  # (B, N, D)
        n = x.shape[1]
        mod = torch.full((x.shape[0], n), self.modalities.index("rgb_patches"), device=x.device)
        pos = torch.arange(n, device=x.device).expand(x.shape[0], n)
        x = x + self.encoder_embed.positions(mod, pos).to(x.dtype)
        for block in self.encoder:
            x = block(x, None)
        return self.encoder_norm(x)

    def decode(self, batch: MaskedBatch, encoded: torch.Tensor) -> torch.Tensor:
        """Target slots attending to the encoder states -> decoder states (B, T, D)."""
        context = self.context_proj(encoded)  # (B, E, D)
        x = self.decoder_embed(batch.dec_tokens, batch.dec_mod, batch.dec_pos)  # (B, T, D)
        self_mask = attention_bias(self.decoder_self_mask(batch.dec_mod, batch.dec_pos, batch.dec_pad))
        cross_mask = attention_bias(self.key_padding_mask(batch.enc_pad))
        for block in self.decoder:
            x = block(x, context, self_mask, cross_mask)
        return self.decoder_norm(x)

    def logits(
        self, decoded: torch.Tensor, batch: MaskedBatch
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per target modality: (logits (n_m, V_m), selection (B, T) bool) for its real slots."""
        out = {}
        for name, head in self.heads.items():
            sel = (batch.dec_mod == self.modalities.index(name)) & ~batch.dec_pad  # (B, T)
            out[name] = (head(decoded[sel]), sel)  # (n_m, V_m)
        return out

    def loss(self, decoded: torch.Tensor, batch: MaskedBatch) -> FourMOutput:
        """Cross-entropy per target modality (summed), then the modality-balanced mean."""
        per_modality = self.logits(decoded, batch)
        zero = decoded.new_zeros((), dtype=torch.float32)
        sums, counts = [], []
        for name in self.modalities:
            if name not in per_modality:
                sums.append(zero)
                counts.append(torch.zeros((), dtype=torch.long, device=decoded.device))
                continue
            logits, sel = per_modality[name]
            sums.append(F.cross_entropy(logits.float(), batch.targets[sel], reduction="sum"))
            counts.append(sel.sum())
        sums_t, counts_t = torch.stack(sums), torch.stack(counts)  # (M,), (M,)
        return FourMOutput(balanced_loss(sums_t, counts_t), sums_t, counts_t)

    def forward(self, batch: MaskedBatch) -> FourMOutput:
        encoded = self.encode(batch)  # (B, E, D)
        decoded = self.decode(batch, encoded)  # (B, T, D)
        return self.loss(decoded, batch)

    # -- bookkeeping ------------------------------------------------------------------------

    def num_parameters(self, embeddings: bool = True) -> int:
        """Parameters counted once (tied tables once); without embeddings: token tables, heads,
        modality embeddings and mask tokens excluded."""
        seen: dict[int, int] = {}
        for name, p in self.named_parameters():
            if not embeddings and (
                name.startswith(("encoder_embed.", "decoder_embed.", "heads.", "patch_embed."))
            ):
                continue
            seen[id(p)] = p.numel()
        return sum(seen.values())
