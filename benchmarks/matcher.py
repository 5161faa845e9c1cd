"""Micro-benchmarks of the request matcher (engine/requests.py), for benchmarks/micro.py.

``Requests.offer(message)`` is what the reader calls for every data message
while a request is pending: one ``response_key(message)`` (by default
:func:`engine.requests.json_id`, an ``orjson.loads``) and one dict lookup.
Two rows: a message that answers the pending request, and a ~200-byte data
message that does not (the per-message tax on a stream while a request waits).
"""

from __future__ import annotations

import time

import anyio

from benchmarks.blast import make_message
from benchmarks.micro import register
from engine.requests import Requests, json_id

__all__ = ["offer_answer_ns", "offer_data_ns"]


async def _offer_answer(n: int) -> float:
    requests = Requests(json_id, "bench", anyio.current_time)
    answers = [f'{{"id":{k},"result":{{"status":"filled"}}}}' for k in range(n)]
    total = 0
    for k, answer in enumerate(answers):
        requests.register(k)
        t0 = time.perf_counter_ns()
        requests.offer(answer)
        total += time.perf_counter_ns() - t0
    return total / n


async def _offer_data(n: int) -> float:
    requests = Requests(json_id, "bench", anyio.current_time)
    requests.register("never-answered")
    data = [make_message(k).decode() for k in range(1000)]
    offer = requests.offer
    t0 = time.perf_counter_ns()
    for _ in range(n // 1000):
        for message in data:
            offer(message)
    return (time.perf_counter_ns() - t0) / (n // 1000 * 1000)


@register("matcher lookup", "engine/requests.py: Requests.offer of the response to a pending request (json_id + dict)")
def offer_answer_ns(quick: bool) -> float:
    """ns to match one response (its registration not counted)."""
    return float(anyio.run(_offer_answer, 20_000 if quick else 200_000))


@register("matcher, non-answer", "engine/requests.py: Requests.offer of a ~200 B data message while 1 request waits")
def offer_data_ns(quick: bool) -> float:
    """ns per data message offered (and not matched) while one request is pending."""
    return float(anyio.run(_offer_data, 100_000 if quick else 1_000_000))
