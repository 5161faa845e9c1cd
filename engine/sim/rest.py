"""The simulated exchange's one REST endpoint: the order book snapshot, on the WebSocket port.

``GET /book?symbol=BTC-USD[&depth=50]`` (a request without ``Upgrade:
websocket``) is answered with ``200`` and the JSON of
:meth:`~engine.sim.exchange.SimExchange.book_snapshot` (the ``book``
channel's snapshot shape, with its ``seq``), then the connection closes.
An unknown symbol gives 404, a bad depth 400, another method 405; all with
a JSON body ``{"code":...,"message":...}``. Other requests are not this
module's (None): the WebSocket handshake answers them (400 for plain HTTP).
Pure functions: bytes in, bytes out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

__all__ = ["is_plain_http", "respond"]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


def is_plain_http(head: bytes) -> bool:
    """True for an HTTP request that does not ask for a WebSocket upgrade."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"upgrade" and b"websocket" in value.lower():
            return False
    return True


def _response(status: int, body: dict[str, Any]) -> bytes:
    data = orjson.dumps(body)
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + data


def respond(head: bytes, snapshot: Callable[[str, int | None], dict[str, Any]]) -> bytes | None:
    """The whole HTTP response to ``head`` (None: not a REST request); ``snapshot`` raises KeyError for unknown symbols."""
    if not is_plain_http(head):
        return None
    parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
    if len(parts) != 3:
        return None
    method, target, _ = parts
    url = urlsplit(target)
    if url.path != "/book":
        return None
    if method != "GET":
        return _response(405, {"code": 405, "message": "only GET"})
    query = parse_qs(url.query)
    symbol = query.get("symbol", [""])[0]
    depth_text = query.get("depth", [""])[0]
    depth: int | None = None
    if depth_text:
        if not depth_text.isdigit() or int(depth_text) < 1:
            return _response(400, {"code": 400, "message": f"depth must be a whole number >= 1, not {depth_text!r}"})
        depth = int(depth_text)
    try:
        return _response(200, snapshot(symbol, depth))
    except KeyError:
        return _response(404, {"code": 404, "message": f"unknown symbol {symbol!r}"})
