"""The text tokenizer: one WordPiece vocabulary shared by captions and boxes.

Vocabulary layout (ids are fixed by ``params`` and ``class_names``, so every
trained text tokenizer with the same settings agrees on them)::

    0 [PAD]   1 [UNK]   2 [SOS]   3 [EOS]
    4 ..      [S_0] .. [S_{num_sentinels-1}]           T5 sentinels (span masking)
    ..        [LOC_0] .. [LOC_{coord_bins-1}]           quantised box coordinates
    ..        [CLS_<name>] for every class name          box classes (incl. floor)
    ..        the alphabet (printable ASCII and "▁"), then the learned wordpieces

Captions. Exact round trip (case, punctuation, spacing) comes from a reversible
pipeline: no normaliser; a Metaspace pre-tokenizer turns every space into "▁"
glued to the front of the following word ("floor: a" -> "floor", ":", "▁a"),
then punctuation is isolated into single-character words; WordPiece runs with an
*empty* continuation prefix (the "▁" already marks word starts), so decoding is
plain concatenation followed by "▁" -> " ". Every printable ASCII character is in
the vocabulary, so any printable-ASCII text round-trips exactly, seen in training
or not. A word holding a character outside the vocabulary (e.g. "é" when no
training caption had it, a tab, a literal "▁") or longer than 100 characters
becomes a single ``[UNK]``, which decodes as the text "[UNK]" and swallows the
space in front of that word. Special-token names inside caption text are not
special: "[EOS]" in a caption is spelled out with ordinary pieces.

The empty continuation prefix also makes training deterministic: with the usual
"##" prefix the trainer numbers continuation characters in hash-map order and
breaks ties between equally frequent merges differently in every process.

Boxes, pix2seq-style: ``[SOS] (xmin ymin xmax ymax class)* [EOS] [PAD]..`` with
four ``[LOC_i]`` tokens and one ``[CLS_name]`` token per object, objects in
canonical order (by quantised ymin, xmin, ymax, xmax, then class index).
Coordinates are pixel edges in ``[0, resolution]``; ``bin = round(v * (coord_bins
- 1) / resolution)`` and ``v = bin * resolution / (coord_bins - 1)``. Decoded
coordinates are ints when ``coord_bins - 1`` divides ``resolution`` (with
``coord_bins == resolution + 1`` every pixel edge has its own bin and integer
boxes round-trip exactly), otherwise floats rounded to 3 decimals.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from fourm.data.scene import CLASSES
from fourm.io import atomic_write_bytes, atomic_write_json
from fourm.params import TextParams
from fourm.tokenizers.base import CONFIG_FILE, TokenizerError

KIND = "text"
FORMAT_VERSION = 1
HF_FILE = "wordpiece.json"
MODALITIES = ("caption", "boxes")
SPACE_MARK = "▁"  # U+2581, what Metaspace writes for a space
PAD, UNK, SOS, EOS = "[PAD]", "[UNK]", "[SOS]", "[EOS]"
# Always in the vocabulary, so printable ASCII never maps to [UNK].
ALPHABET: tuple[str, ...] = tuple(chr(c) for c in range(0x21, 0x7F)) + (SPACE_MARK,)
MAX_CHARS_PER_WORD = 100
OBJECT_TOKENS = 5  # xmin ymin xmax ymax class


# params.yaml ``tokenizers.text``; one definition, in fourm/params/.
TextTokenizerParams = TextParams


def special_tokens(params: TextTokenizerParams, class_names: Sequence[str]) -> list[str]:
    """The reserved tokens in id order: [PAD] [UNK] [SOS] [EOS], sentinels, [LOC_i], [CLS_name]."""
    return (
        [PAD, UNK, SOS, EOS]
        + [f"[S_{i}]" for i in range(params.num_sentinels)]
        + [f"[LOC_{i}]" for i in range(params.coord_bins)]
        + [f"[CLS_{name}]" for name in class_names]
    )


def _pipeline(vocab: Mapping[str, int] | None) -> HFTokenizer:
    """An HF tokenizer with fourm's reversible caption pipeline around a WordPiece model."""
    model = models.WordPiece(
        vocab=dict(vocab) if vocab is not None else None,
        unk_token=UNK,
        max_input_chars_per_word=MAX_CHARS_PER_WORD,
        continuing_subword_prefix="",
    )
    hf = HFTokenizer(model)
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=SPACE_MARK, prepend_scheme="never", split=True),
            pre_tokenizers.Punctuation("isolated"),
        ]
    )
    hf.decoder = decoders.Metaspace(replacement=SPACE_MARK, prepend_scheme="never", split=True)
    return hf


