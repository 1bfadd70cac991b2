"""Scheduling policies: FCFS and priority queues behind one interface, and their preemption victims."""

from __future__ import annotations

import pytest

from aisp.engine.queues import FCFSQueue, PriorityQueue, make_queue

from tests.engine.engine_fakes import make_request


def reqs():
    return [make_request(rid, 2, arrival_time=t, priority=p)
            for rid, t, p in (("a", 0.0, 2), ("b", 1.0, 0), ("c", 2.0, 2), ("d", 3.0, 0))]


def names(queue) -> list[str]:
    return [r.request_id for r in queue]


def test_fcfs_order_prepend_remove():
    q = FCFSQueue()
    a, b, c, d = reqs()
    for r in (a, b, c):
        q.add(r)
    q.prepend(d)  # a preempted request goes back to the front
    assert names(q) == ["d", "a", "b", "c"] and len(q) == 4 and q.peek() is d
    q.remove(b)
    assert q.pop() is d and names(q) == ["a", "c"]
    assert q.victim([a, b, c, d]) is d  # newest arrival
    with pytest.raises(ValueError):
        q.remove(b)


def test_priority_order_ties_by_arrival_and_victim():
    q = PriorityQueue()
    a, b, c, d = reqs()
    for r in (c, d, a, b):
        q.add(r)
    assert names(q) == ["b", "d", "a", "c"] and q.peek() is b
    q.remove(c)
    q.prepend(c)  # ordered by its own (priority, arrival), not jammed ahead of more urgent ones
    assert names(q) == ["b", "d", "a", "c"]
    q.remove(c)
    q.remove(d)
    assert [q.pop().request_id for _ in range(len(q))] == ["b", "a"]
    assert q.victim([a, b, c, d]) is c  # least urgent (2), newest among equals
    assert q.victim([b, d]) is d
    with pytest.raises(IndexError):
        q.pop()


def test_make_queue_names_valid_policies():
    assert isinstance(make_queue("fcfs"), FCFSQueue) and isinstance(make_queue("priority"), PriorityQueue)
    with pytest.raises(ValueError, match=r"unknown scheduling policy 'lifo'; valid policies are \['fcfs', 'priority'\]"):
        make_queue("lifo")
