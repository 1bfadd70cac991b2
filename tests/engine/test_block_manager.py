"""BlockManager: allocation, ref counts, slot mapping and the LRU prefix cache, block by block."""

from __future__ import annotations

import pytest

from aisp.engine.block_manager import BlockManager, PrefixHit, hash_block_tokens, slot_of
from aisp.engine.request import Request, RequestStatus

from tests.engine.engine_fakes import FakeRunner, make_request, make_scheduler, scheduled, step


def computed(request: Request, num_tokens: int) -> Request:
    """Pretend a forward pass wrote KV for the first num_tokens tokens."""
    request.num_computed_tokens = num_tokens
    return request


def test_allocate_grows_the_table_and_fails_without_side_effects():
    bm = BlockManager(num_blocks=4, block_size=4)
    r = make_request("R", 6)
    assert bm.can_allocate(r, 6) and bm.allocate_slots(r, 6)
    assert r.block_ids == [0, 1] and bm.num_free_blocks == 2 and bm.usage == 0.5
    computed(r, 6)
    assert bm.allocate_slots(r, 2) and r.block_ids == [0, 1]  # positions 6, 7 fit in block 1
    assert bm.allocate_slots(r, 3) and r.block_ids == [0, 1, 2]
    big = make_request("big", 12)
    assert not bm.can_allocate(big, 12)
    assert not bm.allocate_slots(big, 12)  # 3 blocks wanted, 1 free: nothing taken
    assert big.block_ids == [] and bm.num_free_blocks == 1
    bm.check_invariants([r, big])
    bm.free(r)
    assert r.block_ids == [] and bm.num_free_blocks == 4 and bm.usage == 0.0
    assert bm.capacity_tokens == 16 and bm.num_blocks_for(9) == 3
    with pytest.raises(ValueError, match="num_new_tokens is -1"):
        bm.allocate_slots(r, -1)
    with pytest.raises(ValueError, match="block_size is 0"):
        BlockManager(4, 0)


def test_slot_mapping_is_block_then_offset():
    bm = BlockManager(num_blocks=8, block_size=4)
    r = make_request("R", 8)
    r.block_ids = [5, 2]
    assert bm.slot_mapping(r, 0, 8) == [20, 21, 22, 23, 8, 9, 10, 11]
    assert bm.slot_mapping(r, 3, 6) == [23, 8, 9]
    assert slot_of(r.block_ids, 4, 4) == 8
    with pytest.raises(ValueError, match=r"positions \[6, 9\) .* outside its 2 blocks"):
        bm.slot_mapping(r, 6, 9)


def test_hash_chains_the_prefix():
    h_a = hash_block_tokens(None, [1, 2, 3, 4])
    h_b = hash_block_tokens(None, [9, 9, 9, 9])
    assert hash_block_tokens(None, [1, 2, 3, 4]) == h_a  # deterministic
    # The same four tokens behind different prefixes hash differently: their KV differs.
    assert hash_block_tokens(h_a, [5, 6, 7, 8]) != hash_block_tokens(h_b, [5, 6, 7, 8])
    assert hash_block_tokens(None, [5, 6, 7, 8]) != hash_block_tokens(h_a, [5, 6, 7, 8])


def test_prefix_lookup_is_whole_blocks_and_never_the_whole_prompt():
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=True)
    first = make_request("first", list(range(1, 11)))   # 10 tokens: blocks 0, 1 full, 2 partial
    assert bm.allocate_slots(first, 10)
    bm.free(computed(first, 10))                        # blocks 0 and 1 become cached
    assert bm.num_cached_blocks == 2 and bm.lru_block_ids() == [1, 0] and bm.num_free_blocks == 8

    same8 = make_request("same8", list(range(1, 9)))    # exactly the two cached blocks
    hit = bm.get_computed_blocks(same8)
    assert hit == PrefixHit((0,), 4, 8)                 # capped at 7 tokens -> one whole block
    longer = make_request("longer", list(range(1, 12)))
    assert bm.get_computed_blocks(longer) == PrefixHit((0, 1), 8, 11)
    other_prefix = make_request("other", [99, 2, 3, 4, 5, 6, 7, 8, 9])  # block 1 equal, prefix not
    assert bm.get_computed_blocks(other_prefix) == PrefixHit((), 0, 9)
    assert bm.prefix_cache_queries == 0  # lookups alone count nothing

    assert bm.allocate_slots(longer, 3, bm.get_computed_blocks(longer))
    assert longer.block_ids == [0, 1, 3] and bm.ref_count(0) == 1 and bm.lru_block_ids() == []
    assert (bm.prefix_cache_queries, bm.prefix_cache_hits) == (11, 8)
    bm.check_invariants([longer])


def test_a_failed_allocation_takes_no_hit_blocks_and_counts_nothing():
    bm = BlockManager(num_blocks=3, block_size=4, enable_prefix_caching=True)
    r1 = make_request("r1", list(range(1, 9)))
    bm.allocate_slots(r1, 8)
    bm.free(computed(r1, 8))
    r2 = make_request("r2", list(range(1, 9)) + list(range(50, 59)))  # 17 tokens: 5 blocks
    hit = bm.get_computed_blocks(r2)
    assert hit.num_tokens == 8
    assert not bm.allocate_slots(r2, 9, hit)
    assert r2.block_ids == [] and bm.lru_block_ids() == [1, 0] and bm.prefix_cache_queries == 0
    bm.check_invariants([r2])


