"""`BlockManager`: fixed-size KV blocks, reference counts, a free list and the prefix cache.

Contract:
- The KV cache is `num_blocks` blocks of `block_size` token slots. A request owns an ordered
  block table (`request.block_ids`); token position p lives in flat slot
  `block_ids[p // block_size] * block_size + p % block_size` (`slot_mapping`, one slot per token).
- `allocate_slots(request, num_new_tokens)` grows the table to cover
  `num_computed_tokens + num_new_tokens` tokens and returns True, or returns False and changes
  nothing when the free blocks do not suffice: the scheduler then preempts or waits.
- `free(request)` drops the request's references; a block whose count reaches 0 becomes free.
- This class is mechanism only: it never knows which scheduling policy is active.

Prefix caching (`enable_prefix_caching=True`):
- A block is hashed once it is FULL and its KV is COMPUTED (all of its positions are below
  `num_computed_tokens`). The hash chains the block's token ids with the previous block's hash,
  so equal tokens behind a different prefix hash differently (their KV differs). SHA-256 makes a
  collision, which would silently serve another prompt's KV, not a practical concern.
- Full computed blocks are registered lazily, at the request's next `allocate_slots` or at
  `free`. A block counts as computed once its chunk is planned: any step that reads it through a
  prefix hit runs after that chunk on the same device stream, so the KV is written by then.
- `get_computed_blocks(request)` (admission only) returns the longest cached run of whole blocks,
  never the whole prompt: at most `num_tokens - 1` tokens, so the step still computes the last
  token and produces logits. The lookup is pure; `allocate_slots(..., prefix_hit)` takes the
  blocks (ref count + 1) and counts the query and hit tokens, so a request that must wait and is
  looked up again next step is not counted twice.
- A cached block whose ref count falls to 0 is not forgotten: it goes to the tail of an LRU list,
  still findable by hash. New allocations take never-cached free blocks first, then evict from
  the LRU head (least recently freed), dropping the evicted block's hash. A request's blocks are
  released tail first, so its last (least shareable) blocks are evicted before its first ones.

Invariants (`check_invariants` asserts them): every block is in exactly one of {used (ref > 0),
free list (ref 0, no hash), LRU list (ref 0, hashed)}; the hash map and the blocks' hashes agree.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aisp.engine.request import Request

__all__ = ["BlockHash", "BlockManager", "PrefixHit", "hash_block_tokens", "slot_of"]

BlockHash = bytes


def hash_block_tokens(parent: BlockHash | None, token_ids: Sequence[int]) -> BlockHash:
    """Hash of one full block: SHA-256 over the parent's hash and the block's token ids."""
    h = hashlib.sha256(parent or b"")
    h.update(array("q", token_ids).tobytes())
    return h.digest()


def slot_of(block_ids: Sequence[int], block_size: int, position: int) -> int:
    """Flat KV slot of token `position` for a request whose block table is `block_ids`."""
    return block_ids[position // block_size] * block_size + position % block_size


@dataclass(frozen=True)
class PrefixHit:
    """Result of a prefix-cache lookup: whole cached blocks the request can start from."""

    block_ids: tuple[int, ...] = ()
    num_tokens: int = 0            # len(block_ids) * block_size: tokens whose KV is reused
    num_queried_tokens: int = 0    # the request's num_tokens at lookup (0 when caching is off)


class _Block:
    __slots__ = ("block_id", "ref_count", "block_hash")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_count = 0
        self.block_hash: BlockHash | None = None


class BlockManager:
    """Fixed-size KV blocks with ref counts, a free list and an LRU prefix cache."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False) -> None:
        if not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"num_blocks is {num_blocks!r}; the KV cache needs at least 1 block")
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size is {block_size!r}; it must be a positive number of tokens (e.g. 16)")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._blocks = [_Block(i) for i in range(num_blocks)]
        self._free: deque[int] = deque(range(num_blocks))           # ref 0, never hashed
        self._lru: OrderedDict[int, None] = OrderedDict()           # ref 0, hashed; head = LRU
        self._cached: dict[BlockHash, int] = {}                     # hash -> block id
        self._req_hashes: dict[str, list[BlockHash]] = {}           # request id -> full-block hashes
        self._req_num_registered: dict[str, int] = {}               # request id -> blocks checked
        # Cumulative telemetry counters (tokens, except evictions which count blocks).
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        self.num_evictions = 0

    # -- capacity ------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation may take now: never-cached free blocks plus evictable cached ones."""
        return len(self._free) + len(self._lru)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by some request, in [0, 1]."""
        return self.num_used_blocks / self.num_blocks

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def num_cached_blocks(self) -> int:
        """Blocks findable by hash (in use or on the LRU list)."""
        return len(self._cached)

    def num_blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold `num_tokens` tokens."""
        return -(-num_tokens // self.block_size)

    def ref_count(self, block_id: int) -> int:
        return self._blocks[block_id].ref_count

    def is_cached(self, block_id: int) -> bool:
        return self._blocks[block_id].block_hash is not None

    def lru_block_ids(self) -> list[int]:
        """Evictable cached blocks, least recently freed first (the eviction order)."""
        return list(self._lru)

    # -- prefix cache lookup ---------------------------------------------------------------------
    def get_computed_blocks(self, request: Request) -> PrefixHit:
        """Longest cached prefix of whole blocks, capped at num_tokens - 1 tokens. Pure lookup."""
        if not self.enable_prefix_caching:
            return PrefixHit()
        assert not request.block_ids and request.num_computed_tokens == 0, "lookup is for admission only"
        max_blocks = (request.num_tokens - 1) // self.block_size
        hit: list[int] = []
        for h in self._hashes(request, max_blocks):
            block_id = self._cached.get(h)
            if block_id is None:
                break
            hit.append(block_id)
        return PrefixHit(tuple(hit), len(hit) * self.block_size, request.num_tokens)

    # -- allocation ------------------------------------------------------------------------------
    def can_allocate(self, request: Request, num_new_tokens: int, prefix_hit: PrefixHit | None = None) -> bool:
        """Whether `allocate_slots` with the same arguments would succeed now."""
        return self.num_blocks_to_allocate(request, num_new_tokens, prefix_hit) <= self.num_free_blocks

    def num_blocks_to_allocate(self, request: Request, num_new_tokens: int,
                               prefix_hit: PrefixHit | None = None) -> int:
        """Free blocks `allocate_slots` with the same arguments would take: fresh blocks plus
        hit blocks that leave the LRU list (hit blocks another request holds cost nothing)."""
        need_new, need_lru_hits = self._blocks_needed(request, num_new_tokens, prefix_hit)
        return need_new + need_lru_hits

    def allocate_slots(self, request: Request, num_new_tokens: int, prefix_hit: PrefixHit | None = None) -> bool:
        """Cover num_computed_tokens (+ prefix_hit tokens) + num_new_tokens with blocks.

        Returns False, changing nothing, when the free blocks do not suffice. With a prefix_hit
        (admission), the hit blocks are prepended to the (empty) block table; the caller then sets
        `request.num_computed_tokens = prefix_hit.num_tokens`.
        """
        if not isinstance(num_new_tokens, int) or num_new_tokens < 0:
            raise ValueError(f"num_new_tokens is {num_new_tokens!r}; it must be an integer >= 0")
        need_new, need_lru_hits = self._blocks_needed(request, num_new_tokens, prefix_hit)
        if need_new + need_lru_hits > self.num_free_blocks:
            return False
        self._register_computed_blocks(request)
        if prefix_hit is not None:
            for block_id in prefix_hit.block_ids:
                block = self._blocks[block_id]
                assert block.block_hash is not None and self._cached.get(block.block_hash) == block_id, \
                    "prefix hit went stale between lookup and allocation"
                if block.ref_count == 0:
                    del self._lru[block_id]
                block.ref_count += 1
            request.block_ids.extend(prefix_hit.block_ids)
            # Hit blocks are already registered; start registration after them.
            self._req_num_registered[request.request_id] = len(prefix_hit.block_ids)
            self.prefix_cache_queries += prefix_hit.num_queried_tokens
            self.prefix_cache_hits += prefix_hit.num_tokens
        for _ in range(need_new):
            block = self._take_free_block()
            block.ref_count = 1
            request.block_ids.append(block.block_id)
        return True

    def free(self, request: Request) -> None:
        """Release the request's blocks (tail first, so its tail is evicted first) and forget it."""
        self._register_computed_blocks(request)
        for block_id in reversed(request.block_ids):
            block = self._blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0, f"block {block_id} freed more often than allocated"
            if block.ref_count == 0:
                if block.block_hash is not None:
                    self._lru[block_id] = None      # MRU end: reusable by hash until evicted
                else:
                    self._free.append(block_id)
        request.block_ids.clear()
        self._req_hashes.pop(request.request_id, None)
        self._req_num_registered.pop(request.request_id, None)

    def reset_prefix_cache(self) -> int:
        """Forget every evictable cached block (a cold cache for benchmarks); returns how many."""
        n = len(self._lru)
        while self._lru:
            block_id, _ = self._lru.popitem(last=False)
            self._evict(block_id)
            self._free.append(block_id)
        return n

    # -- slot mapping ----------------------------------------------------------------------------
    def slot_mapping(self, request: Request, start: int, end: int) -> list[int]:
        """Flat KV slots of token positions [start, end) of the request (one per token)."""
        if not 0 <= start <= end <= len(request.block_ids) * self.block_size:
            raise ValueError(
                f"positions [{start}, {end}) of request {request.request_id!r} are outside its "
                f"{len(request.block_ids)} blocks ({len(request.block_ids) * self.block_size} slots); "
                f"allocate_slots first"
            )
        bs, table = self.block_size, request.block_ids
        return [table[p // bs] * bs + p % bs for p in range(start, end)]

    # -- internals -------------------------------------------------------------------------------
    def _blocks_needed(self, request: Request, num_new_tokens: int, prefix_hit: PrefixHit | None) -> tuple[int, int]:
        """(fresh blocks to take, hit blocks that leave the LRU list) for this allocation."""
        hit = prefix_hit.block_ids if prefix_hit is not None else ()
        if hit:
            assert not request.block_ids and request.num_computed_tokens == 0, "prefix hits only at admission"
        total_tokens = request.num_computed_tokens + len(hit) * self.block_size + num_new_tokens
        need_new = max(0, self.num_blocks_for(total_tokens) - len(request.block_ids) - len(hit))
        need_lru_hits = sum(1 for b in hit if self._blocks[b].ref_count == 0)
        return need_new, need_lru_hits

    def _take_free_block(self) -> _Block:
        if self._free:
            return self._blocks[self._free.popleft()]
        block_id, _ = self._lru.popitem(last=False)  # least recently used cached block
        self._evict(block_id)
        return self._blocks[block_id]

    def _evict(self, block_id: int) -> None:
        block = self._blocks[block_id]
        assert block.ref_count == 0 and block.block_hash is not None
        del self._cached[block.block_hash]
        block.block_hash = None
        self.num_evictions += 1

    def _hashes(self, request: Request, num_blocks: int) -> list[BlockHash]:
        """The request's first `num_blocks` full-block hashes, computed incrementally and memoized."""
        hashes = self._req_hashes.setdefault(request.request_id, [])
        bs, tokens = self.block_size, request.all_token_ids
        while len(hashes) < num_blocks:
            i = len(hashes)
            hashes.append(hash_block_tokens(hashes[-1] if hashes else None, tokens[i * bs:(i + 1) * bs]))
        return hashes[:num_blocks]

    def _register_computed_blocks(self, request: Request) -> None:
        """Make the request's full blocks whose KV is computed findable by hash."""
        if not self.enable_prefix_caching:
            return
        # A block is hashed by its token ids, so a pending token (sampled, not yet known: see
        # aisp.engine.request) keeps its block unregistered until it arrives.
        num_known = min(request.num_computed_tokens, len(request.all_token_ids))
        num_full = min(num_known // self.block_size, len(request.block_ids))
        start = self._req_num_registered.get(request.request_id, 0)
        if num_full <= start:
            return
        hashes = self._hashes(request, num_full)
        for i in range(start, num_full):
            block = self._blocks[request.block_ids[i]]
            if block.block_hash is not None:
                assert block.block_hash == hashes[i], "a block's content changed after it was hashed"
            elif hashes[i] not in self._cached:
                # Same content computed twice concurrently: the first copy stays the cached one,
                # this one remains a private, unhashed block.
                block.block_hash = hashes[i]
                self._cached[hashes[i]] = block.block_id
        self._req_num_registered[request.request_id] = num_full

    def check_invariants(self, requests: Iterable[Request] | None = None) -> None:
        """Assert the allocator's invariants; with `requests`, also that ref counts match tables."""
        free, lru = set(self._free), set(self._lru)
        assert len(free) == len(self._free), "a block is twice on the free list"
        assert not free & lru, "a block is both on the free list and the LRU list"
        for block in self._blocks:
            assert block.ref_count >= 0
            if block.ref_count > 0:
                assert block.block_id not in free and block.block_id not in lru, "used block is free"
            else:
                assert (block.block_id in free) != (block.block_id in lru), "a block with ref 0 is lost"
                assert (block.block_id in lru) == (block.block_hash is not None)
            if block.block_hash is not None:
                assert self._cached.get(block.block_hash) == block.block_id
        assert len(self._cached) == sum(b.block_hash is not None for b in self._blocks)
        assert 0.0 <= self.usage <= 1.0
        if requests is not None:
            refs = [0] * self.num_blocks
            for request in requests:
                for block_id in request.block_ids:
                    refs[block_id] += 1
            assert refs == [b.ref_count for b in self._blocks], "ref counts disagree with block tables"
