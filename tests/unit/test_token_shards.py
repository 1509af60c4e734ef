"""Token set format: round trip, verified reads, vocab checks, unfinished sets refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fourm.data.token_set import TokenSet, validate_token_set
from fourm.data.token_shards import TOKENS_CARD, ModalitySpec, TokenSetError, TokenSetWriter, shard_file
from fourm.io import sha256_file

pytestmark = pytest.mark.unit

SPECS = {
    "rgb": ModalitySpec(1024, 64, "a" * 64),
    "depth": ModalitySpec(1024, 64, "b" * 64),
    "caption": ModalitySpec(300, 16, "c" * 64),
}
SIZES = [7, 7, 7, 7, 3]


def make_arrays(n: int, seed: int, specs: dict[str, ModalitySpec] = SPECS) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {m: rng.integers(0, s.vocab_size, (n, s.length)) for m, s in specs.items()}


def write_set(root: Path, sizes: list[int] = SIZES, finish: bool = True) -> dict:
    """5 shards (7,7,7,7,3): the first four 'train', the last 'val'; ids s000..."""
    w = TokenSetWriter(root, SPECS)
    k = 0
    for i, n in enumerate(sizes):
        ids = [f"s{k + j:03d}" for j in range(n)]
        k += n
        split = "val" if i == len(sizes) - 1 else "train"
        w.add_shard(f"{split}-{i:06d}", split, ids, make_arrays(n, i), {"source_shard": i})
    return w.finish({"tokenizers": "test"}) if finish else {}


def test_round_trip(tmp_path: Path) -> None:
    card = write_set(tmp_path / "t")
    assert card["splits"] == {"train": 28, "val": 3}
    assert card["num_samples"] == 31
    assert card["tokenizers"] == "test"
    assert card["modalities"]["caption"] == {
        "vocab_size": 300,
        "length": 16,
        "dtype": "int16",
        "tokenizer_sha256": "c" * 64,
    }
    ts = TokenSet.open(tmp_path / "t")
    assert [s["name"] for s in ts.shards("train")] == [f"train-{i:06d}" for i in range(4)]
    assert ts.shards()[0]["provenance"] == {"source_shard": 0}
    k = 0
    for i, entry in enumerate(ts.shards()):
        arrays = ts.read_shard(entry["name"])
        n = SIZES[i]
        assert arrays["ids"].tolist() == [f"s{k + j:03d}" for j in range(n)]
        k += n
        for m, expected in make_arrays(n, i).items():
            assert arrays[m].dtype == np.int16
            np.testing.assert_array_equal(arrays[m], expected)
    # Files are plain, memory-mappable .npy without pickles.
    path = tmp_path / "t" / shard_file("train-000000", "rgb")
    mm = np.load(path, mmap_mode="r", allow_pickle=False)
    assert mm.shape == (7, 64) and mm.flags["C_CONTIGUOUS"]
    assert np.load(tmp_path / "t" / shard_file("train-000000", "ids"), allow_pickle=False).dtype.kind == "U"
    report = validate_token_set(tmp_path / "t")
    assert report["ok"] and report["num_samples"] == 31 and report["shards_ok"] == 5


def test_large_vocab_is_int32(tmp_path: Path) -> None:
    w = TokenSetWriter(tmp_path / "t", {"cap": ModalitySpec(40000, 8)})
    w.add_shard("x", "train", ["a", "b"], {"cap": np.array([[39999] * 8, [0] * 8])})
    w.finish()
    arrays = TokenSet.open(tmp_path / "t").read_shard("x")
    assert arrays["cap"].dtype == np.int32 and arrays["cap"][0, 0] == 39999


def test_flipped_byte_is_refused_naming_file(tmp_path: Path) -> None:
    write_set(tmp_path / "t")
    path = tmp_path / "t" / shard_file("train-000002", "depth")
    expected = json.loads((tmp_path / "t" / TOKENS_CARD).read_text())["shards"][2]["files"]["depth"]["sha256"]
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    ts = TokenSet.open(tmp_path / "t")
    with pytest.raises(TokenSetError) as exc:
        ts.read_shard("train-000002")
    msg = str(exc.value)
    assert str(path) in msg and "sha256" in msg
    assert expected[:12] in msg and sha256_file(path)[:12] in msg
    ts.read_shard("train-000001")  # the others still read
    report = validate_token_set(tmp_path / "t")
    assert not report["ok"] and report["shards_ok"] == 4
    assert any(str(path) in p for p in report["problems"])


def test_out_of_vocab_refused_at_write_before_any_file(tmp_path: Path) -> None:
    w = TokenSetWriter(tmp_path / "t", SPECS)
    arrays = make_arrays(7, 0)
    arrays["caption"][4, 3] = 300
    with pytest.raises(TokenSetError) as exc:
        w.add_shard("train-000000", "train", [f"s{i}" for i in range(7)], arrays)
    msg = str(exc.value)
    assert "train-000000" in msg and "'s4'" in msg and "'caption'" in msg
    assert "token id 300 outside vocab [0, 300)" in msg
    assert list((tmp_path / "t" / "shards").iterdir()) == []
    arrays["caption"][4, 3] = -1
    with pytest.raises(TokenSetError, match=r"token id -1 outside vocab \[0, 300\)"):
        w.add_shard("train-000000", "train", [f"s{i}" for i in range(7)], arrays)


def test_write_time_shape_dtype_and_id_rules(tmp_path: Path) -> None:
    w = TokenSetWriter(tmp_path / "t", SPECS)
    ids = [f"s{i}" for i in range(7)]
    bad = make_arrays(7, 0)
    bad["rgb"] = bad["rgb"][:, :63]
    with pytest.raises(
        TokenSetError, match=r"modality 'rgb': shape \(7, 63\) is not \(7 samples, 64 tokens\)"
    ):
        w.add_shard("a", "train", ids, bad)
    bad = make_arrays(7, 0)
    bad["rgb"] = bad["rgb"].astype(np.float32)
    with pytest.raises(TokenSetError, match="float32 is not an integer type"):
        w.add_shard("a", "train", ids, bad)
    bad = make_arrays(7, 0)
    del bad["depth"]
    with pytest.raises(TokenSetError, match=r"missing \['depth'\]"):
        w.add_shard("a", "train", ids, bad)
    w.add_shard("a", "train", ids, make_arrays(7, 0))
    with pytest.raises(TokenSetError, match="sample 's3' is already in shard a"):
        w.add_shard("b", "train", ["z", "s3"], make_arrays(2, 0))
    with pytest.raises(TokenSetError, match="shard name 'c.d'"):
        w.add_shard("c.d", "train", ["z"], make_arrays(1, 0))


def test_out_of_vocab_refused_at_read(tmp_path: Path) -> None:
    """A hand-written bad file with a matching sha256 in tokens.json: the vocab check catches it."""
    root = tmp_path / "t"
    write_set(root)
    rel = shard_file("train-000001", "caption")
    tokens = np.load(root / rel)
    tokens[2, 5] = 512
    np.save(root / rel, tokens)
    card = json.loads((root / TOKENS_CARD).read_text())
    card["shards"][1]["files"]["caption"].update(
        sha256=sha256_file(root / rel), size=(root / rel).stat().st_size
    )
    (root / TOKENS_CARD).write_text(json.dumps(card))
    with pytest.raises(TokenSetError) as exc:
        TokenSet.open(root).read_shard("train-000001")
    msg = str(exc.value)
    # shard 1 holds s007..s013; row 2 is s009
    assert "train-000001" in msg and "'s009'" in msg and "'caption'" in msg
    assert "token id 512 outside vocab [0, 300)" in msg
    # Reading only other modalities of that shard is fine.
    assert "rgb" in TokenSet.open(root).read_shard("train-000001", ["rgb"])


def test_missing_card_is_not_read(tmp_path: Path) -> None:
    root = tmp_path / "t"
    write_set(root)
    (root / TOKENS_CARD).unlink()
    with pytest.raises(TokenSetError, match="never finished"):
        TokenSet.open(root)
    report = validate_token_set(root)
    assert not report["ok"] and "never finished" in report["problems"][0]


def test_half_written_set_has_no_card(tmp_path: Path) -> None:
    root = tmp_path / "t"
    write_set(root, finish=False)
    assert not (root / TOKENS_CARD).exists()
    assert (root / shard_file("train-000000", "rgb")).exists()
    with pytest.raises(TokenSetError, match="never finished"):
        TokenSet.open(root)
    # A writer that fails part-way leaves no card either, even over a previously finished set.
    write_set(root)
    w = TokenSetWriter(root, SPECS)
    assert not (root / TOKENS_CARD).exists()
    bad = make_arrays(3, 9)
    bad["rgb"][0, 0] = 5000
    with pytest.raises(TokenSetError):
        w.add_shard("train-000000", "train", ["a", "b", "c"], bad)
    assert not (root / TOKENS_CARD).exists()


def test_add_existing_shard_verifies(tmp_path: Path) -> None:
    src = tmp_path / "src"
    card = write_set(src)
    dst = tmp_path / "dst"
    w = TokenSetWriter(dst, SPECS)
    for entry in card["shards"][:3]:
        for info in entry["files"].values():
            (dst / info["path"]).write_bytes((src / info["path"]).read_bytes())
        w.add_existing_shard(entry)
    for i in (3, 4):
        entry = card["shards"][i]
        arrays = TokenSet.open(src).read_shard(entry["name"])
        w.add_shard(entry["name"], entry["split"], arrays.pop("ids").tolist(), arrays, entry["provenance"])
    resumed = w.finish({"tokenizers": "test"})
    assert (dst / TOKENS_CARD).read_bytes() == (src / TOKENS_CARD).read_bytes()
    assert resumed == card
    # A damaged existing file is refused.
    w2 = TokenSetWriter(tmp_path / "dst2", SPECS)
    entry = card["shards"][0]
    for info in entry["files"].values():
        (tmp_path / "dst2" / info["path"]).write_bytes((src / info["path"]).read_bytes())
    bad = tmp_path / "dst2" / entry["files"]["rgb"]["path"]
    data = bytearray(bad.read_bytes())
    data[-1] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(TokenSetError, match=str(bad)):
        w2.add_existing_shard(entry)