def as_text_params(params: TextTokenizerParams | BaseModel | Mapping[str, Any] | None) -> TextTokenizerParams:
    """``params`` as TextTokenizerParams: accepts another pydantic model or a mapping with the same fields."""
    if params is None:
        return TextTokenizerParams()
    if isinstance(params, TextTokenizerParams):
        return params
    data = params.model_dump() if isinstance(params, BaseModel) else dict(params)
    try:
        return TextTokenizerParams.model_validate(data)
    except ValidationError as exc:
        raise TokenizerError(f"text tokenizer params: {exc}") from None


def _check_class_names(class_names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(class_names)
    if not names:
        raise TokenizerError("class_names must not be empty")
    for name in names:
        if not isinstance(name, str) or not name or any(c.isspace() or c in "[]" for c in name):
            raise TokenizerError(f"class name {name!r} must be a non-empty string without spaces or brackets")
    if len(set(names)) != len(names):
        raise TokenizerError(f"class names must be unique, got {list(names)}")
    return names


def _check_max_length(max_length: int) -> int:
    if not isinstance(max_length, int | np.integer) or max_length < 2:
        raise TokenizerError(
            f"max_length must be an integer >= 2 (room for [SOS] and [EOS]), got {max_length!r}"
        )
    return int(max_length)


class TextTokenizer:
    """A trained WordPiece vocabulary with caption and pix2seq box codecs (see the module docstring)."""

    pad_id = 0
    unk_id = 1
    start_id = 2
    end_id = 3

    def __init__(
        self,
        hf: HFTokenizer,
        params: TextTokenizerParams | BaseModel | Mapping[str, Any],
        class_names: Sequence[str],
        resolution: int,
    ) -> None:
        """Wrap a trained HF tokenizer; its vocabulary must follow the reserved-token layout."""
        self.params = params = as_text_params(params)
        self.class_names = _check_class_names(class_names)
        if not isinstance(resolution, int) or resolution < 1:
            raise TokenizerError(f"resolution must be a positive integer, got {resolution!r}")
        self.resolution = resolution
        self._hf = hf
        vocab = hf.get_vocab(with_added_tokens=True)
        self.vocab_size = len(vocab)
        if sorted(vocab.values()) != list(range(self.vocab_size)):
            raise TokenizerError("token ids are not contiguous from 0")
        if self.vocab_size > params.vocab_size:
            raise TokenizerError(
                f"vocabulary has {self.vocab_size} tokens, more than params.vocab_size={params.vocab_size}"
            )
        reserved = special_tokens(params, self.class_names)
        for expected_id, token in enumerate(reserved):
            if vocab.get(token) != expected_id:
                raise TokenizerError(
                    f"reserved token {token} has id {vocab.get(token)}, expected {expected_id}"
                )
        n_s, n_loc = params.num_sentinels, params.coord_bins
        self.sentinel_ids: tuple[int, ...] = tuple(range(4, 4 + n_s))
        self.loc_offset = 4 + n_s
        self.class_offset = self.loc_offset + n_loc
        self.num_reserved = len(reserved)
        id_to_token = [""] * self.vocab_size
        for token, i in vocab.items():
            id_to_token[i] = token
        # What each id spells in decoded text: reserved tokens spell their name.
        self._surface = np.array(
            [t if i < self.num_reserved else t.replace(SPACE_MARK, " ") for i, t in enumerate(id_to_token)],
            dtype=object,
        )
        ids = np.arange(self.vocab_size)
        self._loc_of = np.where(
            (ids >= self.loc_offset) & (ids < self.class_offset), ids - self.loc_offset, -1
        )
        self._cls_of = np.where(
            (ids >= self.class_offset) & (ids < self.num_reserved), ids - self.class_offset, -1
        )
        self._class_index = {name: k for k, name in enumerate(self.class_names)}

    # ------------------------------------------------------------------ training and files

    @classmethod
    def train(
        cls,
        captions: Iterable[str],
        params: TextTokenizerParams | BaseModel | Mapping[str, Any] | None = None,
        class_names: Sequence[str] = CLASSES,
        resolution: int = 64,
    ) -> TextTokenizer:
        """Learn the WordPiece vocabulary from ``captions``; same inputs give the same vocabulary.

        ``params`` may also be any pydantic model or mapping with TextTokenizerParams' fields.
        """
        params = as_text_params(params)
        names = _check_class_names(class_names)
        reserved = special_tokens(params, names)
        if params.vocab_size < len(reserved) + len(ALPHABET):
            raise TokenizerError(
                f"params.vocab_size={params.vocab_size} leaves no room: {len(reserved)} reserved tokens "
                f"and a {len(ALPHABET)}-character alphabet come first"
            )
        trainer = trainers.WordPieceTrainer(
            vocab_size=params.vocab_size,
            min_frequency=params.min_frequency,
            special_tokens=reserved,
            initial_alphabet=list(ALPHABET),
            continuing_subword_prefix="",
            show_progress=False,
        )
        scratch = _pipeline(None)
        scratch.train_from_iterator(captions, trainer)
        # Rebuild from the vocabulary alone: the trainer also registers the reserved tokens as
        # "added tokens", which would make "[EOS]" inside a caption's text an end token.
        hf = _pipeline(scratch.get_vocab(with_added_tokens=False))
        return cls(hf, params, names, resolution)

    def config(self) -> dict[str, Any]:
        """fourm's ``tokenizer.json`` for this tokenizer."""
        return {
            "kind": KIND,
            "modalities": list(MODALITIES),
            "vocab_size": self.vocab_size,
            "params": self.params.model_dump(mode="json"),
            "class_names": list(self.class_names),
            "resolution": self.resolution,
            "format_version": FORMAT_VERSION,
        }

    def save(self, directory: Path | str) -> None:
        """Write ``tokenizer.json`` and ``wordpiece.json``; the bytes depend only on the vocabulary."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(root / HF_FILE, (self._hf.to_str(pretty=True) + "\n").encode())
        atomic_write_json(root / CONFIG_FILE, self.config())

    @classmethod
    def load(cls, directory: Path | str) -> TextTokenizer:
        """Read a saved text tokenizer; anything missing, corrupt or foreign raises TokenizerError."""
        root = Path(directory)
        config_path, hf_path = root / CONFIG_FILE, root / HF_FILE
        config = _read_json(config_path)
        if not isinstance(config, dict):
            raise TokenizerError(f"{config_path}: expected a JSON object")
        if config.get("kind") != KIND:
            raise TokenizerError(f"{config_path}: kind is {config.get('kind')!r}, expected {KIND!r}")
        if config.get("format_version") != FORMAT_VERSION:
            raise TokenizerError(
                f"{config_path}: format_version {config.get('format_version')!r}, expected {FORMAT_VERSION}"
            )
        missing = [
            k for k in ("modalities", "vocab_size", "params", "class_names", "resolution") if k not in config
        ]
        if missing:
            raise TokenizerError(f"{config_path}: missing keys {missing}")
        if config["modalities"] != list(MODALITIES):
            raise TokenizerError(
                f"{config_path}: modalities {config['modalities']!r}, expected {list(MODALITIES)}"
            )
        try:
            params = TextTokenizerParams.model_validate(config["params"])
        except ValidationError as exc:
            raise TokenizerError(f"{config_path}: params: {exc}") from None
        if not isinstance(config["class_names"], list):
            raise TokenizerError(f"{config_path}: class_names must be a list")
        if not hf_path.is_file():
            raise TokenizerError(f"{hf_path}: missing")
        try:
            hf = HFTokenizer.from_file(str(hf_path))
        except Exception as exc:  # the Rust side raises plain Exception on any parse error
            raise TokenizerError(f"{hf_path}: not a readable tokenizers file: {exc}") from None
        vocab = hf.get_vocab(with_added_tokens=True)
        expected = json.loads(_pipeline(vocab).to_str())
        if json.loads(hf.to_str()) != expected:
            raise TokenizerError(
                f"{hf_path}: pipeline is not fourm's caption pipeline (edited or foreign file)"
            )
        try:
            tokenizer = cls(hf, params, config["class_names"], config["resolution"])
        except TokenizerError as exc:
            raise TokenizerError(f"{hf_path}: {exc} (config {config_path})") from None
        if tokenizer.vocab_size != config["vocab_size"]:
            raise TokenizerError(
                f"{config_path}: vocab_size {config['vocab_size']!r}, "
                f"but {HF_FILE} holds {tokenizer.vocab_size} tokens"
            )
        return tokenizer

    # ------------------------------------------------------------------ captions

    def encode_captions(self, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """``[SOS] pieces [EOS] [PAD]..`` per text as int32 ``(B, max_length)``, plus truncation flags.

        A text that does not fit keeps ``[SOS]`` and its first ``max_length - 1`` pieces (no
        ``[EOS]``) and is flagged in the boolean ``(B,)`` array.
        """
        max_length = _check_max_length(max_length)
        texts = list(texts)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TokenizerError(f"caption {row}: expected str, got {type(text).__name__}")
        tokens = np.full((len(texts), max_length), self.pad_id, dtype=np.int32)
        truncated = np.zeros(len(texts), dtype=bool)
        tokens[:, 0] = self.start_id
        for row, encoding in enumerate(self._hf.encode_batch(texts, add_special_tokens=False)):
            ids = encoding.ids
            if len(ids) + 2 > max_length:
                truncated[row] = True
                tokens[row, 1:] = ids[: max_length - 1]
            else:
                tokens[row, 1 : 1 + len(ids)] = ids
                tokens[row, 1 + len(ids)] = self.end_id
        return tokens, truncated

    def decode_captions(self, tokens: np.ndarray) -> list[str]:
        """Text of each row: up to the first ``[EOS]``/``[PAD]``, ``[SOS]`` skipped; 1-D means one row."""
        rows = self._rows(tokens)
        stops = self._stops(rows)
        return [
            "".join(self._surface[row[:stop][row[:stop] != self.start_id]])
            for row, stop in zip(rows, stops, strict=True)
        ]

    # ------------------------------------------------------------------ boxes

    @property
    def coords_exact(self) -> bool:
        """Whether every integer pixel edge in ``[0, resolution]`` has its own bin."""
        return (self.params.coord_bins - 1) % self.resolution == 0

    def max_objects(self, max_length: int) -> int:
        """How many objects fit in a box sequence of ``max_length`` tokens."""
        return (_check_max_length(max_length) - 2) // OBJECT_TOKENS

    def quantize(self, values: np.ndarray | Sequence[float]) -> np.ndarray:
        """Coordinate bins (int64) of pixel-edge values in ``[0, resolution]``."""
        v = np.asarray(values, dtype=np.float64)
        if not np.isfinite(v).all() or (v < 0).any() or (v > self.resolution).any():
            raise TokenizerError(f"box coordinates must lie in [0, {self.resolution}], got {v.tolist()}")
        return np.rint(v * (self.params.coord_bins - 1) / self.resolution).astype(np.int64)

    def dequantize(self, bins: np.ndarray | Sequence[int]) -> list:
        """Pixel-edge values of bins: ints when bins-1 divides the resolution, else floats (3 decimals)."""
        b = np.asarray(bins, dtype=np.int64)
        steps = self.params.coord_bins - 1
        if self.resolution % steps == 0:
            return (b * (self.resolution // steps)).tolist()
        return np.round(b * self.resolution / steps, 3).tolist()

    def _objects(self, boxes: Sequence[Mapping[str, Any]], row: int) -> np.ndarray:
        """``(n, 5)`` int64 rows ``x0 y0 x1 y1 class`` (bins, class index) in canonical order."""
        if isinstance(boxes, str | bytes | Mapping):
            raise TokenizerError(f"boxes row {row}: expected a list of box dicts, got {type(boxes).__name__}")
        out = np.zeros((len(boxes), OBJECT_TOKENS), dtype=np.int64)
        for j, box in enumerate(boxes):
            where = f"boxes row {row}, object {j}"
            if not isinstance(box, Mapping) or "class" not in box or "bbox" not in box:
                raise TokenizerError(f"{where}: expected a dict with 'class' and 'bbox', got {box!r}")
            name = box["class"]
            if name not in self._class_index:
                raise TokenizerError(f"{where}: unknown class {name!r}; known: {', '.join(self.class_names)}")
            bbox = box["bbox"]
            if isinstance(bbox, str | bytes) or len(bbox) != 4:
                raise TokenizerError(f"{where}: bbox must be [x0, y0, x1, y1], got {bbox!r}")
            try:
                out[j, :4] = self.quantize(bbox)
            except (TokenizerError, TypeError, ValueError) as exc:
                raise TokenizerError(f"{where}: {exc}") from None
            if out[j, 0] > out[j, 2] or out[j, 1] > out[j, 3]:
                raise TokenizerError(f"{where}: bbox must have x0 <= x1 and y0 <= y1, got {bbox!r}")
            out[j, 4] = self._class_index[name]
        return _canonical(out)

    def canonical_boxes(self, boxes: Sequence[Mapping[str, Any]]) -> list[dict]:
        """What ``decode_boxes(encode_boxes(...))`` gives back: quantised boxes in canonical order."""
        return self._as_dicts(self._objects(boxes, 0))

    def encode_boxes(
        self, box_lists: Sequence[Sequence[Mapping[str, Any]]], max_length: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``[SOS] (xmin ymin xmax ymax class)* [EOS] [PAD]..`` per box list, plus truncation flags.

        Boxes are dicts with ``class`` (a known class name) and ``bbox`` ``[x0, y0, x1, y1]``
        (other keys are ignored). Objects beyond ``max_objects(max_length)`` in canonical order
        are dropped whole and the row is flagged; ``[EOS]`` is kept, so the row stays well formed.
        """
        limit = self.max_objects(max_length)
        box_lists = list(box_lists)
        tokens = np.full((len(box_lists), max_length), self.pad_id, dtype=np.int32)
        truncated = np.zeros(len(box_lists), dtype=bool)
        tokens[:, 0] = self.start_id
        for row, boxes in enumerate(box_lists):
            objects = self._objects(boxes, row)
            if len(objects) > limit:
                truncated[row] = True
                objects = objects[:limit]
            ids = objects + np.array([self.loc_offset] * 4 + [self.class_offset])
            n = ids.size
            tokens[row, 1 : 1 + n] = ids.ravel()
            tokens[row, 1 + n] = self.end_id
        return tokens, truncated

    def decode_boxes(self, tokens: np.ndarray) -> list[list[dict]]:
        """Box lists ``[{"class", "bbox"}]`` in canonical order; malformed rows raise TokenizerError.

        A leading ``[SOS]`` is skipped and a row ends at its first ``[EOS]``/``[PAD]`` (or its
        end). Between them every object must be four ``[LOC_i]`` (xmin <= xmax, ymin <= ymax)
        then one ``[CLS_name]``.
        """
        rows = self._rows(tokens)
        out = []
        for r, row in enumerate(rows):
            start = 1 if row.size and row[0] == self.start_id else 0
            stop = int(self._stops(row[None, start:])[0]) + start
            body = row[start:stop]
            slot = np.arange(body.size) % OBJECT_TOKENS
            is_loc, is_cls = self._loc_of[body] >= 0, self._cls_of[body] >= 0
            bad = np.flatnonzero(np.where(slot < 4, ~is_loc, ~is_cls))
            if bad.size:
                k = int(bad[0])
                want = "a coordinate token [LOC_i]" if slot[k] < 4 else "a class token [CLS_name]"
                raise TokenizerError(
                    f"boxes row {r}, position {start + k}: expected {want}, got {self._name(int(body[k]))}"
                )
            if body.size % OBJECT_TOKENS:
                first = start + body.size - body.size % OBJECT_TOKENS
                raise TokenizerError(
                    f"boxes row {r}, positions {first}..{stop - 1}: trailing partial object "
                    f"({body.size % OBJECT_TOKENS} of {OBJECT_TOKENS} tokens)"
                )
            grid = body.reshape(-1, OBJECT_TOKENS)
            objects = np.concatenate([self._loc_of[grid[:, :4]], self._cls_of[grid[:, 4:]]], axis=1)
            inverted = np.flatnonzero((objects[:, 0] > objects[:, 2]) | (objects[:, 1] > objects[:, 3]))
            if inverted.size:
                k = int(inverted[0])
                first = start + k * OBJECT_TOKENS
                raise TokenizerError(
                    f"boxes row {r}, positions {first}..{first + 3}: inverted box, coordinates "
                    f"{self.dequantize(objects[k, :4])} (xmin > xmax or ymin > ymax)"
                )
            out.append(self._as_dicts(_canonical(objects)))
        return out

    # ------------------------------------------------------------------ helpers

    def _as_dicts(self, objects: np.ndarray) -> list[dict]:
        coords = self.dequantize(objects[:, :4])
        return [
            {"class": self.class_names[int(k)], "bbox": bbox}
            for k, bbox in zip(objects[:, 4], coords, strict=True)
        ]

    def _name(self, token_id: int) -> str:
        return f"{self._hf.id_to_token(token_id)!r} (id {token_id})"

    def _rows(self, tokens: np.ndarray) -> np.ndarray:
        rows = np.asarray(tokens)
        if rows.ndim == 1:
            rows = rows[None, :]
        if rows.ndim != 2 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
            raise TokenizerError(f"expected integer tokens of shape (B, L), got {rows.dtype} {rows.shape}")
        rows = rows.astype(np.int64, copy=False)
        bad = np.argwhere((rows < 0) | (rows >= self.vocab_size))
        if bad.size:
            r, p = (int(x) for x in bad[0])
            raise TokenizerError(
                f"row {r}, position {p}: token id {rows[r, p]} outside [0, {self.vocab_size})"
            )
        return rows

    def _stops(self, rows: np.ndarray) -> np.ndarray:
        """Index of the first [EOS]/[PAD] in each row, or the row length."""
        ends = (rows == self.end_id) | (rows == self.pad_id)
        return np.where(ends.any(axis=1), ends.argmax(axis=1), rows.shape[1])


def _canonical(objects: np.ndarray) -> np.ndarray:
    """Rows ``x0 y0 x1 y1 class`` sorted by (y0, x0, y1, x1, class)."""
    order = np.lexsort((objects[:, 4], objects[:, 2], objects[:, 3], objects[:, 0], objects[:, 1]))
    return objects[order]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise TokenizerError(f"{path}: missing") from None
    except OSError as exc:
        raise TokenizerError(f"{path}: unreadable: {exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"{path}: not valid JSON: {exc}") from None
