"""Streaming token sets into training: a resumable, shuffled, exactly-once IterableDataset.

How an epoch's samples are laid out (all in index space, no data read)::

    split's shards, permuted by (seed, epoch)       -> one sequence of N (shard, row) pairs
    rank r of W takes positions [r*N//W, (r+1)*N//W) -> its stream (W ranks: sizes differ by <= 1)
    buffer shuffle within the rank's stream          -> each sample moves < buffer_size places
    batches of batch_size, batch j to worker j % num_workers

So every sample of the split is yielded exactly once per epoch across ranks x workers,
and a rank's sample order depends only on (seed, epoch, rank, world_size) - not on the
number of workers. A DataLoader delivers an IterableDataset's batches round-robin over
its workers, which puts batch j back in place j: ``StreamLoader`` wraps the DataLoader,
checks that order (and restores it if a loader ever delivers out of order) and counts
consumed samples, so ``state_dict()`` / ``load_state_dict()`` resume mid-epoch exactly.

The buffer shuffle sorts positions by ``i + u_i * buffer_size`` (u uniform in [0, 1)): a
vectorised local shuffle whose displacement is bounded, so a worker holds only the
shards of a window of about ``2 * buffer_size`` samples (plus one prefetched shard).

With ``interleave`` the buffer shuffle runs over the whole epoch and rank r takes
positions r, r+W, r+2W, ...: then batch j of every rank together hold the same samples
as batch j of one process with a W-times larger batch (training uses this so a DDP run
sees the same global batches as a single process).

With ``equal_ranks`` every rank gets exactly ``N // W`` samples (the epoch's last
``N % W`` positions are skipped, a different few each shuffled epoch) so that DDP ranks
take the same number of steps; ``drop_last`` drops a rank's final incomplete batch.

Each worker reads the shards its batches touch; shards are verified (sha256, vocab)
on every read, and for S3 fetched one at a time through ``ObjectStore``.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fourm.data.token_set import TokenSet
from fourm.data.token_shards import IDS, TokenSetError
from fourm.io import canonical_json

if TYPE_CHECKING:
    from fourm.storage.object_store import ObjectStore

STATE_VERSION = 1
_START, _END, _TOKENS = "_start", "_end", "_tokens"  # keys of the packed batches StreamLoader gets


def _default_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def set_fingerprint(card: dict[str, Any]) -> str:
    """A short hash of a token set's card: which exact set a loader position belongs to."""
    return hashlib.sha256(canonical_json(card)).hexdigest()[:16]


