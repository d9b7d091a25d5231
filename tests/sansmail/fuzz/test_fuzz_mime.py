"""Fuzzing MIME structure beyond tests/sansmail/mime/test_mime_properties.py: for
messages built from MIME-shaped pieces, the ENVELOPE and BODYSTRUCTURE trees encode for
the wire and survive the store's cache (encode_tree/decode_tree) unchanged, and every
section of every part the tree has (and some it has not) can be asked for."""

from __future__ import annotations

from fuzz_drivers import check_mime
from hypothesis import given, settings
from hypothesis import strategies as st

PIECES = [
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b'Content-Type: multipart/alternative; boundary="c d"\r\n',
    b"Content-Type: multipart/digest; boundary=b\r\n",
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: message/global\r\n",
    b'Content-Type: text/plain; charset="utf-8"; format=flowed\r\n',
    b"Content-Type: text/plain; name*0*=utf-8''%E2%82%AC; name*1=x\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"Content-Transfer-Encoding: x-uuencode\r\n",
    b'Content-Disposition: attachment; filename="a.txt"\r\n',
    b"Content-Language: en, fr\r\n",
    b"Content-Location: http://x/\r\n",
    b"Content-ID: <id@x>\r\n",
    b'From: "A, B" <a@b.example>, group: c@d.example;\r\n',
    b"To: undisclosed-recipients:;\r\n",
    b"Subject: =?utf-8?b?w6k=?= =?iso-8859-1?q?=E9?=\r\n",
    b"Date: Mon, 7 Dec 2026 10:00:00 +0000\r\n",
    b"Message-ID: <a@b>\r\n",
    b" folded\r\n",
    b"\r\n",
    b"--b\r\n",
    b"--c d\r\n",
    b"--b--\r\n",
    b"--c d--\r\n",
    b"SGVsbG8=\r\n",
    b"caf=C3=A9=\r\n",
    b"body line\r\n",
    b"\xff\xfe\x00\r\n",
    b"\n",
]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(PIECES), st.binary(max_size=8)), max_size=40))
def test_structure_encodes_and_every_section_is_served(pieces: list[bytes]) -> None:
    check_mime(b"".join(pieces))
