"""Independent, pure-Python Ed25519 / Ed25519ph (RFC 8032 section 5.1) for tests.

Written from the RFC's math so the live-API fake (tests/support/live_api.py) does not verify our
agent's signatures with the same library the agent signs with (pycryptodome). Slow (a few ms per
operation) and not constant-time: test use only, never for real keys.

Verification follows what the live server does (ed25519-dalek `verify_prehashed` in
common/src/dcc_identity.rs): S must be below L, A must decode, and the encoding of
[S]B - [k]A must equal the R bytes of the signature (cofactorless check).
"""

from __future__ import annotations

import hashlib

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)

Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, xy = T/Z


def _recover_x(y: int, sign: int) -> int | None:
    """x from y and the sign bit (RFC 8032 5.1.3 steps 2-4); None when no such point."""
    if y >= P:
        return None
    u = (y * y - 1) % P
    v = (D * y * y + 1) % P
    x = (u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P)) % P
    vx2 = (v * x * x) % P
    if vx2 == u:
        pass
    elif vx2 == (-u) % P:
        x = (x * SQRT_M1) % P
    else:
        return None
    if x == 0 and sign == 1:
        return None
    if x & 1 != sign:
        x = P - x
    return x


_BY = (4 * pow(5, P - 2, P)) % P
_BX = _recover_x(_BY, 0)
assert _BX is not None
BASE: Point = (_BX, _BY, 1, (_BX * _BY) % P)
IDENTITY: Point = (0, 1, 1, 0)


def _add(p: Point, q: Point) -> Point:
    """Point addition in extended coordinates (RFC 8032 5.1.4)."""
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = ((y1 - x1) * (y2 - x2)) % P
    b = ((y1 + x1) * (y2 + x2)) % P
    c = (t1 * 2 * D * t2) % P
    d = (z1 * 2 * z2) % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return ((e * f) % P, (g * h) % P, (f * g) % P, (e * h) % P)


def _mul(s: int, p: Point) -> Point:
    """[s]p by double-and-add."""
    q = IDENTITY
    while s > 0:
        if s & 1:
            q = _add(q, p)
        p = _add(p, p)
        s >>= 1
    return q


def _neg(p: Point) -> Point:
    x, y, z, t = p
    return ((-x) % P, y, z, (-t) % P)


def encode_point(p: Point) -> bytes:
    """RFC 8032 5.1.2: little-endian y with the low bit of x in the top bit."""
    x, y, z, _ = p
    zinv = pow(z, P - 2, P)
    x, y = (x * zinv) % P, (y * zinv) % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def decode_point(data: bytes) -> Point | None:
    """RFC 8032 5.1.3; None for a string that is not a curve point."""
    if len(data) != 32:
        return None
    value = int.from_bytes(data, "little")
    y = value & ((1 << 255) - 1)
    x = _recover_x(y, value >> 255)
    if x is None:
        return None
    return (x, y, 1, (x * y) % P)


def _dom2(phflag: int, context: bytes) -> bytes:
    if len(context) > 255:
        raise ValueError("context longer than 255 bytes")
    return b"SigEd25519 no Ed25519 collisions" + bytes([phflag, len(context)]) + context


def _h_int(*parts: bytes) -> int:
    return int.from_bytes(hashlib.sha512(b"".join(parts)).digest(), "little")


def _expand(seed: bytes) -> tuple[int, bytes]:
    """Secret scalar and prefix from a 32-byte seed (RFC 8032 5.1.5)."""
    if len(seed) != 32:
        raise ValueError("an Ed25519 seed is 32 bytes")
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little")
    a &= (1 << 254) - 8
    a |= 1 << 254
    return a, h[32:]


def public_key(seed: bytes) -> bytes:
    """The 32-byte public key of a 32-byte seed."""
    a, _ = _expand(seed)
    return encode_point(_mul(a, BASE))


def _sign(seed: bytes, message: bytes, dom: bytes) -> bytes:
    a, prefix = _expand(seed)
    pub = encode_point(_mul(a, BASE))
    r = _h_int(dom, prefix, message) % L
    r_enc = encode_point(_mul(r, BASE))
    k = _h_int(dom, r_enc, pub, message) % L
    s = (r + k * a) % L
    return r_enc + s.to_bytes(32, "little")


def _verify(pub: bytes, message: bytes, signature: bytes, dom: bytes) -> bool:
    if len(signature) != 64 or len(pub) != 32:
        return False
    a_point = decode_point(pub)
    if a_point is None:
        return False
    r_enc, s = signature[:32], int.from_bytes(signature[32:], "little")
    if s >= L:
        return False
    k = _h_int(dom, r_enc, pub, message) % L
    check = _add(_mul(s, BASE), _neg(_mul(k, a_point)))
    return encode_point(check) == r_enc


def sign_ed25519(seed: bytes, message: bytes) -> bytes:
    """Plain Ed25519 (no dom prefix, no prehash)."""
    return _sign(seed, message, b"")


def verify_ed25519(pub: bytes, message: bytes, signature: bytes) -> bool:
    """Plain Ed25519 verification."""
    return _verify(pub, message, signature, b"")


def sign_ed25519ph(seed: bytes, message: bytes, context: bytes = b"") -> bytes:
    """Ed25519ph: SHA-512 prehash of the message, dom2(phflag=1, context)."""
    return _sign(seed, hashlib.sha512(message).digest(), _dom2(1, context))


def verify_ed25519ph(pub: bytes, message: bytes, signature: bytes, context: bytes = b"") -> bool:
    """Ed25519ph verification of `message` (prehashed here) under `context`."""
    return _verify(pub, hashlib.sha512(message).digest(), signature, _dom2(1, context))
