"""Text tokenizer: exact caption and box round trips, truncation, deterministic files, clear errors."""

from __future__ import annotations

import json
import re
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from tokenizers import Tokenizer as HFTokenizer

from fourm.data.scene import CLASSES
from fourm.data.synthetic import make_sample
from fourm.modalities import TEXT_VOCAB, get_modality
from fourm.tokenizers.base import CONFIG_FILE, Tokenizer, TokenizerError, directory_fingerprint
from fourm.tokenizers.text import HF_FILE, TextTokenizer, TextTokenizerParams, as_text_params
from fourm.tokenizers.text_views import BoxTokenizer, CaptionTokenizer
from tests.conftest import REPO

pytestmark = pytest.mark.unit

TRAIN_INDICES = range(200)
HELD_OUT_INDICES = range(5000, 5200)
PROPERTY = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def train_captions() -> list[str]:
    return [make_sample(0, i).caption for i in TRAIN_INDICES]


@pytest.fixture(scope="module")
def held_out() -> list:
    return [make_sample(0, i) for i in HELD_OUT_INDICES]


@pytest.fixture(scope="module")
def tok(train_captions: list[str]) -> TextTokenizer:
    return TextTokenizer.train(train_captions)


@pytest.fixture(scope="module")
def vocabulary_words(train_captions: list[str]) -> list[str]:
    return sorted(set(re.findall(r"[A-Za-z]+", " ".join(train_captions))))


def canonical(boxes: list[dict]) -> list[tuple[str, list[int]]]:
    """(class, bbox) sorted by (y0, x0, y1, x1, class index): the order decode_boxes promises."""
    key = lambda b: (b["bbox"][1], b["bbox"][0], b["bbox"][3], b["bbox"][2], CLASSES.index(b["class"]))  # noqa: E731
    return [(b["class"], list(b["bbox"])) for b in sorted(boxes, key=key)]


def test_reserved_token_layout(tok: TextTokenizer) -> None:
    hf = tok._hf
    assert (tok.pad_id, tok.unk_id, tok.start_id, tok.end_id) == (0, 1, 2, 3)
    assert [hf.id_to_token(i) for i in range(4)] == ["[PAD]", "[UNK]", "[SOS]", "[EOS]"]
    assert tok.sentinel_ids == tuple(range(4, 36))
    assert hf.token_to_id("[S_31]") == 35 and hf.token_to_id("[LOC_0]") == 36
    assert hf.token_to_id("[LOC_64]") == 100 and hf.token_to_id("[CLS_floor]") == 101
    assert hf.token_to_id("[CLS_cylinder]") == 104
    assert tok.num_reserved < tok.vocab_size == hf.get_vocab_size() <= TEXT_VOCAB


def test_every_synthetic_caption_round_trips_exactly(tok, train_captions, held_out) -> None:
    captions = train_captions + [s.caption for s in held_out]
    adapter = CaptionTokenizer(tok)
    assert isinstance(adapter, Tokenizer) and adapter.modality == "caption"
    assert adapter.vocab_size == tok.vocab_size
    tokens = adapter.encode(captions)
    assert tokens.shape == (len(captions), get_modality("caption").max_length) and tokens.dtype == np.int32
    assert not adapter.last_truncated.any()
    assert (tokens[:, 0] == tok.start_id).all() and ((tokens == tok.end_id).sum(axis=1) == 1).all()
    assert adapter.decode(tokens) == captions
    assert tok.decode_captions(tokens[0]) == [captions[0]]  # a 1-D row is one caption
    assert any("floor: a" in c for c in captions)  # punctuation keeps its spacing


