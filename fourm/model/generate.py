"""Any-to-any generation with a trained 4M model.

The state of a generation is one ``Given`` per modality: its tokens and which of
them are known. Known tokens enter the encoder (image-like: the known positions;
sequences: the content of a fully known row); unknown ones are generated:

- image-like targets, in parallel: **MaskGIT** (each step predicts every unknown
  position and keeps the most confident, ``tokens_per_step`` of them) or **ROAR**
  (random-order autoregressive: each step decodes the next positions of a random
  order). Tokens fixed in a step join the encoder input of the next, as in 4M;
- sequence targets (captions, boxes): **autoregressive** decoding, as trained
  (``[S_0]`` then the content, ending at ``[EOS]``), with a key/value cache or
  without (both give the same tokens); a known prefix of the row is continued;
- **chained** generation: a plan of steps, each output added to the conditioning
  of the next;
- **classifier-free guidance** (``guidance`` != 1): logits = unconditional +
  guidance x (conditional - unconditional), the unconditional pass seeing only
  the target's own known tokens (the model must be trained with ``input_dropout``).

Everything is batched, and deterministic under a ``torch.Generator`` seed. The values
it passes around (``Given``, ``GenerationStep``, ...) are in generation_types.py.
Shapes: B batch, N positions of a modality, V vocabulary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence

import torch

from fourm.modalities import get_modality
from fourm.model.batch import MaskedBatch
from fourm.model.generation_types import ChainResult, GenerationError, GenerationStep, Given, StepRecord
from fourm.model.kv_cache import DecoderCache
from fourm.model.masking_config import EOS_ID, FIRST_SENTINEL_ID, PAD_ID, SEQUENCE_KINDS, SOS_ID
from fourm.model.model import FourM
from fourm.model.sampling import sample, temperature_at, tokens_per_step

# -- checks -----------------------------------------------------------------------------


def check_request(model: FourM, states: Mapping[str, Given], target: str) -> int:
    """Validate the states against the model and return the batch size; clear errors otherwise."""
    config = model.config
    for name in (*states, target):
        try:
            get_modality(name)
        except KeyError as err:
            raise GenerationError(str(err)) from None
    if target not in config.targets:
        raise GenerationError(
            f"the model cannot generate {target!r}; its targets: {', '.join(config.targets)}"
        )
    sizes = set()
    for name, given in states.items():
        n = get_modality(name).num_tokens
        if given.tokens.shape != given.known.shape or given.tokens.ndim != 2 or given.tokens.shape[1] != n:
            raise GenerationError(
                f"{name}: expected tokens and known of shape (B, {n}), got "
                f"{tuple(given.tokens.shape)} and {tuple(given.known.shape)}"
            )
        vocab = config.vocab_size(name)
        bad = given.known & ((given.tokens < 0) | (given.tokens >= vocab))
        if bool(bad.any()):
            raise GenerationError(f"{name}: known token ids must be in [0, {vocab})")
        if name not in config.inputs and bool(given.known.any()) and name != target:
            raise GenerationError(
                f"{name!r} is not an input of this model; its inputs: {', '.join(config.inputs)}"
            )
        sizes.add(len(given))
    if not sizes:
        raise GenerationError(f"nothing given: for unconditional generation pass Given.empty(B, {target!r})")
    if len(sizes) != 1:
        raise GenerationError(f"every modality needs the same batch size, got {sorted(sizes)}")
    return sizes.pop()


# -- model inputs -----------------------------------------------------------------------


def _content_length(rows: torch.Tensor) -> torch.Tensor:
    """Tokens between [SOS] and the first [EOS]/[PAD] (the row end when there is neither)."""
    stop = (rows[:, 1:] == EOS_ID) | (rows[:, 1:] == PAD_ID)
    width = rows.shape[1] - 1
    first = torch.where(stop.any(1), stop.int().argmax(1), torch.full_like(rows[:, 0], width))
    return first


def _compact(ok: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each row's True columns moved to the front, in order: (pad, *values), width = max count >= 1."""
    order = torch.sort((~ok).int(), dim=1, stable=True).indices
    width = max(int(ok.sum(1).max()) if ok.numel() else 0, 1)
    order = order[:, :width]
    pad = ~ok.gather(1, order)
    return (pad, *(torch.where(pad, 0, v.gather(1, order)) for v in values))


