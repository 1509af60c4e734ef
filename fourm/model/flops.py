"""Matmul FLOPs of the 4M encoder-decoder, counted one way by everyone (DESIGN.md).

Each linear layer counts at the token count it sees: encoder layers at the encoder
tokens E, decoder layers at the decoder tokens T (all target modalities together),
the cross-attention K/V projections and the encoder->decoder context projection at E.
Attention counts QK^T and AV in full (masks ignored): encoder E x E, decoder
self-attention T x T, cross-attention T x E. Output logits count per target modality
at its token count times its vocabulary. Embedding lookups, norms, activations,
softmax and the loss are not matmuls and are not counted. 2 FLOPs per multiply-add.
A training step is 3 x the forward (backward = 2 x forward) times the batch.
"""

from __future__ import annotations

from collections.abc import Mapping

from fourm.model.config import ModelConfig


def forward_matmul_flops(config: ModelConfig, enc_tokens: int, dec_tokens: Mapping[str, int]) -> int:
    """Forward matmul FLOPs of one sample with ``enc_tokens`` inputs and ``dec_tokens[m]`` targets of m."""
    unknown = set(dec_tokens) - set(config.targets)
    if unknown:
        raise ValueError(f"{sorted(unknown)} are not targets of this model ({', '.join(config.targets)})")
    D, E, T = config.dim, enc_tokens, sum(dec_tokens.values())
    h = config.hidden_dim
    fc1_out = 2 * h if config.feed_forward == "swiglu" else h
    mlp = D * fc1_out + h * D  # MACs per token

    # multiply-adds per sample
    encoder_layer = E * (3 * D * D + D * D + mlp) + 2 * E * E * D  # qkv, proj, mlp; QK^T + AV
    self_attention = T * (3 * D * D + D * D) + 2 * T * T * D  # qkv, proj; QK^T + AV
    cross_attention = T * (D * D + D * D) + E * 2 * D * D + 2 * T * E * D  # q, proj at T; kv at E; QK^T + AV
    decoder_layer = self_attention + cross_attention + T * mlp
    context = E * D * D  # context_proj
    logits = sum(n * D * config.vocab_size(name) for name, n in dec_tokens.items())
    macs = config.encoder_depth * encoder_layer + config.decoder_depth * decoder_layer + context + logits
    return 2 * macs


def train_step_flops(
    config: ModelConfig, enc_tokens: int, dec_tokens: Mapping[str, int], batch_size: int
) -> int:
    """FLOPs of forward + backward over a batch: 3 x the forward matmul FLOPs x ``batch_size``."""
    return 3 * forward_matmul_flops(config, enc_tokens, dec_tokens) * batch_size