def test_every_synthetic_box_list_round_trips_exactly(tok, held_out) -> None:
    box_lists = [s.boxes for s in held_out]
    adapter = BoxTokenizer(tok)
    assert isinstance(adapter, Tokenizer) and adapter.vocab_size == tok.vocab_size
    tokens, truncated = adapter.encode_with_flags(box_lists)
    assert tokens.shape == (len(box_lists), get_modality("boxes").max_length) and not truncated.any()
    decoded = adapter.decode(tokens)
    assert [canonical(d) for d in decoded] == [canonical(b) for b in box_lists]
    assert decoded == [[{"class": c, "bbox": b} for c, b in canonical(bl)] for bl in box_lists]
    assert all(isinstance(v, int) for d in decoded for box in d for v in box["bbox"])


boxes_strategy = st.lists(
    st.builds(
        lambda cls, xs, ys: {"class": cls, "bbox": [xs[0], ys[0], xs[1], ys[1]]},
        st.sampled_from(CLASSES[1:]),
        st.lists(st.integers(0, 64), min_size=2, max_size=2, unique=True).map(sorted),
        st.lists(st.integers(0, 64), min_size=2, max_size=2, unique=True).map(sorted),
    ),
    max_size=12,
)


@PROPERTY
@given(box_lists=st.lists(boxes_strategy, min_size=1, max_size=3))
def test_random_box_lists_round_trip(tok: TextTokenizer, box_lists: list[list[dict]]) -> None:
    tokens, truncated = tok.encode_boxes(box_lists, 64)
    assert not truncated.any()  # 12 objects * 5 + [SOS] + [EOS] = 62 <= 64
    decoded = tok.decode_boxes(tokens)
    assert [canonical(d) for d in decoded] == [canonical(b) for b in box_lists]
    assert decoded == [tok.canonical_boxes(b) for b in box_lists]


@PROPERTY
@given(data=st.data())
def test_random_vocabulary_captions_round_trip(tok, vocabulary_words, data) -> None:
    words = data.draw(st.lists(st.sampled_from(vocabulary_words), min_size=1, max_size=40))
    marks = data.draw(
        st.lists(st.sampled_from(["", "", "", ",", ".", ":"]), min_size=len(words), max_size=len(words))
    )
    text = " ".join(w + m for w, m in zip(words, marks, strict=True))
    tokens, truncated = tok.encode_captions([text], 128)
    assert not truncated[0]
    assert tok.decode_captions(tokens) == [text]


@PROPERTY
@given(text=st.text(alphabet=string.printable[:-5], max_size=80))  # printable ASCII incl. space
def test_any_printable_ascii_round_trips(tok: TextTokenizer, text: str) -> None:
    tokens, truncated = tok.encode_captions([text], 256)
    assert not truncated[0]
    assert tok.decode_captions(tokens) == [text]


def test_special_names_in_text_are_not_special_and_unseen_characters_are_unk(tok) -> None:
    texts = ["A [EOS] and a [PAD] and [S_0].", "  two  spaces , ( odd ) ", "", "a caf\u00e9 here"]
    tokens, _ = tok.encode_captions(texts, 64)
    assert ((tokens == tok.end_id).sum(axis=1) == 1).all()
    assert tok.decode_captions(tokens)[:3] == texts[:3]
    assert tokens[2, :3].tolist() == [tok.start_id, tok.end_id, tok.pad_id]
    assert tok.unk_id in tokens[3] and "[UNK]" in tok.decode_captions(tokens)[3]


def test_caption_truncation_keeps_sos_drops_eos_and_flags(tok, train_captions) -> None:
    text = max(train_captions, key=len)
    n = len(tok._hf.encode(text, add_special_tokens=False).ids)
    fits, _ = tok.encode_captions([text, text], n + 2)
    assert fits[0, -1] == tok.end_id and tok.decode_captions(fits) == [text, text]
    # every piece fits but [EOS] does not: still flagged, the row has no end token
    no_end, truncated = tok.encode_captions([text], n + 1)
    assert truncated.tolist() == [True] and tok.end_id not in no_end[0]
    assert tok.decode_captions(no_end) == [text]
    tokens, truncated = tok.encode_captions([text], n)
    assert truncated.tolist() == [True] and tokens[0, 0] == tok.start_id and tok.end_id not in tokens[0]
    prefix = tok.decode_captions(tokens)[0]
    assert text.startswith(prefix) and len(prefix) < len(text)
    adapter = CaptionTokenizer(tok)
    adapter.encode([text, "x" * 400 + " y" * 200])
    assert adapter.last_truncated.tolist() == [False, True]


