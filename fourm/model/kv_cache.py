"""Key/value cache for autoregressive decoding of one sequence modality.

Decoding a caption token by token with ``FourM.decode`` recomputes every earlier
position at each step (quadratic work). The cache keeps, per decoder layer, the
self-attention keys/values of the tokens decoded so far and the cross-attention
keys/values of the encoder output, so each step runs the decoder on one new
token only. It computes what ``FourM.decode`` computes for a decoder holding
only this modality's tokens: self-attention among them is causal and has no
padding, so the new token attends to every cached key without a mask.
"""

from __future__ import annotations

import torch

from fourm.model.model import FourM


class DecoderCache:
    """Incremental decoder for a batch: ``step(tokens, positions)`` -> hidden states of those tokens."""

    def __init__(self, model: FourM, encoded: torch.Tensor, enc_pad: torch.Tensor, modality: str):
        self.model = model
        self.modality_index = model.modalities.index(modality)
        self.token_table = model.decoder_embed.token[modality]
        context = model.context_proj(encoded)  # (B, E, D)
        self.cross = [block.cross_attn.cross_kv(block.context_norm(context)) for block in model.decoder]
        self.cross_mask = model.key_padding_mask(enc_pad)
        self.keys: list[torch.Tensor | None] = [None] * len(model.decoder)
        self.values: list[torch.Tensor | None] = [None] * len(model.decoder)

    @property
    def length(self) -> int:
        """Tokens decoded so far."""
        k = self.keys[0]
        return 0 if k is None else int(k.shape[2])

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Run the decoder on the next token of each sample: tokens/positions (B, 1) -> (B, 1, D)."""
        model = self.model
        mod = torch.full_like(tokens, self.modality_index)
        # DecoderEmbedding for a sequence modality: position + modality + token (no mask token)
        x = model.decoder_embed.positions(mod, positions) + self.token_table(tokens)
        for i, block in enumerate(model.decoder):
            q, k, v = block.self_attn.self_qkv(block.norm1(x))
            if self.keys[i] is not None:
                k = torch.cat([self.keys[i], k], dim=2)
                v = torch.cat([self.values[i], v], dim=2)
            self.keys[i], self.values[i] = k, v
            x = x + block.self_attn.attend(q, k, v, None)
            ck, cv = self.cross[i]
            x = x + block.cross_attn.attend(
                block.cross_attn.cross_q(block.query_norm(x)), ck, cv, self.cross_mask
            )
            x = x + block.mlp(block.norm2(x))
        return model.decoder_norm(x)