def encoder_inputs(model: FourM, states: Mapping[str, Given]) -> dict[str, torch.Tensor]:
    """enc_tokens/enc_mod/enc_pos/enc_pad (B, E) from the known tokens, in ``config.modalities`` order."""
    config = model.config
    toks, mods, poss, oks = [], [], [], []
    for name in config.modalities:
        if name not in states or name not in config.inputs:
            continue
        given, m = states[name], get_modality(name)
        if m.kind in SEQUENCE_KINDS:
            content = given.tokens[:, 1:]
            j = torch.arange(content.shape[1], device=content.device)
            ok = (j < _content_length(given.tokens)[:, None]) & given.known.all(1, keepdim=True)
            tok, pos = content, j.expand_as(content)
        else:
            tok, ok = given.tokens, given.known
            pos = torch.arange(tok.shape[1], device=tok.device).expand_as(tok)
        toks.append(tok)
        oks.append(ok)
        poss.append(pos)
        mods.append(torch.full_like(tok, config.modalities.index(name)))
    if not toks:
        any_state = next(iter(states.values()))
        b, dev = len(any_state), any_state.tokens.device
        return _nothing_known(b, dev)
    pad, tok, mod, pos = _compact(
        torch.cat(oks, 1), torch.cat(toks, 1), torch.cat(mods, 1), torch.cat(poss, 1)
    )
    return {"enc_tokens": tok, "enc_mod": mod, "enc_pos": pos, "enc_pad": pad}


def _nothing_known(batch: int, device: torch.device | str) -> dict[str, torch.Tensor]:
    """An encoder input of one padding slot per sample (the model's unconditional input)."""
    zeros = torch.zeros(batch, 1, dtype=torch.long, device=device)
    return {
        "enc_tokens": zeros,
        "enc_mod": zeros,
        "enc_pos": zeros,
        "enc_pad": torch.ones_like(zeros, dtype=torch.bool),
    }


def _masked_batch(enc: Mapping[str, torch.Tensor], dec_tokens, dec_mod, dec_pos, dec_pad) -> MaskedBatch:
    return MaskedBatch(
        enc["enc_tokens"], enc["enc_mod"], enc["enc_pos"], enc["enc_pad"],
        dec_tokens, dec_mod, dec_pos, dec_pad, torch.zeros_like(dec_tokens),
    )  # fmt: skip


