"""Streaming loader: exactly once across ranks x workers, deterministic shuffles, exact resume."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fourm.data.loader import StreamLoader, TokenStream
from fourm.data.token_set import TokenSet
from fourm.data.token_shards import ModalitySpec, TokenSetWriter

pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")]

SPECS = {"rgb": ModalitySpec(1024, 64), "depth": ModalitySpec(1024, 64), "caption": ModalitySpec(300, 16)}
SIZES = [7, 7, 7, 7, 3]
N = sum(SIZES)
ALL_IDS = {f"s{i:03d}" for i in range(N)}


@pytest.fixture(scope="module")
def token_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """31 train samples in shards of 7,7,7,7,3, plus a 2-sample val shard."""
    root = tmp_path_factory.mktemp("tokens") / "set"
    w = TokenSetWriter(root, SPECS)
    rng = np.random.default_rng(0)
    k = 0
    for i, n in enumerate(SIZES):
        ids = [f"s{k + j:03d}" for j in range(n)]
        k += n
        arrays = {m: rng.integers(0, s.vocab_size, (n, s.length)) for m, s in SPECS.items()}
        w.add_shard(f"train-{i:06d}", "train", ids, arrays)
    w.add_shard(
        "val-000000", "val", ["v0", "v1"], {m: np.zeros((2, s.length), int) for m, s in SPECS.items()}
    )
    w.finish({})
    return root


def epoch_ids(loader: StreamLoader) -> list[list[str]]:
    return [list(b["id"]) for b in loader]


def flat(batches: list[list[str]]) -> list[str]:
    return [i for b in batches for i in b]


def test_exactly_once_across_ranks_and_workers(token_set: Path) -> None:
    for epoch in (0, 1):
        seen: list[str] = []
        per_rank = []
        for rank in (0, 1):
            stream = TokenStream(
                token_set, "train", batch_size=3, seed=7, buffer_size=4, rank=rank, world_size=2
            )
            stream.set_epoch(epoch)
            ids = [i for b in DataLoader(stream, batch_size=None, num_workers=2) for i in b["id"]]
            assert len(ids) == stream.num_samples
            per_rank.append(len(ids))
            seen += ids
        assert Counter(seen) == Counter(ALL_IDS)  # every sample exactly once
        assert sorted(per_rank) == [15, 16]  # 31 over 2 ranks: uneven by one


def test_per_sample_mode_with_dataloader_batching(token_set: Path) -> None:
    seen: list[str] = []
    for rank in (0, 1):
        stream = TokenStream(token_set, "train", seed=3, rank=rank, world_size=2)
        for batch in DataLoader(stream, batch_size=4, num_workers=2):
            assert batch["rgb"].shape[1:] == (64,) and batch["rgb"].dtype == torch.int64
            seen += batch["id"]
    assert Counter(seen) == Counter(ALL_IDS)


def test_more_consumers_than_shards_and_equal_ranks(token_set: Path) -> None:
    seen: list[str] = []
    for rank in range(3):  # 3 ranks x 3 workers = 9 consumers over 5 shards
        stream = TokenStream(token_set, "train", batch_size=2, rank=rank, world_size=3)
        seen += flat(epoch_ids(StreamLoader(stream, num_workers=3)))
    assert Counter(seen) == Counter(ALL_IDS)
    counts = []
    seen = []
    for rank in range(3):
        stream = TokenStream(token_set, "train", batch_size=2, rank=rank, world_size=3, equal_ranks=True)
        ids = flat(epoch_ids(StreamLoader(stream)))
        counts.append(len(ids))
        seen += ids
    assert counts == [10, 10, 10] and len(set(seen)) == 30


def test_values_match_the_set(token_set: Path) -> None:
    ts = TokenSet.open(token_set)
    by_id = {}
    for entry in ts.shards():
        arrays = ts.read_shard(entry["name"])
        for row, sid in enumerate(arrays["ids"].tolist()):
            by_id[sid] = {m: arrays[m][row] for m in SPECS}
    stream = TokenStream(token_set, "train", ["caption", "rgb"], batch_size=5, buffer_size=8, seed=1)
    n = 0
    for batch in StreamLoader(stream, num_workers=2):
        assert set(batch) == {"id", "caption", "rgb"}
        assert batch["caption"].shape == (len(batch["id"]), 16)
        for k, sid in enumerate(batch["id"]):
            for m in ("caption", "rgb"):
                np.testing.assert_array_equal(batch[m][k].numpy(), by_id[sid][m])
            n += 1
    assert n == N


def test_shuffling_is_deterministic_and_changes_per_epoch(token_set: Path) -> None:
    def run(seed: int, shuffle: bool = True) -> list[list[str]]:
        loader = StreamLoader(
            TokenStream(token_set, "train", batch_size=4, seed=seed, shuffle=shuffle, buffer_size=6),
            num_workers=2,
        )
        return [flat(epoch_ids(loader)) for _ in range(3)]

    a, b, c = run(1), run(1), run(2)
    assert a == b
    assert a[0] != a[1] != a[2] and a[0] != a[2]
    assert a[0] != c[0]
    for epoch in a + c:
        assert sorted(epoch) == sorted(ALL_IDS)
    plain = run(1, shuffle=False)
    assert plain[0] == plain[1] == sorted(ALL_IDS)


def test_order_independent_of_worker_count(token_set: Path) -> None:
    orders = []
    for nw in (0, 1, 2, 3):
        stream = TokenStream(token_set, "train", batch_size=3, seed=5, buffer_size=5, rank=1, world_size=2)
        orders.append(epoch_ids(StreamLoader(stream, num_workers=nw)))
    assert all(o == orders[0] for o in orders)


def test_buffer_shuffle_preserves_multiset(token_set: Path) -> None:
    def order(buffer_size: int) -> list[str]:
        stream = TokenStream(token_set, "train", batch_size=4, seed=11, buffer_size=buffer_size)
        return flat(epoch_ids(StreamLoader(stream, num_workers=2)))

    unbuffered, buffered = order(0), order(8)
    assert unbuffered != buffered
    assert Counter(unbuffered) == Counter(buffered) == Counter(ALL_IDS)
    # The shard order is the same; samples move less than buffer_size places.
    for pos, sid in enumerate(buffered):
        assert abs(unbuffered.index(sid) - pos) < 8
    # Without buffer shuffling, each shard's rows stay together and in order.
    shard_of = np.repeat(np.arange(len(SIZES)), SIZES)
    for shard in range(len(SIZES)):
        where = [pos for pos, sid in enumerate(unbuffered) if shard_of[int(sid[1:])] == shard]
        assert where == list(range(where[0], where[0] + SIZES[shard]))
        assert [unbuffered[p] for p in where] == sorted(unbuffered[p] for p in where)


@pytest.mark.parametrize(
    ("save_epoch", "save_after", "workers_after"), [(0, 1, 2), (0, 3, 2), (0, 5, 3), (1, 4, 0), (1, 2, 1)]
)
def test_resume_mid_epoch_is_exact(
    token_set: Path, save_epoch: int, save_after: int, workers_after: int
) -> None:
    def make(nw: int) -> StreamLoader:
        stream = TokenStream(token_set, "train", batch_size=3, seed=42, buffer_size=5, rank=1, world_size=2)
        return StreamLoader(stream, num_workers=nw)

    full = make(2)
    uninterrupted = [
        epoch_ids(full) for _ in range(3)
    ]  # rank 1 of 2: 16 of 31 samples, 6 batches (last of 1)
    assert [len(b) for b in uninterrupted[0]] == [3, 3, 3, 3, 3, 1]

    first = make(2)
    for _ in range(save_epoch):
        epoch_ids(first)
    head: list[list[str]] = []
    for batch in first:
        head.append(list(batch["id"]))
        if len(head) == save_after:
            state = first.state_dict()
            break
    assert state["epoch"] == save_epoch and state["consumed"] == 3 * save_after

    resumed = make(workers_after)
    resumed.load_state_dict(state)
    rest = epoch_ids(resumed)
    assert head + rest == uninterrupted[save_epoch]
    assert [epoch_ids(resumed) for _ in range(save_epoch + 1, 3)] == uninterrupted[save_epoch + 1 :]


def test_state_at_epoch_end_points_to_next_epoch(token_set: Path) -> None:
    loader = StreamLoader(TokenStream(token_set, "train", batch_size=4, seed=0))
    states = []
    for _ in loader:
        states.append(loader.state_dict())
    assert states[-1]["epoch"] == 1 and states[-1]["consumed"] == 0
    assert states[-2]["epoch"] == 0 and states[-2]["consumed"] == 28
    assert len(states) == len(loader) == 8


def test_load_state_refuses_other_plans(token_set: Path) -> None:
    state = StreamLoader(TokenStream(token_set, "train", batch_size=4, seed=0)).state_dict()
    other = StreamLoader(TokenStream(token_set, "train", batch_size=4, seed=1))
    with pytest.raises(ValueError, match="seed: saved 0, now 1"):
        other.load_state_dict(state)
    other = StreamLoader(TokenStream(token_set, "train", batch_size=4, seed=0, rank=1, world_size=2))
    with pytest.raises(ValueError, match="world_size"):
        other.load_state_dict(state)
    # batch size may change (the sample order does not depend on it)
    same = StreamLoader(TokenStream(token_set, "train", batch_size=8, seed=0))
    same.load_state_dict({**state, "consumed": 12})
    assert len(flat(epoch_ids(same))) == N - 12


def test_drop_last(token_set: Path) -> None:
    loader = StreamLoader(
        TokenStream(token_set, "train", batch_size=4, drop_last=True, seed=0), num_workers=2
    )
    sizes = [len(b) for b in epoch_ids(loader)]
    assert sizes == [4] * 7 and len(loader) == 7


def test_interleaved_ranks_share_global_batches(token_set: Path) -> None:
    """With interleave, batch j of W ranks (batch b each) holds batch j of one process (batch W*b)."""

    def batches(rank: int, world: int, batch: int) -> list[list[str]]:
        stream = TokenStream(
            token_set, "train", batch_size=batch, seed=3, buffer_size=8, rank=rank, world_size=world,
            interleave=True, equal_ranks=True, drop_last=True,
        )  # fmt: skip
        stream.set_epoch(1)
        return epoch_ids(StreamLoader(stream, num_workers=0))

    one = batches(0, 1, 6)
    two = list(zip(batches(0, 2, 3), batches(1, 2, 3), strict=True))
    assert len(one) == len(two) == N // 6
    for whole, (a, b) in zip(one, two, strict=True):
        assert sorted(whole) == sorted(a + b)
    assert flat(one) != sorted(flat(one))  # shuffled


def test_shard_reads_parse_npy_under_the_shared_lock(token_set: Path) -> None:
    """The loader reads shards in threads; every .npy parse must take codecs' lock (CPython
    3.11's AST parser, which np.load uses for headers, is not safe in two threads at once)."""
    import threading

    from fourm.data import codecs

    loader = StreamLoader(TokenStream(token_set, "train", batch_size=4, seed=0))
    done = threading.Event()
    reader = threading.Thread(target=lambda: (next(iter(loader)), done.set()), daemon=True)
    with codecs._NPY_PARSE:
        reader.start()
        assert not done.wait(0.5), "a shard was parsed without the .npy lock"
    assert done.wait(30)
