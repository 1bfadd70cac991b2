"""Scheduling policy behind one tiny interface: the waiting queue decides who goes next.

Contract:
- `RequestQueue` is the whole policy surface the scheduler sees: `add`, `prepend` (a preempted
  request going back), `peek`/`pop` the next request to admit, `remove`, `len`, iteration in
  service order, and `victim(running)`: which running request to preempt when KV blocks run out
  (the one this policy would serve last). The BlockManager never sees a queue.
- `FCFSQueue`: arrival order; `prepend` really puts the request at the front, so a preempted
  request resumes before anything that arrived after it was admitted. Victim: the newest arrival.
- `PriorityQueue`: lower `priority` value first, ties by arrival time, then by insertion.
  `prepend` is `add`: a resumed request is ordered by its own (priority, arrival), which already
  puts it ahead of later arrivals of equal priority, while a more urgent request still goes first.
  Victim: the least urgent (highest priority value), newest arrival among equals.
- `make_queue(policy)` maps `SchedulerConfig.policy` ("fcfs" | "priority") to a queue.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Protocol

from aisp.engine.request import Request

__all__ = ["POLICIES", "FCFSQueue", "PriorityQueue", "RequestQueue", "make_queue"]


class RequestQueue(Protocol):
    """Waiting requests in service order, plus the matching preemption choice."""

    def add(self, request: Request) -> None: ...
    def prepend(self, request: Request) -> None: ...
    def peek(self) -> Request: ...
    def pop(self) -> Request: ...
    def remove(self, request: Request) -> None: ...
    def victim(self, running: Sequence[Request]) -> Request: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Request]: ...


def _last_max(running: Sequence[Request], key) -> Request:
    """The running request with the largest key; on ties the later one in `running`."""
    if not running:
        raise IndexError("no running request to preempt")
    best = running[0]
    for request in running[1:]:
        if key(request) >= key(best):
            best = request
    return best


class FCFSQueue:
    """First come, first served; preempted requests go back to the front."""

    def __init__(self) -> None:
        self._queue: deque[Request] = deque()

    def add(self, request: Request) -> None:
        self._queue.append(request)

    def prepend(self, request: Request) -> None:
        self._queue.appendleft(request)

    def peek(self) -> Request:
        if not self._queue:
            raise IndexError("peek from an empty queue")
        return self._queue[0]

    def pop(self) -> Request:
        if not self._queue:
            raise IndexError("pop from an empty queue")
        return self._queue.popleft()

    def remove(self, request: Request) -> None:
        self._queue.remove(request)  # ValueError if absent: the caller's bookkeeping is wrong

    def victim(self, running: Sequence[Request]) -> Request:
        return _last_max(running, key=lambda r: r.arrival_time)

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[Request]:
        return iter(list(self._queue))


class PriorityQueue:
    """Lower `priority` value first; ties by arrival time, then insertion order."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, float, int, Request]] = []
        self._counter = itertools.count()  # breaks exact ties without comparing Requests

    def add(self, request: Request) -> None:
        heapq.heappush(self._heap, (request.priority, request.arrival_time, next(self._counter), request))

    def prepend(self, request: Request) -> None:
        self.add(request)  # see the module docstring: order is by (priority, arrival) anyway

    def peek(self) -> Request:
        if not self._heap:
            raise IndexError("peek from an empty queue")
        return self._heap[0][3]

    def pop(self) -> Request:
        if not self._heap:
            raise IndexError("pop from an empty queue")
        return heapq.heappop(self._heap)[3]

    def remove(self, request: Request) -> None:
        for i, entry in enumerate(self._heap):
            if entry[3] is request:
                self._heap[i] = self._heap[-1]
                self._heap.pop()
                heapq.heapify(self._heap)
                return
        raise ValueError(f"request {request.request_id!r} is not in the queue")

    def victim(self, running: Sequence[Request]) -> Request:
        return _last_max(running, key=lambda r: (r.priority, r.arrival_time))

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[Request]:
        return (entry[3] for entry in sorted(self._heap, key=lambda e: e[:3]))


POLICIES = {"fcfs": FCFSQueue, "priority": PriorityQueue}


def make_queue(policy: str) -> RequestQueue:
    """The queue implementing `policy`; unknown names list the valid ones."""
    try:
        return POLICIES[policy]()
    except KeyError:
        raise ValueError(f"unknown scheduling policy {policy!r}; valid policies are {sorted(POLICIES)}") from None