def test_free_blocks_are_used_before_cached_ones_then_lru_eviction_order():
    bm = BlockManager(num_blocks=4, block_size=4, enable_prefix_caching=True)
    r1 = make_request("r1", [1, 2, 3, 4, 5, 6, 7, 8])
    bm.allocate_slots(r1, 8)
    bm.free(computed(r1, 8))                   # r1's blocks 0, 1 cached; LRU: tail first -> [1, 0]
    r2 = make_request("r2", [11, 12, 13, 14, 15, 16, 17, 18])
    assert bm.allocate_slots(r2, 8) and r2.block_ids == [2, 3] and bm.num_evictions == 0
    bm.free(computed(r2, 8))
    assert bm.lru_block_ids() == [1, 0, 3, 2] and bm.num_free_blocks == 4

    r3 = make_request("r3", [21, 22])
    assert bm.allocate_slots(r3, 2) and r3.block_ids == [1] and bm.num_evictions == 1
    again = make_request("again", [1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert bm.get_computed_blocks(again).block_ids == (0,)  # block 1's hash was dropped
    r4 = make_request("r4", [31] * 8)
    assert bm.allocate_slots(r4, 8) and r4.block_ids == [0, 3] and bm.num_evictions == 3
    assert bm.lru_block_ids() == [2] and bm.get_computed_blocks(again).block_ids == ()
    bm.check_invariants([r3, r4])
    assert bm.reset_prefix_cache() == 1 and bm.num_cached_blocks == 0 and bm.num_evictions == 4
    bm.check_invariants([r3, r4])
    bm.free(r3)
    bm.free(r4)
    assert bm.num_free_blocks == 4


def test_shared_blocks_are_ref_counted():
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=True)
    a = make_request("a", list(range(1, 10)))
    bm.allocate_slots(a, 9)
    computed(a, 9)
    bm.allocate_slots(a, 1)                    # registers a's two full computed blocks
    b = make_request("b", list(range(1, 9)) + [77, 78])
    hit = bm.get_computed_blocks(b)
    assert bm.allocate_slots(b, 2, hit) and b.block_ids[:2] == a.block_ids[:2]
    assert bm.ref_count(0) == bm.ref_count(1) == 2
    bm.free(a)
    assert bm.ref_count(0) == 1 and bm.lru_block_ids() == [] and bm.num_used_blocks == 3
    bm.check_invariants([b])
    bm.free(b)
    assert bm.num_free_blocks == 8 and bm.lru_block_ids() == [1, 0]  # 3 was never full: not cached


def test_scheduler_reuses_a_shared_two_block_prefix():
    sched, bm = make_scheduler(prefix_caching=True)
    runner = FakeRunner(sched)
    prefix = list(range(500, 508))                       # two full blocks
    a = make_request("A", prefix + [1, 2, 3], max_tokens=3)
    sched.add_request(a)
    out, _ = step(sched, runner)
    assert (out.stats.prefix_cache_queries, out.stats.prefix_cache_hits) == (11, 0)
    assert a.block_ids == [0, 1, 2]

    b = make_request("B", prefix + [4, 5, 6, 7, 8], max_tokens=2)
    sched.add_request(b)
    out, _ = step(sched, runner)
    (plan,) = out.scheduled_new_requests
    assert (plan.start_position, plan.num_scheduled_tokens, plan.token_ids) == (8, 5, (4, 5, 6, 7, 8))
    assert plan.block_ids == (0, 1, 3, 4) and bm.ref_count(0) == 2
    assert (out.stats.prefix_cache_queries, out.stats.prefix_cache_hits) == (13, 8)
    assert b.num_cached_tokens == 8 and scheduled(out) == {"A": 1, "B": 5}
    while sched.has_unfinished_requests():
        step(sched, runner)
    assert bm.num_free_blocks == 8 and {0, 1} <= set(bm.lru_block_ids())

    c = make_request("C", prefix + [9], max_tokens=1)     # after both finished: reused from the LRU list
    sched.add_request(c)
    out, _ = step(sched, runner)
    (plan,) = out.scheduled_new_requests
    assert (plan.start_position, plan.block_ids[:2]) == (8, (0, 1))
    assert (bm.prefix_cache_queries, bm.prefix_cache_hits) == (11 + 13 + 9, 16)
    assert bm.num_free_blocks == 8


def test_preempted_request_finds_its_own_blocks_on_resume():
    # Two requests in a 4-block cache; A's growth squeezes B out after B made progress. (B is no
    # longer admitted into the last block only to be preempted in the next step: admission keeps
    # headroom for A's next token, see test_scheduler_thrash.)
    sched, bm = make_scheduler(num_blocks=4, prefix_caching=True, max_model_len=16)
    runner = FakeRunner(sched)
    a = make_request("A", 3, max_tokens=8, arrival_time=0.0)
    b = make_request("B", 3, max_tokens=8, arrival_time=1.0)
    sched.add_request(a)
    sched.add_request(b)
    assert scheduled(step(sched, runner)[0]) == {"A": 3, "B": 3}  # A [0], B [1]
    for _ in range(5):                       # positions 4..7 open a second block each: A [0, 2], B [1, 3]
        out, _ = step(sched, runner)
    assert (a.block_ids, b.block_ids, bm.num_free_blocks) == ([0, 2], [1, 3], 0)
    out, _ = step(sched, runner)             # A's position 8 needs a block: B (newest) preempted
    assert out.preempted_request_ids == ("B",) and scheduled(out) == {"A": 1}
    assert a.block_ids == [0, 2, 3]          # B's tail block, freed first, evicted first
    assert bm.lru_block_ids() == [1]         # B's first full computed block stays findable
    while a.status == RequestStatus.RUNNING:
        step(sched, runner)
    out, _ = step(sched, runner)
    (plan,) = out.scheduled_new_requests
    assert plan.request_id == "B" and plan.start_position == 4 and plan.block_ids[0] == 1
    while sched.has_unfinished_requests():
        step(sched, runner)
    assert b.num_output_tokens == 8 and bm.num_free_blocks == 4
