"""Attack (fixed; was documented behaviour, but client-controlled): the job picks the
response media type with `Accept`, and types outside `content_types` pass
unmasked. Against a content-negotiating backend (Django REST framework's
browsable API answers `text/html` by default; Spring/Jackson XML, Rails
`respond_to`, `?format=csv` endpoints) a reader gets the same records
unmasked by asking for text/html, text/csv or XML.

Expected (either): the filter pins `Accept` on masked resources to the
listed types, or refuses (502 unmaskable_content_type) a body of an
unlisted type that the request asked for. At minimum: no PII reaches the job."""
import json
import pytest
from leak_upstream import stack_fixture, token

DOC_J = json.dumps({"name": "Alice Smith", "email": "alice.smith@example.com"}).encode()


def negotiate(h, req):
    acc = h.headers.get("accept", "")
    if "text/html" in acc:
        return h.reply(200, b"<html><body><pre>alice.smith@example.com</pre></body></html>", "text/html; charset=utf-8")
    if "text/csv" in acc:
        return h.reply(200, b"name,email\nAlice Smith,alice.smith@example.com\n", "text/csv")
    if "xml" in acc:
        return h.reply(200, b"<r><email>alice.smith@example.com</email></r>", "application/xml")
    return h.reply(200, DOC_J, "application/json")


stack = stack_fixture(respond=negotiate)


@pytest.mark.parametrize("accept", ["application/json", "text/html", "text/csv", "application/xml"])
def test_accept_cannot_choose_an_unmasked_type(stack, accept):
    env, _ = stack
    code, headers, body = env.request("GET", "/collections/docs/points/1",
                                      [("authorization", "Bearer " + token()), ("accept", accept)])
    assert b"alice.smith@example.com" not in body, f"{code} {headers.get('content-type')}: {body!r}"