class TokenStream(IterableDataset):
    """One split of a token set as an IterableDataset for one rank (see the module doc).

    Yields ``{"id": str, modality: LongTensor (length,)}`` per sample, or with
    ``batch_size`` ``{"id": list[str], modality: LongTensor (b, length)}`` per batch (use
    ``DataLoader(stream, batch_size=None, ...)`` then). ``StreamLoader`` is the fast,
    in-order, resumable way to iterate; used directly, call ``set_epoch(e)`` before each
    epoch's DataLoader iterator (workers copy the stream when they start, so
    ``persistent_workers`` would keep the first epoch's plan).
    ``store_factory`` builds the ObjectStore for an S3 set in each process (default: from
    settings; the parent's connections are never used in a worker); it must be picklable
    for the ``spawn`` start method.
    """

    def __init__(
        self,
        location: str | Path | TokenSet,
        split: str,
        modalities: Sequence[str] | None = None,
        *,
        batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        buffer_size: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        equal_ranks: bool = False,
        interleave: bool = False,
        drop_last: bool = False,
        prefetch: bool = True,
        verify: bool = True,
        store_factory: Callable[[], ObjectStore] | None = None,
    ):
        super().__init__()
        self._store_factory = store_factory
        if isinstance(location, TokenSet):
            ts = location
        else:
            store = store_factory() if store_factory and str(location).startswith("s3://") else None
            ts = TokenSet.open(location, store)
        self._ts = ts
        self._pid = os.getpid()
        self._is_s3 = ts.in_s3
        if split not in ts.splits:
            raise TokenSetError(f"{ts.location}: no split {split!r}; it has {sorted(ts.splits)}")
        self.split = split
        self.modalities = list(ts.modalities) if modalities is None else list(modalities)
        if not self.modalities:
            raise ValueError("a TokenStream needs at least one modality")
        unknown = [m for m in self.modalities if m not in ts.modalities]
        if unknown:
            raise TokenSetError(f"{ts.location}: no modality {unknown}; it has {sorted(ts.modalities)}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if rank is None or world_size is None:
            d_rank, d_world = _default_rank_world()
            rank = d_rank if rank is None else rank
            world_size = d_world if world_size is None else world_size
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.buffer_size = max(0, int(buffer_size))
        self.rank = rank
        self.world_size = world_size
        self.equal_ranks = equal_ranks
        self.interleave = interleave
        self.drop_last = drop_last
        self.prefetch = prefetch
        self.verify = verify
        self.fingerprint = set_fingerprint(ts.card)
        self._shards = ts.shards(split)
        self._sizes = np.array([s["num_samples"] for s in self._shards], dtype=np.int64)
        self.split_samples = int(self._sizes.sum())
        self.epoch = 0
        self.start = 0
        self._with_positions = False
        lengths = [ts.modalities[m].length for m in self.modalities]
        self._columns = np.concatenate([[0], np.cumsum(lengths)]).tolist()
        self._dtype = np.result_type(*[ts.modalities[m].dtype for m in self.modalities])

    # -- the plan ---------------------------------------------------------------------

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch ``epoch`` from sample ``start`` of this rank's stream on."""
        self.epoch = int(epoch)
        self.start = int(start)

    @property
    def num_samples(self) -> int:
        """Samples this rank yields per (whole) epoch."""
        n, w = self.split_samples, self.world_size
        if self.equal_ranks:
            count = n // w
        elif self.interleave:
            count = len(range(self.rank, n, w))
        else:
            count = (self.rank + 1) * n // w - self.rank * n // w
        if self.drop_last and self.batch_size:
            count -= count % self.batch_size
        return count

    @property
    def num_batches(self) -> int:
        """Batches this rank yields per (whole) epoch (samples when ``batch_size`` is None)."""
        b = self.batch_size or 1
        return -(-self.num_samples // b)

    def order(self, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """This rank's whole-epoch sample order: (shard index into the split's shards, row) arrays."""
        epoch = self.epoch if epoch is None else epoch
        sizes = self._sizes
        n = self.split_samples
        if self.shuffle:
            perm = np.random.default_rng([self.seed, epoch, 0]).permutation(len(sizes))
        else:
            perm = np.arange(len(sizes))
        shard_seq = np.repeat(perm, sizes[perm])
        firsts = np.cumsum(sizes[perm]) - sizes[perm]
        row_seq = np.arange(n, dtype=np.int64) - np.repeat(firsts, sizes[perm])
        w, r = self.world_size, self.rank
        if self.interleave:
            # Shuffle the whole epoch, then deal positions round-robin: the samples of the
            # first k*W positions are the same whatever W is (DDP matches one process).
            if self.shuffle and self.buffer_size > 1 and n > 1:
                rng = np.random.default_rng([self.seed, epoch, 1])
                idx = np.argsort(np.arange(n) + rng.random(n) * self.buffer_size, kind="stable")
                shard_seq, row_seq = shard_seq[idx], row_seq[idx]
            hi = (n // w) * w if self.equal_ranks else n
            count = self.num_samples
            return shard_seq[r:hi:w][:count], row_seq[r:hi:w][:count]
        if self.equal_ranks:
            lo, hi = r * (n // w), (r + 1) * (n // w)
        else:
            lo, hi = r * n // w, (r + 1) * n // w
        shard_seq, row_seq = shard_seq[lo:hi], row_seq[lo:hi]
        if self.shuffle and self.buffer_size > 1 and len(shard_seq) > 1:
            rng = np.random.default_rng([self.seed, epoch, 1, r, w])
            keys = np.arange(len(shard_seq)) + rng.random(len(shard_seq)) * self.buffer_size
            idx = np.argsort(keys, kind="stable")
            shard_seq, row_seq = shard_seq[idx], row_seq[idx]
        count = self.num_samples
        return shard_seq[:count], row_seq[:count]

    # -- reading -------------------------------------------------------------------------

    def _tokenset(self) -> TokenSet:
        """The set, with connections of this process's own (a forked worker must not share sockets)."""
        if os.getpid() != self._pid:
            store = self._store_factory() if (self._is_s3 and self._store_factory) else None
            self._ts = self._ts.reopen(store)
            self._pid = os.getpid()
        return self._ts

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pid"] = -1  # unpickled in another process: reopen there
        return state

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        shard_seq, row_seq = self.order()
        if not 0 <= self.start <= len(shard_seq):
            raise ValueError(f"start {self.start} is outside this rank's epoch of {len(shard_seq)} samples")
        shard_seq, row_seq = shard_seq[self.start :], row_seq[self.start :]
        b = self.batch_size or 1
        nb = -(-len(shard_seq) // b)
        mine = range(wid, nb, nw)
        if not mine:
            return
        # Which of this worker's batches uses each shard last (to evict) and first (to prefetch).
        batch_of = np.arange(len(shard_seq)) // b
        my_mask = batch_of % nw == wid
        my_shards, my_batches = shard_seq[my_mask], batch_of[my_mask]
        last_use = np.full(len(self._sizes), -1, dtype=np.int64)
        np.maximum.at(last_use, my_shards, my_batches)
        _, first_idx = np.unique(my_shards, return_index=True)
        fetch_order = my_shards[np.sort(first_idx)].tolist()
        cache = _ShardCache(self, fetch_order, self.prefetch)
        try:
            for j in mine:
                lo, hi = j * b, min((j + 1) * b, len(shard_seq))
                batch = self._gather(cache, shard_seq[lo:hi], row_seq[lo:hi])
                for s in np.unique(shard_seq[lo:hi]).tolist():
                    if last_use[s] == j:
                        cache.drop(s)
                if self._with_positions:  # for StreamLoader: packed, unpacked in the main process
                    batch[_START], batch[_END] = self.start + lo, self.start + hi
                    yield batch
                elif self.batch_size is None:
                    batch = self.unpack(batch)
                    yield {"id": batch["id"][0], **{m: batch[m][0] for m in self.modalities}}
                else:
                    yield self.unpack(batch)
        finally:
            cache.close()

    def _gather(self, cache: _ShardCache, shards: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
        """``{"id": list[str], "_tokens": (n, sum of lengths) array}``, modalities side by side."""
        uniq = np.unique(shards).tolist()
        if len(uniq) == 1:
            arrays = cache.get(uniq[0])
            ids = arrays[IDS][rows].tolist()
            packed = np.concatenate([arrays[m][rows] for m in self.modalities], axis=1, dtype=self._dtype)
            return {"id": ids, _TOKENS: packed}
        ids_arr = np.empty(len(shards), dtype=object)
        packed = np.empty((len(shards), self._columns[-1]), dtype=self._dtype)
        for s in uniq:
            arrays = cache.get(s)
            sel = shards == s
            r = rows[sel]
            ids_arr[sel] = arrays[IDS][r]
            packed[sel] = np.concatenate([arrays[m][r] for m in self.modalities], axis=1, dtype=self._dtype)
        return {"id": [str(i) for i in ids_arr], _TOKENS: packed}

    def unpack(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A packed batch as ``{"id": ..., modality: LongTensor (n, length)}`` (in place)."""
        packed = np.asarray(batch.pop(_TOKENS))
        for m, lo, hi in zip(self.modalities, self._columns[:-1], self._columns[1:], strict=True):
            batch[m] = torch.from_numpy(packed[:, lo:hi].astype(np.int64))
        return batch

    def read_shard(self, index: int) -> dict[str, np.ndarray]:
        """Shard ``index`` of the split (ids + the stream's modalities), verified."""
        return self._tokenset().read_shard(self._shards[index]["name"], self.modalities, self.verify)


class _ShardCache:
    """The shards a worker holds: loaded on first use, the next one prefetched in a thread."""

    def __init__(self, stream: TokenStream, fetch_order: list[int], prefetch: bool):
        self.stream = stream
        self.order = fetch_order
        self.next_rank = {s: i + 1 for i, s in enumerate(fetch_order)}
        self.loaded: dict[int, Future | dict[str, np.ndarray]] = {}
        stream._tokenset()  # open in this process before any thread uses it
        self.pool = ThreadPoolExecutor(1) if prefetch and fetch_order else None
        self.started: set[int] = set()
        if self.pool is not None:
            self._start(fetch_order[0])

    def _start(self, s: int) -> None:
        if s not in self.started:
            self.started.add(s)
            self.loaded[s] = self.pool.submit(self.stream.read_shard, s)

    def get(self, s: int) -> dict[str, np.ndarray]:
        value = self.loaded.get(s)
        if isinstance(value, Future):
            value = value.result()
        elif value is None:
            value = self.stream.read_shard(s)
        self.loaded[s] = value
        self.started.add(s)
        if self.pool is not None:
            k = self.next_rank.get(s, len(self.order))
            if k < len(self.order):
                self._start(self.order[k])
        return value

    def drop(self, s: int) -> None:
        self.loaded.pop(s, None)

    def close(self) -> None:
        if self.pool is not None:
            for f in self.loaded.values():
                if isinstance(f, Future):
                    f.cancel()
            self.pool.shutdown(wait=True)


class StreamLoader:
    """A DataLoader over a batched ``TokenStream`` that knows its position.

    ``for batch in loader`` yields the rest of the current epoch in order, then moves
    to the next epoch; ``state_dict()`` (e.g. saved with a checkpoint after a step)
    and ``load_state_dict()`` resume exactly: the remaining batches of that epoch in
    the same order, then the following epochs as an uninterrupted run would. The
    number of workers may differ between saving and resuming.
    """

    def __init__(self, stream: TokenStream, num_workers: int = 0, **dataloader_kwargs: Any):
        """``dataloader_kwargs`` go to ``torch.utils.data.DataLoader`` (e.g. ``prefetch_factor``,
        ``multiprocessing_context``, ``timeout``); batching and collation are the stream's."""
        if stream.batch_size is None:
            raise ValueError("StreamLoader needs a TokenStream with batch_size set")
        owned = {
            "batch_size",
            "collate_fn",
            "sampler",
            "batch_sampler",
            "shuffle",
            "drop_last",
            "persistent_workers",
        }
        clash = sorted(owned & set(dataloader_kwargs))
        if clash:
            raise ValueError(
                f"StreamLoader sets {clash} itself (workers restart per epoch; batching is the stream's)"
            )
        self.stream = stream
        self.num_workers = num_workers
        self.pin_memory = bool(dataloader_kwargs.pop("pin_memory", False)) and torch.cuda.is_available()
        self.dataloader_kwargs = dataloader_kwargs
        self.epoch = 0
        self.consumed = 0  # samples of this rank's current epoch already yielded

    def __len__(self) -> int:
        """Batches per whole epoch for this rank."""
        return self.stream.num_batches

    def _advance_if_done(self) -> None:
        if self.consumed >= self.stream.num_samples:
            self.epoch += 1
            self.consumed = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._advance_if_done()
        epoch, start = self.epoch, self.consumed
        total = self.stream.num_samples
        ds = copy.copy(self.stream)
        ds.set_epoch(epoch, start)
        ds._with_positions = True
        if self.num_workers > 0:
            it: Any = DataLoader(
                ds, batch_size=None, num_workers=self.num_workers, collate_fn=_as_is, **self.dataloader_kwargs
            )
        else:
            it = ds
        pending: dict[int, tuple[int, dict[str, Any]]] = {}
        expect = start
        for batch in it:
            s, e = int(batch.pop(_START)), int(batch.pop(_END))
            out = ds.unpack(batch)
            if self.pin_memory:
                out.update({m: out[m].pin_memory() for m in ds.modalities})
            pending[s] = (e, out)
            while expect in pending:
                e, out = pending.pop(expect)
                expect = e
                self.epoch, self.consumed = epoch, e
                self._advance_if_done()
                yield out
        if expect != total or pending:
            raise RuntimeError(
                f"loader ended at sample {expect} of {total} in epoch {epoch} "
                f"({len(pending)} batches out of order); a worker lost batches"
            )

    def state_dict(self) -> dict[str, Any]:
        s = self.stream
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "consumed": self.consumed,
            "set": s.fingerprint,
            "split": s.split,
            "split_samples": s.split_samples,
            "seed": s.seed,
            "shuffle": s.shuffle,
            "buffer_size": s.buffer_size,
            "rank": s.rank,
            "world_size": s.world_size,
            "equal_ranks": s.equal_ranks,
            "interleave": s.interleave,
            "drop_last": s.drop_last,
            "batch_size": s.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state_dict()``; refused when the plan it was saved under differs."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r} is not {STATE_VERSION}")
        mine = self.state_dict()
        keys = [
            "set",
            "split",
            "split_samples",
            "seed",
            "shuffle",
            "buffer_size",
            "rank",
            "world_size",
            "equal_ranks",
            "interleave",
            "drop_last",
        ]
        if self.stream.drop_last:
            keys.append("batch_size")  # drop_last makes the epoch's length depend on it
        diff = {k: (state.get(k), mine[k]) for k in keys if state.get(k) != mine[k]}
        if diff:
            detail = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"loader state was saved under a different plan ({detail})")
        consumed = int(state["consumed"])
        if not 0 <= consumed <= self.stream.num_samples:
            raise ValueError(f"loader state: consumed {consumed} outside [0, {self.stream.num_samples}]")
        self.epoch = int(state["epoch"])
        self.consumed = consumed
        self._advance_if_done()


def _as_is(batch: Any) -> Any:
    """DataLoader collate that passes packed numpy batches through (pickled, not via shared memory)."""
    return batch