def _stack_batches(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Two encoder inputs as one batch (a then b), padded to the wider one."""
    width = max(a["enc_pad"].shape[1], b["enc_pad"].shape[1])

    def widen(t: torch.Tensor, fill: int | bool) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill)

    return {k: torch.cat([widen(a[k], k == "enc_pad"), widen(b[k], k == "enc_pad")]) for k in a}


def _autocast(model: FourM, bf16: bool) -> contextlib.AbstractContextManager:
    device = next(model.parameters()).device
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def _guided(logits: torch.Tensor, batch: int, guidance: float) -> torch.Tensor:
    """Combine a doubled batch's conditional (first half) and unconditional logits."""
    if guidance == 1.0:
        return logits
    cond, uncond = logits[:batch], logits[batch:]
    return uncond + guidance * (cond - uncond)


def _usable(logits: torch.Tensor, step: GenerationStep) -> torch.Tensor:
    """Logits of ids the target's tokenizer cannot decode set to -inf."""
    if step.vocab_size is not None and step.vocab_size < logits.shape[-1]:
        logits[..., step.vocab_size :] = float("-inf")
    return logits


def _conditioning(states: Mapping[str, Given], target: str, guidance: float) -> list[dict[str, Given]]:
    """The states of the passes: conditional, plus unconditional (target only) under guidance."""
    passes = [dict(states)]
    if guidance != 1.0:
        passes.append({target: states[target]} if target in states else {})
    return passes


def _encode_passes(
    model: FourM, passes: list[dict[str, Given]], batch: int, device
) -> dict[str, torch.Tensor]:
    encs = [encoder_inputs(model, p) if p else _nothing_known(batch, device) for p in passes]
    return encs[0] if len(encs) == 1 else _stack_batches(encs[0], encs[1])


# -- parallel decoding of image-like targets -------------------------------------------------


def _image_logits(
    model: FourM,
    states: Mapping[str, Given],
    target: str,
    query: torch.Tensor,
    step: GenerationStep,
    bf16: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (B, Q, V) at the positions where ``query`` (B, N) is True, with positions/pad (B, Q)."""
    batch, device = query.shape[0], query.device
    passes = _conditioning(states, target, step.guidance)
    enc = _encode_passes(model, passes, batch, device)
    positions = torch.arange(query.shape[1], device=device).expand_as(query)
    pad, pos = _compact(query, positions)
    reps = len(passes)
    mod = torch.full_like(pos, model.modalities.index(target))
    dec = [t.repeat(reps, 1) for t in (torch.zeros_like(pos), mod, pos, pad)]
    with _autocast(model, bf16):
        mb = _masked_batch(enc, *dec)
        decoded = model.decode(mb, model.encode(mb))
        logits = model.heads[target](decoded).float()  # (reps*B, Q, V)
    return _usable(_guided(logits, batch, step.guidance), step), pos, pad


def _image_target(model: FourM, states: Mapping[str, Given], target: str) -> Given:
    """The checked request's state of the image-like ``target`` (nothing known if not given)."""
    if get_modality(target).kind in SEQUENCE_KINDS:
        raise GenerationError(f"{target!r} is a sequence; decode it autoregressively")
    batch = check_request(model, states, target)
    device = next(model.parameters()).device
    return states[target] if target in states else Given.empty(batch, target, device)


def parallel_decode(
    model: FourM,
    states: Mapping[str, Given],
    step: GenerationStep,
    generator: torch.Generator | None = None,
    bf16: bool = False,
) -> Given:
    """Fill every unknown position of an image-like target by MaskGIT or ROAR; known ones stay."""
    target, method = step.target, step.resolved_method
    given = _image_target(model, states, target)
    batch, device = len(given), next(model.parameters()).device
    tokens, known = given.tokens.clone(), given.known.clone()
    unknown = (~known).sum(1).tolist()
    if step.steps > 1 and target not in model.config.inputs and max(unknown) > 0:
        raise GenerationError(
            f"{target!r} is not an input of this model, so decoded tokens cannot condition later "
            "steps; use steps=1"
        )
    counts = torch.tensor(
        [tokens_per_step(n, step.steps, step.schedule) for n in unknown], dtype=torch.long, device=device
    )  # (B, steps)
    if method == "roar":  # a random order of the unknown positions: rank 0 decoded first
        keys = torch.rand(known.shape, generator=generator, device=device).masked_fill(known, 2.0)
        rank = keys.argsort(1).argsort(1)
        done = torch.zeros(batch, dtype=torch.long, device=device)
    for i in range(step.steps):
        k = counts[:, i]
        if int(k.sum()) == 0:
            continue
        current = {**states, target: Given(tokens, known)}
        if method == "roar":
            query = (rank >= done[:, None]) & (rank < (done + k)[:, None])
            done = done + k
        else:
            query = ~known
        logits, pos, pad = _image_logits(model, current, target, query, step, bf16)
        temp = temperature_at(i, step.steps, step.temperature, step.temperature_schedule)
        _place(tokens, known, logits, pos, pad, None if method == "roar" else k, temp, step, generator)
    return Given(tokens, known)


def _place(
    tokens: torch.Tensor,
    known: torch.Tensor,
    logits: torch.Tensor,
    pos: torch.Tensor,
    pad: torch.Tensor,
    keep: torch.Tensor | None,
    temperature: float,
    step: GenerationStep,
    generator: torch.Generator | None,
) -> None:
    """Sample at the queried positions and write into ``tokens``/``known`` in place: every one
    (``keep`` None) or the ``keep[b]`` most confident of row ``b``."""
    ids, conf = sample(logits.flatten(0, 1), temperature, step.top_k, step.top_p, generator)
    ids, conf = ids.view(pos.shape), conf.view(pos.shape).masked_fill(pad, -1.0)
    if keep is None:
        chosen = ~pad
    else:
        rank_conf = conf.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
        chosen = (rank_conf < keep[:, None]) & ~pad
    rows = torch.arange(tokens.shape[0], device=tokens.device)[:, None].expand_as(pos)
    tokens[rows[chosen], pos[chosen]] = ids[chosen]
    known[rows[chosen], pos[chosen]] = True


def _one_pass(step: GenerationStep) -> bool:
    """Whether ``step`` decodes in a single forward pass whose logits draws can share."""
    return step.resolved_method == "maskgit" and step.steps == 1


def _one_pass_draws(
    model: FourM,
    states: Mapping[str, Given],
    step: GenerationStep,
    generators: Sequence[torch.Generator | None],
    bf16: bool,
) -> list[Given]:
    """One-step MaskGIT draws from one forward pass: draw ``i`` is what ``parallel_decode``
    gives with ``generators[i]`` (the same logits, the same sampling calls)."""
    target = step.target
    given = _image_target(model, states, target)
    unknown = ~given.known
    if not bool(unknown.any()):
        return [Given(given.tokens.clone(), given.known.clone()) for _ in generators]
    current = {**states, target: Given(given.tokens, given.known)}
    logits, pos, pad = _image_logits(model, current, target, unknown, step, bf16)
    temp = temperature_at(0, 1, step.temperature, step.temperature_schedule)
    keep = unknown.sum(1)  # one step decodes every unknown position
    out = []
    for generator in generators:
        tokens, known = given.tokens.clone(), given.known.clone()
        _place(tokens, known, logits, pos, pad, keep, temp, step, generator)
        out.append(Given(tokens, known))
    return out


# -- autoregressive decoding of sequences ----------------------------------------------------


def _prefix_length(given: Given) -> torch.Tensor:
    """Known content tokens after [SOS] of each row (a known prefix), (B,)."""
    known = given.known[:, 1:]
    return torch.where(known.all(1), known.shape[1], (~known).int().argmax(1))


def autoregressive(
    model: FourM,
    states: Mapping[str, Given],
    step: GenerationStep,
    generator: torch.Generator | None = None,
    bf16: bool = False,
) -> tuple[Given, torch.Tensor]:
    """Decode a sequence target token by token until [EOS] (or the row is full).

    Returns the rows ``[SOS] content [EOS] [PAD]..`` (all known) and each position's
    probability under the sampled distribution (B, N) (1 for given tokens, 0 after [EOS]).
    """
    target = step.target
    m = get_modality(target)
    if m.kind not in SEQUENCE_KINDS:
        raise GenerationError(f"{target!r} is image-like; decode it with maskgit or roar")
    batch = check_request(model, states, target)
    device = next(model.parameters()).device
    given = states.get(target)
    if given is not None and bool(given.known.all()):
        return given, torch.ones(given.tokens.shape, device=device)
    n = m.num_tokens
    prefix = _prefix_length(given) if given is not None and bool(given.known[:, 0].all()) else None
    rows = torch.full((batch, n), PAD_ID, dtype=torch.long, device=device)
    rows[:, 0] = SOS_ID
    scores = torch.zeros(batch, n, device=device)
    scores[:, 0] = 1.0
    lengths = torch.zeros(batch, dtype=torch.long, device=device) if prefix is None else prefix
    groups = sorted(set(lengths.tolist()))
    conditioning = {k: v for k, v in states.items() if k != target}
    for length in groups:  # samples with the same prefix length decode together
        idx = torch.nonzero(lengths == length).squeeze(1)
        sub = {k: Given(v.tokens[idx], v.known[idx]) for k, v in conditioning.items()}
        start = given.tokens[idx, 1 : 1 + length] if length else rows[idx, 1:1]
        out, sc = _decode_rows(model, sub, target, start, step, generator, bf16, len(idx))
        rows[idx], scores[idx] = out, sc
    return Given.full(rows), scores


def _decode_rows(
    model: FourM,
    conditioning: Mapping[str, Given],
    target: str,
    prefix: torch.Tensor,
    step: GenerationStep,
    generator: torch.Generator | None,
    bf16: bool,
    batch: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and scores for samples sharing one prefix length."""
    n = get_modality(target).num_tokens
    device = prefix.device
    passes = [dict(conditioning)] + ([{}] if step.guidance != 1.0 else [])
    reps = len(passes)
    enc = _encode_passes(model, passes, batch, device)
    mod_index = model.modalities.index(target)
    sentinel = torch.full((batch, 1), FIRST_SENTINEL_ID, dtype=torch.long, device=device)
    dec_in = torch.cat([sentinel, prefix], 1)  # decoder input so far: [S_0] c1 .. ck
    k = prefix.shape[1]
    rows = torch.full((batch, n), PAD_ID, dtype=torch.long, device=device)
    rows[:, 0] = SOS_ID
    rows[:, 1 : 1 + k] = prefix
    scores = torch.zeros(batch, n, device=device)
    scores[:, : 1 + k] = 1.0
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    with _autocast(model, bf16):
        mb0 = _masked_batch(enc, *(torch.zeros(reps * batch, 1, dtype=torch.long, device=device),) * 3,
                            torch.zeros(reps * batch, 1, dtype=torch.bool, device=device))  # fmt: skip
        encoded = model.encode(mb0)
        cache = DecoderCache(model, encoded, enc["enc_pad"], target) if step.use_cache else None
        fed = 0  # decoder inputs already in the cache
        for t in range(k, n - 1):  # position t predicts content token t+1 (or [EOS])
            if cache is not None:
                hidden = None
                while fed <= t:
                    tok = dec_in[:, fed : fed + 1].repeat(reps, 1)
                    pos = torch.full_like(tok, fed)
                    hidden = cache.step(tok, pos)
                    fed += 1
                last = hidden[:, -1]
            else:
                width = dec_in.shape[1]
                pos = torch.arange(width, device=device).expand(reps * batch, width)
                mb = _masked_batch(
                    enc,
                    dec_in.repeat(reps, 1),
                    torch.full_like(pos, mod_index),
                    pos,
                    torch.zeros_like(pos, dtype=torch.bool),
                )
                last = model.decode(mb, encoded)[:, -1]
            logits = _usable(_guided(model.heads[target](last).float(), batch, step.guidance), step)
            produced = t - k + 1  # tokens generated once this one is
            if t == n - 2 or (step.max_new_tokens is not None and produced >= step.max_new_tokens):
                keep = torch.full_like(logits, float("-inf"))  # the row is full: only [EOS] fits
                keep[:, EOS_ID] = 0.0
                logits = logits + keep
            elif produced < step.min_new_tokens:
                logits[:, EOS_ID] = float("-inf")
            ids, p = sample(logits, step.temperature, step.top_k, step.top_p, generator)
            ids = torch.where(finished, PAD_ID, ids)
            rows[:, t + 1] = ids
            scores[:, t + 1] = torch.where(finished, 0.0, p)
            finished |= ids == EOS_ID
            if bool(finished.all()):
                break
            dec_in = torch.cat([dec_in, ids[:, None]], 1)
    return rows, scores


# -- one step, and chains ----------------------------------------------------------------


def generate(
    model: FourM,
    states: Mapping[str, Given],
    step: GenerationStep,
    generator: torch.Generator | None = None,
    bf16: bool = False,
) -> Given:
    """Generate ``step.target`` conditioned on ``states`` (given tokens of the target stay)."""
    with torch.inference_mode():
        if step.resolved_method == "autoregressive":
            out, scores = autoregressive(model, states, step, generator, bf16)
            return Given(out.tokens, out.known, scores)
        return parallel_decode(model, states, step, generator, bf16)


def draws(
    model: FourM,
    states: Mapping[str, Given],
    step: GenerationStep,
    generators: Sequence[torch.Generator | None],
    bf16: bool = False,
) -> list[Given]:
    """One draw of ``step.target`` per generator, each what ``generate`` gives with it; a
    one-step MaskGIT decode runs its forward pass once for all of them."""
    with torch.inference_mode():
        if _one_pass(step):
            return _one_pass_draws(model, states, step, generators, bf16)
    return [generate(model, states, step, g, bf16) for g in generators]


def parse_plan(text: str) -> list[str]:
    """``"caption -> semseg -> depth"`` (or commas) -> modality names, each checked."""
    names = [p.strip() for p in text.replace("->", ",").split(",") if p.strip()]
    if not names:
        raise GenerationError(f"empty plan {text!r}; expected e.g. 'caption -> semseg -> rgb'")
    for name in names:
        try:
            get_modality(name)
        except KeyError as err:
            raise GenerationError(str(err)) from None
    return names


def chain(
    model: FourM,
    states: Mapping[str, Given],
    plan: Sequence[GenerationStep],
    generator: torch.Generator | None = None,
    bf16: bool = False,
    on_step: Callable[[StepRecord], None] | None = None,
) -> ChainResult:
    """Generate each step's target in turn, each output added to the conditioning of the next."""
    result = ChainResult(dict(states))
    for step in plan:
        conditioning = dict(result.states)
        output = generate(model, conditioning, step, generator, bf16)
        record = StepRecord(step, conditioning, output)
        result.states[step.target] = output
        result.records.append(record)
        if on_step is not None:
            on_step(record)
    return result
