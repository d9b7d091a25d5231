"""The resumable MD5 behind stored CRAM-MD5 credentials, checked against hashlib/hmac."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given, settings
from hypothesis import strategies as st

from sansmail.sasl import _md5, derive_cram_md5_credentials
from sansmail.sasl._cram_md5 import _hmac_from_states


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=300))
def test_md5_from_the_start_is_md5(data: bytes) -> None:
    assert _md5.resume(_md5.IV, data, 0) == hashlib.md5(data).digest()


@settings(deadline=None, max_examples=200)
@given(blocks=st.integers(min_value=1, max_value=3), head=st.data(), tail=st.binary(max_size=200))
def test_resuming_after_whole_blocks(blocks: int, head: st.DataObject, tail: bytes) -> None:
    prefix = head.draw(st.binary(min_size=64 * blocks, max_size=64 * blocks))
    state = _md5.IV
    for offset in range(0, len(prefix), 64):
        state = _md5.compress(state, prefix[offset : offset + 64])
    assert _md5.resume(state, tail, len(prefix)) == hashlib.md5(prefix + tail).digest()


@settings(deadline=None, max_examples=100)
@given(st.tuples(*[st.integers(min_value=0, max_value=2**32 - 1)] * 4))
def test_state_bytes_round_trip(state: tuple[int, int, int, int]) -> None:
    assert _md5.state_from_bytes(_md5.state_to_bytes(state)) == state


def test_md5_rfc1321_suite() -> None:
    # RFC 1321 §A.5 test suite.
    for text, digest in [
        (b"", "d41d8cd98f00b204e9800998ecf8427e"),
        (b"abc", "900150983cd24fb0d6963f7d28e17f72"),
        (b"message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
        (
            b"12345678901234567890123456789012345678901234567890123456789012345678901234567890",
            "57edf4a22be3c955ac49da2e2107b67a",
        ),
    ]:
        assert _md5.resume(_md5.IV, text, 0).hex() == digest


def test_hmac_md5_rfc2104_vector() -> None:
    # RFC 2104 appendix / RFC 2202 test case 2, through the stored-state path.
    creds = derive_cram_md5_credentials("Jefe")
    mac = _hmac_from_states(creds, b"what do ya want for nothing?")
    assert mac.hex() == "750c783e6ab0b503eaa86e310a5db738"
    assert mac == hmac.new(b"Jefe", b"what do ya want for nothing?", "md5").digest()