def test_box_truncation_drops_whole_objects_and_flags(tok) -> None:
    boxes = [{"class": "cube", "bbox": [i, i, i + 2, i + 3]} for i in range(13)]
    tokens, truncated = tok.encode_boxes([boxes, boxes[:12]], 64)
    assert truncated.tolist() == [True, False]
    assert tokens[0, 61] == tok.end_id and tokens[0, 62] == tok.pad_id  # [SOS] + 12 * 5 + [EOS]
    decoded = tok.decode_boxes(tokens)
    assert decoded[0] == decoded[1] == [{"class": "cube", "bbox": b["bbox"]} for b in boxes[:12]]
    assert tok.max_objects(64) == 12 and tok.encode_boxes([boxes], 6)[0][0].tolist() == [2, 3, 0, 0, 0, 0]


def test_unknown_class_and_bad_boxes_raise(tok) -> None:
    with pytest.raises(TokenizerError, match="unknown class 'torus'"):
        tok.encode_boxes(
            [[{"class": "cube", "bbox": [0, 0, 1, 1]}], [{"class": "torus", "bbox": [0, 0, 1, 1]}]], 64
        )
    with pytest.raises(TokenizerError, match=r"row 0, object 0: box coordinates must lie in \[0, 64\]"):
        tok.encode_boxes([[{"class": "cube", "bbox": [0, 0, 65, 1]}]], 64)
    with pytest.raises(TokenizerError, match="bbox must be"):
        tok.encode_boxes([[{"class": "cube", "bbox": [0, 0, 1]}]], 64)
    with pytest.raises(TokenizerError, match=r"row 0, object 0: bbox must have x0 <= x1 and y0 <= y1"):
        tok.encode_boxes([[{"class": "cube", "bbox": [5, 0, 1, 1]}]], 64)


def test_malformed_box_sequences_raise_naming_the_position(tok) -> None:
    good = tok.encode_boxes([[{"class": "sphere", "bbox": [1, 2, 3, 4]}]], 16)[0][0]
    cls_id, loc_id = int(good[5]), int(good[1])
    wrong_kind = good.copy()
    wrong_kind[3] = cls_id
    with pytest.raises(TokenizerError, match=r"position 3: expected a coordinate token .*CLS_sphere"):
        tok.decode_boxes(wrong_kind)
    no_class = good.copy()
    no_class[5] = loc_id
    with pytest.raises(TokenizerError, match=r"position 5: expected a class token"):
        tok.decode_boxes(no_class)
    partial = np.array([tok.start_id, *good[1:6], loc_id, loc_id, tok.end_id])
    with pytest.raises(TokenizerError, match=r"positions 6\.\.7: trailing partial object"):
        tok.decode_boxes(partial)
    swapped = [*good[3:5], *good[1:3], good[5]]  # the same box with its corners swapped, as a second object
    inverted = np.array([*good[:6], *swapped, tok.end_id])
    message = r"row 0, positions 6\.\.9: inverted box, coordinates \[3, 4, 1, 2\]"
    with pytest.raises(TokenizerError, match=message):
        tok.decode_boxes(inverted)
    with pytest.raises(TokenizerError, match="outside"):
        tok.decode_boxes(np.array([[2, tok.vocab_size]]))
    assert tok.decode_boxes(np.array([[2, 3, 0], [0, 0, 0]])) == [[], []]


