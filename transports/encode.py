"""Sans-IO RFC 6455 frame encoding for the client side of a WebSocket.

What a client puts on the wire: the opcodes, which close codes may appear in a
close frame, masking, and the ``encode_*`` functions that build (masked)
frames. The decoder for what the server sends is :mod:`transports.frames`,
which re-exports every name of this module. No I/O, standard library only.
"""

from __future__ import annotations

import os
import struct

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "VALID_CLOSE_CODES",
    "encode_close",
    "encode_frame",
    "encode_masked",
    "is_valid_close_code",
    "mask_payload",
]

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

#: Close codes a peer may put on the wire (RFC 6455 7.4.1/7.4.2 and the IANA
#: registry): 1004 is reserved, 1005/1006/1015 are local-only, 1016-2999 are
#: unassigned protocol codes, 3000-4999 belong to libraries and applications.
VALID_CLOSE_CODES = frozenset((*range(1000, 1004), *range(1007, 1015), *range(3000, 5000)))

_pack_h = struct.Struct("!BBH").pack
_pack_q = struct.Struct("!BBQ").pack
_pack_code = struct.Struct("!H").pack


def is_valid_close_code(code: int) -> bool:
    """Whether ``code`` may appear in a close frame on the wire (RFC 6455 7.4).

    Valid: 1000-1003, 1007-1014, 3000-4999. Everything else, including the
    reserved 1004 and the local-only 1005, 1006 and 1015, is invalid.
    """
    return code in VALID_CLOSE_CODES


def mask_payload(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``key`` repeated (RFC 6455 5.3).

    Masking is its own inverse, so this also unmasks. One big-integer XOR
    over the whole payload: C speed, no per-byte Python loop.
    """
    if len(key) != 4:
        raise ValueError("mask key must be 4 bytes")
    return _mask(payload, bytes(key))


_from = int.from_bytes


def _mask(payload: bytes, key: bytes) -> bytes:
    """:func:`mask_payload` without its checks (``key``: 4 bytes, a ``bytes``): ~0.35 us on 80 bytes."""
    n = len(payload)
    if not n:
        return b""
    return (_from(payload, "little") ^ _from((key * ((n + 3) >> 2))[:n], "little")).to_bytes(n, "little")


def encode_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    mask: bool = True,
    mask_key: bytes | None = None,
) -> bytes:
    """Build one frame, masked as a client must send it (RFC 6455 5.2, 5.3).

    The key is ``os.urandom(4)`` unless ``mask_key`` is given; ``mask=False``
    gives an unmasked frame, as a server sends (used by test servers). The
    shortest length encoding is used. Control-frame rules (FIN set, payload
    <= 125 bytes) are the caller's business, so tests can build bad frames.
    """
    if not 0 <= opcode <= 0xF:
        raise ValueError(f"opcode {opcode!r} out of range 0-15")
    header = _header(opcode | 0x80 if fin else opcode, 0x80 if mask else 0, len(payload))
    if not mask:
        return header + payload
    if mask_key is None:
        key = os.urandom(4)
    elif type(mask_key) is bytes and len(mask_key) == 4:
        key = mask_key
    else:
        if len(mask_key) != 4:
            raise ValueError("mask key must be 4 bytes")
        key = bytes(mask_key)
    return header + key + _mask(payload, key)


def encode_masked(opcode: int, payload: bytes, key: bytes) -> bytes:
    """:func:`encode_frame` of a final frame masked with ``key`` (4 bytes, a ``bytes``), unchecked.

    What the client's data sends use: the checks and keyword handling of
    :func:`encode_frame` are ~40 % of its cost on a small frame.
    """
    n = len(payload)
    if n < _SMALL:
        # (the usual request) The text header comes from a table, and the key
        # over the payload is one multiplication by 0x...0000000100000001, cut to
        # n bytes, not a bytes repeat, a slice and a parse: ~25 % of this function.
        head = _TEXT_HEADS[n] if opcode == OP_TEXT else bytes((0x80 | opcode, 0x80 | n))
        spread = _from(key, "little") * _REPEAT[(n + 3) >> 2] & _LOW[n]
        return head + key + (_from(payload, "little") ^ spread).to_bytes(n, "little")
    return _header(0x80 | opcode, 0x80, n) + key + _mask(payload, key)


#: payloads below this length have a 7-bit length: encode_masked's tables cover them
_SMALL = 126
_TEXT_HEADS = tuple(bytes((0x80 | OP_TEXT, 0x80 | n)) for n in range(_SMALL))
#: _REPEAT[k]: k little-endian 32-bit ones (a 4-byte key times it is the key k times)
_REPEAT = tuple(sum(1 << (32 * i) for i in range(k)) for k in range((_SMALL + 3) // 4 + 1))
_LOW = tuple((1 << (8 * n)) - 1 for n in range(_SMALL))


def _header(b0: int, mbit: int, n: int) -> bytes:
    """The first two bytes and the extended length: the shortest length encoding."""
    if n < 126:
        return bytes((b0, mbit | n))
    if n < 0x10000:
        return _pack_h(b0, mbit | 126, n)
    return _pack_q(b0, mbit | 127, n)


def encode_close(
    code: int | None = 1000,
    reason: str = "",
    *,
    mask: bool = True,
    mask_key: bytes | None = None,
) -> bytes:
    """Build a close frame; ``code=None`` gives an empty close payload.

    The reason is cut to 123 UTF-8 bytes (on a character boundary) so the
    frame stays a legal 125-byte control frame: failure paths that echo a
    long reason must not raise. The code itself is not checked (test servers
    send invalid ones); see :func:`is_valid_close_code`.
    """
    if code is None:
        if reason:
            raise ValueError("a close reason needs a close code")
        payload = b""
    else:
        raw = reason.encode("utf-8")
        if len(raw) > 123:
            raw = raw[:123].decode("utf-8", "ignore").encode("utf-8")
        payload = _pack_code(code) + raw
    return encode_frame(OP_CLOSE, payload, mask=mask, mask_key=mask_key)
