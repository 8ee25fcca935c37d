"""The independent Ed25519ph verifier agrees with RFC 8032 and with pycryptodome's signer."""

from __future__ import annotations

from Crypto.Hash import SHA512
from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa

from tests.support import ed25519ph_ref as ref

# RFC 8032 section 7.3, "TEST abc" (Ed25519ph, empty context).
RFC_SEED = bytes.fromhex("833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42")
RFC_PUB = bytes.fromhex("ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf")
RFC_SIG = bytes.fromhex(
    "98a70222f0b8121aa9d30f813d683f809e462b469c7ff87639499bb94e6dae41"
    "31f85042463c2a355a2003d062adf5aaa10b8c61e636062aaad11c2a26083406"
)
# RFC 8032 section 7.1, "TEST 1" (plain Ed25519, empty message).
RFC1_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC1_PUB = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC1_SIG = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
    "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)
CONTEXT = b"decent-cloud"
SEED = bytes(range(32))
MESSAGE = b"1700000000000000000" + b"0f8fad5b-d9cb-469f-a165-70867728950e" + b"GET/api/v1/providers/ab/heartbeat"


def _pycryptodome_ph(seed: bytes, message: bytes, context: bytes) -> bytes:
    key = ECC.construct(curve="Ed25519", seed=seed)
    return eddsa.new(key, "rfc8032", context=context).sign(SHA512.new(message))


def test_rfc8032_ed25519ph_vector_abc() -> None:
    assert ref.public_key(RFC_SEED) == RFC_PUB
    assert ref.sign_ed25519ph(RFC_SEED, b"abc") == RFC_SIG
    assert ref.verify_ed25519ph(RFC_PUB, b"abc", RFC_SIG)
    assert not ref.verify_ed25519ph(RFC_PUB, b"abd", RFC_SIG)


def test_rfc8032_plain_ed25519_vector() -> None:
    assert ref.public_key(RFC1_SEED) == RFC1_PUB
    assert ref.sign_ed25519(RFC1_SEED, b"") == RFC1_SIG
    assert ref.verify_ed25519(RFC1_PUB, b"", RFC1_SIG)


def test_pycryptodome_ed25519ph_with_context_verifies() -> None:
    pub = ref.public_key(SEED)
    signature = _pycryptodome_ph(SEED, MESSAGE, CONTEXT)
    assert signature == ref.sign_ed25519ph(SEED, MESSAGE, CONTEXT)
    assert ref.verify_ed25519ph(pub, MESSAGE, signature, CONTEXT)


def test_wrong_context_plain_signature_and_tampering_fail() -> None:
    pub = ref.public_key(SEED)
    good = _pycryptodome_ph(SEED, MESSAGE, CONTEXT)
    plain = eddsa.new(ECC.construct(curve="Ed25519", seed=SEED), "rfc8032").sign(MESSAGE)
    assert ref.verify_ed25519(pub, MESSAGE, plain)
    assert not ref.verify_ed25519ph(pub, MESSAGE, plain, CONTEXT)
    assert not ref.verify_ed25519ph(pub, MESSAGE, good, b"decent-cloud2")
    assert not ref.verify_ed25519ph(pub, MESSAGE, good, b"")
    assert not ref.verify_ed25519ph(pub, MESSAGE + b"x", good, CONTEXT)
    flipped = bytes([good[0] ^ 1]) + good[1:]
    assert not ref.verify_ed25519ph(pub, MESSAGE, flipped, CONTEXT)


def test_s_not_below_l_and_bad_point_are_refused() -> None:
    pub = ref.public_key(SEED)
    good = ref.sign_ed25519ph(SEED, MESSAGE, CONTEXT)
    s = int.from_bytes(good[32:], "little")
    malleated = good[:32] + (s + ref.L).to_bytes(32, "little")
    assert not ref.verify_ed25519ph(pub, MESSAGE, malleated, CONTEXT)
    # y = 2 has no x on the curve (RFC 8032 5.1.3 decoding fails).
    assert ref.decode_point((2).to_bytes(32, "little")) is None
    assert not ref.verify_ed25519ph((2).to_bytes(32, "little"), MESSAGE, good, CONTEXT)
