"""MD5 (RFC 1321) resumable from an intermediate state, for CRAM-MD5 without passwords.

HMAC-MD5 (RFC 2104) begins by hashing one 64-byte block, the key XOR ipad (inner) or XOR
opad (outer). The state MD5 reaches after that block depends only on the password, so a
server can store the two states instead of the password and still compute
HMAC-MD5(password, challenge) later: this is how Dovecot's ``CRAM-MD5`` password scheme
works. Python's `hashlib` and `hmac` cannot export or import an MD5 state, so this module
implements MD5's compression function (RFC 1321 §3.4) and its padding (§3.1, §3.2).

Only tiny inputs pass through here (one key block, a challenge, a 16-byte digest), so plain
Python speed is ample. Tests check every function against `hashlib.md5` and `hmac`.
"""

from __future__ import annotations

import math
import struct
from typing import Final

__all__ = ["BLOCK", "IV", "State", "compress", "resume", "state_from_bytes", "state_to_bytes"]

State = tuple[int, int, int, int]

BLOCK: Final = 64
IV: Final[State] = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)  # RFC 1321 §3.3
_MASK: Final = 0xFFFFFFFF

# RFC 1321 §3.4: T[i] is the integer part of 2**32 * abs(sin(i)), i in radians, 1..64.
_T: Final = tuple(int(abs(math.sin(i + 1)) * 2**32) & _MASK for i in range(64))
_SHIFTS: Final = (
    (7, 12, 17, 22) * 4 + (5, 9, 14, 20) * 4 + (4, 11, 16, 23) * 4 + (6, 10, 15, 21) * 4
)
# Which message word each of the 64 operations reads, round by round (§3.4).
_WORD: Final = tuple(
    i if i < 16 else (5 * i + 1) % 16 if i < 32 else (3 * i + 5) % 16 if i < 48 else (7 * i) % 16
    for i in range(64)
)


def compress(state: State, block: bytes) -> State:
    """Process one 64-byte block (RFC 1321 §3.4)."""
    assert len(block) == BLOCK
    x = struct.unpack("<16I", block)
    a, b, c, d = state
    for i in range(64):
        if i < 16:
            f = (b & c) | (~b & d)
        elif i < 32:
            f = (b & d) | (c & ~d)
        elif i < 48:
            f = b ^ c ^ d
        else:
            f = c ^ (b | (~d & _MASK))
        f = (f + a + _T[i] + x[_WORD[i]]) & _MASK
        rotated = ((f << _SHIFTS[i]) | (f >> (32 - _SHIFTS[i]))) & _MASK
        a, d, c, b = d, c, b, (b + rotated) & _MASK
    return (
        (state[0] + a) & _MASK,
        (state[1] + b) & _MASK,
        (state[2] + c) & _MASK,
        (state[3] + d) & _MASK,
    )


def resume(state: State, data: bytes, done: int) -> bytes:
    """The MD5 digest of a message whose first `done` bytes (a multiple of 64) left MD5
    in `state`, and whose remaining bytes are `data`."""
    assert done % BLOCK == 0
    total = done + len(data)
    # §3.1, §3.2: a 1 bit, zeros up to 56 mod 64, then the length in bits, little-endian.
    padded = data + b"\x80" + b"\0" * ((55 - total) % BLOCK) + struct.pack("<Q", total * 8)
    for offset in range(0, len(padded), BLOCK):
        state = compress(state, padded[offset : offset + BLOCK])
    return state_to_bytes(state)


def state_to_bytes(state: State) -> bytes:
    """The four state words, little-endian (also the digest's byte order, §3.5)."""
    return struct.pack("<4I", *state)


def state_from_bytes(data: bytes) -> State:
    """Inverse of `state_to_bytes`."""
    a, b, c, d = struct.unpack("<4I", data)
    return (a, b, c, d)
