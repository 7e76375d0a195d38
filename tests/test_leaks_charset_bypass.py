"""Attack (fixed): text masking reads bytes as if ASCII-compatible. A text body
declared in a charset that is not (UTF-16, UTF-32, EBCDIC cp500) - or one
that starts with a UTF-16 byte-order mark, which decoders following the
WHATWG Encoding standard obey over the header - passes unmasked: no
detector matches `a\\0l\\0i\\0c\\0e\\0@\\0...`. A JSON body in UTF-16 is
refused (502 unmaskable_body), so only the text path fails open.
Triggers: documents stored/served in their original encoding, or content
negotiation of the charset (`Accept: text/plain;charset=UTF-16`,
`Accept-Charset`, honoured e.g. by Spring's StringHttpMessageConverter
and JAX-RS).

Expected: decode declared/BOM-detected charsets before masking, or refuse
a text body whose charset is not UTF-8/ASCII-compatible (502), like the
JSON path does."""
import http.client

import pytest
from leak_upstream import stack_fixture, token

TXT = "Customer alice.smith@example.com card 4111 1111 1111 1111 SSN 219-09-9999"


stack = stack_fixture()


@pytest.mark.parametrize("ctype,codec,bom", [
    ("text/plain; charset=utf-8", "utf-8", b""),          # control: masked
    ("text/plain; charset=utf-16", "utf-16", b""),        # python adds a BOM
    ("text/plain; charset=utf-16le", "utf-16-le", b""),
    ("text/plain; charset=utf-32", "utf-32", b""),
    ("text/plain; charset=ibm500", "cp500", b""),
    ("text/plain", "utf-16-le", b"\xff\xfe"),             # BOM only
])
def test_text_in_other_charsets_is_masked_or_refused(stack, ctype, codec, bom):
    env, up = stack
    body = bom + TXT.encode(codec)
    up.respond = lambda h, req: h.reply(200, body, ctype)
    try:
        code, headers, out = env.request("GET", "/collections/docs/points/1", [("authorization", "Bearer " + token())])
    except http.client.IncompleteRead as e:
        # a streamed body: the headers went out, so the stream is reset (no byte of it passes)
        assert e.partial == b"" and bom, f"{ctype}: reset after {e.partial!r}"
        return
    if code != 200:
        assert code == 502
        return
    payload = out[len(bom):] if bom and out.startswith(bom) else out
    try:
        text = payload.decode(codec)
    except UnicodeDecodeError:
        text = ""
    assert "alice.smith@example.com" not in text and "4111 1111 1111 1111" not in text, f"{ctype}: unmasked {text!r}"