def test_coarser_bins_quantise(train_captions) -> None:
    halves = TextTokenizer.train(train_captions[:20], TextTokenizerParams(coord_bins=33), resolution=64)
    box = [{"class": "cube", "bbox": [3, 4, 63, 64]}]
    assert halves.decode_boxes(halves.encode_boxes([box], 8)[0]) == [
        [{"class": "cube", "bbox": [4, 4, 64, 64]}]
    ]
    odd = TextTokenizer.train(train_captions[:20], TextTokenizerParams(coord_bins=50), resolution=64)
    (decoded,) = odd.decode_boxes(odd.encode_boxes([box], 8)[0])
    assert decoded[0]["bbox"] == [2.612, 3.918, 62.694, 64.0] and not odd.coords_exact


def test_params_are_strict_and_bounded(train_captions) -> None:
    with pytest.raises(ValidationError):
        TextTokenizerParams(vocab_size=TEXT_VOCAB + 1)
    with pytest.raises(ValidationError):
        TextTokenizerParams(vocab_sise=100)
    with pytest.raises(TokenizerError, match="leaves no room"):
        TextTokenizer.train(train_captions, TextTokenizerParams(vocab_size=150))
    assert as_text_params({"num_sentinels": 4}) == TextTokenizerParams(num_sentinels=4)
    with pytest.raises(TokenizerError, match="text tokenizer params"):
        as_text_params({"coord_bins": 1})
    small = TextTokenizer.train(train_captions, {"vocab_size": 220, "num_sentinels": 4})
    assert small.vocab_size == 220
    tokens, _ = small.encode_captions(train_captions, 200)
    assert small.decode_captions(tokens) == train_captions


_TRAIN_SCRIPT = """
import json, sys
from fourm.tokenizers.text import TextTokenizer
TextTokenizer.train(json.load(open(sys.argv[1]))).save(sys.argv[2])
"""


def test_save_load_round_trip_and_deterministic_bytes(tok, train_captions, held_out, tmp_path) -> None:
    tok.save(tmp_path / "a")
    TextTokenizer.train(train_captions).save(tmp_path / "b")
    # another process: the Rust side seeds its hash maps per process
    (tmp_path / "captions.json").write_text(json.dumps(train_captions))
    subprocess.run(
        [sys.executable, "-c", _TRAIN_SCRIPT, str(tmp_path / "captions.json"), str(tmp_path / "c")],
        check=True,
        cwd=REPO,
        timeout=120,
    )
    for name in (CONFIG_FILE, HF_FILE):
        data = (tmp_path / "a" / name).read_bytes()
        assert data == (tmp_path / "b" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()
    assert directory_fingerprint(tmp_path / "a") == directory_fingerprint(tmp_path / "c")
    config = json.loads((tmp_path / "a" / CONFIG_FILE).read_text())
    assert config["kind"] == "text" and config["modalities"] == ["caption", "boxes"]
    assert (
        config["vocab_size"] == tok.vocab_size
        and config["resolution"] == 64
        and config["format_version"] == 1
    )

    loaded = TextTokenizer.load(tmp_path / "c")
    captions = [s.caption for s in held_out]
    boxes = [s.boxes for s in held_out]
    for a, b in zip(tok.encode_captions(captions, 128), loaded.encode_captions(captions, 128), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(tok.encode_boxes(boxes, 64), loaded.encode_boxes(boxes, 64), strict=True):
        np.testing.assert_array_equal(a, b)
    # the HF file alone decodes captions too (its decoder is the same reversible scheme)
    hf = HFTokenizer.from_file(str(tmp_path / "c" / HF_FILE))
    tokens, _ = loaded.encode_captions(captions[:20], 128)
    assert [hf.decode(row[1 : list(row).index(loaded.end_id)].tolist()) for row in tokens] == captions[:20]


def _saved(tok: TextTokenizer, path: Path) -> Path:
    tok.save(path)
    return path


def test_load_rejects_foreign_missing_and_corrupt_files(tok, tmp_path) -> None:
    with pytest.raises(TokenizerError, match=re.escape(f"{tmp_path / 'none' / CONFIG_FILE}: missing")):
        TextTokenizer.load(tmp_path / "none")

    foreign = _saved(tok, tmp_path / "foreign")
    config = json.loads((foreign / CONFIG_FILE).read_text())
    (foreign / CONFIG_FILE).write_text(json.dumps({**config, "kind": "vqvae"}))
    with pytest.raises(TokenizerError, match=rf"{CONFIG_FILE}: kind is 'vqvae', expected 'text'"):
        TextTokenizer.load(foreign)

    corrupt_config = _saved(tok, tmp_path / "corrupt_config")
    (corrupt_config / CONFIG_FILE).write_bytes(b'{"kind": "text", ')
    with pytest.raises(TokenizerError, match=rf"{CONFIG_FILE}: not valid JSON"):
        TextTokenizer.load(corrupt_config)

    bad_params = _saved(tok, tmp_path / "bad_params")
    (bad_params / CONFIG_FILE).write_text(json.dumps({**config, "params": {"vocab_size": 10**6}}))
    with pytest.raises(TokenizerError, match=rf"{CONFIG_FILE}: params"):
        TextTokenizer.load(bad_params)

    wrong_size = _saved(tok, tmp_path / "wrong_size")
    (wrong_size / CONFIG_FILE).write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 1}))
    with pytest.raises(TokenizerError, match=rf"{CONFIG_FILE}: vocab_size"):
        TextTokenizer.load(wrong_size)

    corrupt_hf = _saved(tok, tmp_path / "corrupt_hf")
    (corrupt_hf / HF_FILE).write_bytes((corrupt_hf / HF_FILE).read_bytes()[:500])
    with pytest.raises(TokenizerError, match=rf"{HF_FILE}: not a readable tokenizers file"):
        TextTokenizer.load(corrupt_hf)

    missing_hf = _saved(tok, tmp_path / "missing_hf")
    (missing_hf / HF_FILE).unlink()
    with pytest.raises(TokenizerError, match=rf"{HF_FILE}: missing"):
        TextTokenizer.load(missing_hf)

    edited = _saved(tok, tmp_path / "edited")
    hf_json = json.loads((edited / HF_FILE).read_text())
    hf_json["normalizer"] = {"type": "Lowercase"}
    (edited / HF_FILE).write_text(json.dumps(hf_json))
    with pytest.raises(TokenizerError, match=rf"{HF_FILE}: pipeline is not fourm's"):
        TextTokenizer.load(edited)

    other_classes = _saved(tok, tmp_path / "other_classes")
    (other_classes / CONFIG_FILE).write_text(json.dumps({**config, "class_names": ["floor", "torus"]}))
    with pytest.raises(TokenizerError, match=rf"{HF_FILE}: reserved token"):
        TextTokenizer.load(other_classes)


def test_generated_boxes_keep_the_objects_before_an_inverted_one(tok) -> None:
    """A barely trained model can write a box with xmin > xmax. Decoding its output keeps the whole
    boxes before that one: the box metric refuses inverted boxes, so letting one through failed
    the evaluate stage of a two-run pipeline test (2026-12-04)."""
    from fourm.inference import AnyToAny
    from fourm.model.config import model_config
    from fourm.model.model import FourM

    good = tok.encode_boxes([[{"class": "sphere", "bbox": [1, 2, 3, 4]}]], 16)[0][0]
    swapped = [*good[3:5], *good[1:3], good[5]]
    row = np.array([*good[:6], *swapped, *good[1:6], tok.end_id])
    scores = np.full(row.shape, 0.5)
    engine = AnyToAny(
        FourM(model_config("debug", inputs=("rgb",), targets=("boxes",))),
        {"boxes": BoxTokenizer(tok)},
        Path("unused.pt"),
    )
    (boxes,) = engine.decode_boxes(row[None], scores[None])
    assert boxes == [{"class": "sphere", "bbox": [1, 2, 3, 4], "score": 0.5}]
