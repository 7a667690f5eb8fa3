"""The /users/track body, the transport, and the pure classification and wait rules."""
import email.utils
import http.server
import random
import socket
import threading
import time

import orjson
import pytest

from transforms import braze_client as bc
from transforms.braze_client import (
    BrazeClient, ItemError, Response, TransportError, build_track_body, classify,
)
from transforms.retry_policy import backoff_seconds, retry_wait_seconds
from transforms.records import ATTRIBUTES, EVENTS, IDENTIFY, PURCHASES, TRACK, BrazeItem

KEY = "test-key-5f0c9d2e-never-shown"


def item(kind, n, branch=TRACK):
    return BrazeItem("s1", f"u{n}", kind, {"external_id": f"u{n}", "n": n}, (f"m{n}/0",), branch, None)


# ---------------------------------------------------------------------------------------------
# build_track_body


def test_body_groups_by_kind_and_maps_indices_back():
    items = [item(EVENTS, 0), item(ATTRIBUTES, 1, IDENTIFY), item(EVENTS, 2), item(PURCHASES, 3)]
    body, index_map = build_track_body(items)
    assert orjson.loads(body) == {
        "attributes": [{"external_id": "u1", "n": 1}],
        "events": [{"external_id": "u0", "n": 0}, {"external_id": "u2", "n": 2}],
        "purchases": [{"external_id": "u3", "n": 3}],
    }
    assert index_map == {(EVENTS, 0): 0, (ATTRIBUTES, 0): 1, (EVENTS, 1): 2, (PURCHASES, 0): 3}


def test_body_omits_empty_arrays():
    body, index_map = build_track_body([item(EVENTS, 0)])
    assert orjson.loads(body) == {"events": [{"external_id": "u0", "n": 0}]}
    assert index_map == {(EVENTS, 0): 0}
    assert build_track_body([]) == (b"{}", {})


def test_body_unknown_kind():
    with pytest.raises(ValueError, match="unknown Braze object kind 'users'"):
        build_track_body([item("users", 0)])


# ---------------------------------------------------------------------------------------------
# classify


def resp(status, body=None, headers=None, text=""):
    return Response(status, body, headers or {}, text)


PARTIAL_ERRORS = [
    {"type": "'quantity' is not valid", "input_array": "purchases", "index": 0},
    {"type": "MISSING", "input_array": "events", "index": 1},
    {"type": "junk", "input_array": "users", "index": 0},  # unknown array: ignored
    {"type": "junk", "input_array": "events", "index": -1},  # bad index: ignored
    "not an object",
]


@pytest.mark.parametrize("response, action, reason, status", [
    (resp(201, {"message": "success", "events_processed": 2}), bc.OK, "", 201),
    (resp(200, {"message": "success"}), bc.OK, "", 200),
    (resp(201, {"message": "queued"}), bc.FAIL, "braze_failed", 201),
    (resp(204, None), bc.FAIL, "braze_failed", 204),
    (resp(413, None, text="Request Entity Too Large"), bc.SPLIT, "payload_too_large", 413),
    (resp(400, {"message": "Max Input Length Exceeded"}), bc.SPLIT, "payload_too_large", 400),
    (resp(400, {"message": "Valid data must be provided", "errors": []}), bc.REJECT, "braze_rejected", 400),
    (resp(400, None, text="Error while parsing request body"), bc.REJECT, "braze_rejected", 400),
    (resp(401, {"message": "Invalid API Key"}), bc.FAIL, "braze_auth", 401),
    (resp(403, {"message": "Access Denied"}), bc.FAIL, "braze_forbidden", 403),
    (resp(404, None), bc.FAIL, "braze_not_found", 404),
    (resp(415, None), bc.FAIL, "braze_unsupported_media", 415),
    (resp(408, None), bc.RETRY, "http_408", 408),
    (resp(429, {"message": "Rate limit"}), bc.RETRY, "http_429", 429),
    (resp(500, None), bc.RETRY, "http_500", 500),
    (resp(502, None), bc.RETRY, "http_502", 502),
    (resp(503, None), bc.RETRY, "http_503", 503),
    (resp(504, None), bc.RETRY, "http_504", 504),
    (resp(301, None, {"location": "https://elsewhere/"}), bc.FAIL, "braze_unexpected_status", 301),
    (resp(409, None), bc.FAIL, "braze_unexpected_status", 409),
])
def test_classify_statuses(response, action, reason, status):
    verdict = classify(response)
    assert (verdict.action, verdict.reason, verdict.http_status) == (action, reason, status)


def test_classify_partial_success_lists_item_errors():
    verdict = classify(resp(201, {"message": "success", "errors": PARTIAL_ERRORS}))
    assert verdict.action == bc.OK
    assert verdict.item_errors == (
        ItemError("purchases", 0, "'quantity' is not valid"), ItemError("events", 1, "MISSING"))


def test_classify_all_invalid_keeps_message_and_errors():
    msg = "Valid data must be provided in the 'attributes', 'events', or 'purchases' fields."
    verdict = classify(resp(400, {"message": msg, "errors": PARTIAL_ERRORS[:2]}))
    assert verdict.action == bc.REJECT
    assert verdict.detail == msg
    assert len(verdict.item_errors) == 2


@pytest.mark.parametrize("response, rate_limited, maybe_applied", [
    (resp(429), True, False),
    (resp(408), False, False),
    (resp(500), False, True),
    (resp(502), False, False),
    (resp(503), False, False),
    (resp(504), False, True),
    (TransportError("timeout", "read timeout", True), False, True),
    (TransportError("timeout", "connect timeout", False), False, False),
    (TransportError("connection", "refused", False), False, False),
])
def test_classify_retry_flags(response, rate_limited, maybe_applied):
    verdict = classify(response)
    assert verdict.action == bc.RETRY
    assert (verdict.rate_limited, verdict.maybe_applied) == (rate_limited, maybe_applied)


def test_classify_redirect_names_location():
    verdict = classify(resp(302, None, {"location": "https://rest.fra-01.braze.eu/users/track"}))
    assert "redirects are not followed" in verdict.detail


# ---------------------------------------------------------------------------------------------
# retry_wait_seconds and backoff

NOW = 1_760_000_000.0


@pytest.mark.parametrize("headers, expected", [
    ({}, None),
    ({"Retry-After": "3"}, 3.0),
    ({"retry-after": "0.5"}, 0.5),
    ({"RETRY-AFTER": "0"}, 0.0),
    ({"Retry-After": email.utils.formatdate(NOW + 7, usegmt=True)}, 7.0),
    ({"Retry-After": email.utils.formatdate(NOW - 7, usegmt=True)}, 0.0),
    ({"Retry-After": "soon"}, None),
    ({"Retry-After": "-4"}, None),
    ({"Retry-After": "nan", "X-Ratelimit-Retry-After": "2"}, 2.0),
    ({"X-Ratelimit-Retry-After": "4"}, 4.0),
    ({"x-ratelimit-retry-after": "4", "Retry-After": "1"}, 1.0),  # Retry-After first
    ({"X-RateLimit-Reset": str(int(NOW) + 2)}, 2.0),  # epoch in the future
    ({"x-ratelimit-reset": "12"}, 12.0),  # small: a delta
    ({"X-RateLimit-Reset": str(int(NOW) - 100)}, 0.0),  # epoch already past
    ({"X-RateLimit-Reset": str(int(NOW) + 3600)}, 60.0),  # capped
    ({"Retry-After": "86400"}, 60.0),  # capped
    ({"X-RateLimit-Limit": "3000", "X-RateLimit-Remaining": "0"}, None),
])
def test_retry_wait_seconds(headers, expected):
    wait = retry_wait_seconds(headers, NOW, cap_seconds=60.0)
    if expected is None:
        assert wait is None
    else:
        assert wait == pytest.approx(expected)


def test_retry_wait_seconds_custom_cap():
    assert retry_wait_seconds({"Retry-After": "30"}, NOW, cap_seconds=5) == 5.0


class MaxRng:
    def uniform(self, low, high):
        return high


@pytest.mark.parametrize("attempt, expected", [(1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (1000, 30.0)])
def test_backoff_ceiling(attempt, expected):
    assert backoff_seconds(attempt, rng=MaxRng()) == expected


def test_backoff_full_jitter_stays_in_range():
    rng = random.Random(7)
    values = [backoff_seconds(4, base=0.5, cap=30, rng=rng) for _ in range(500)]
    assert all(0 <= v <= 4.0 for v in values)
    assert min(values) < 1.0 < 3.0 < max(values)  # spread over the whole range


def test_backoff_rejects_attempt_zero():
    with pytest.raises(ValueError):
        backoff_seconds(0)


# ---------------------------------------------------------------------------------------------
# BrazeClient against a tiny local server


class _Handler(http.server.BaseHTTPRequestHandler):
    script = {}  # path → (status, headers, body bytes, delay seconds)
    seen = []

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        type(self).seen.append((self.path, dict(self.headers), body))
        status, headers, payload, delay = type(self).script.get(self.path, (201, {}, b'{"message":"success"}', 0))
        if delay:
            time.sleep(delay)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def handler():
    _Handler.script = {}
    _Handler.seen = []
    return _Handler


def test_post_track_sends_headers_and_body(server, handler):
    handler.script["/users/track"] = (201, {"X-RateLimit-Remaining": "2999"}, b'{"message":"success"}', 0)
    with BrazeClient(server + "/", KEY, timeout_seconds=2) as client:
        response = client.post_track(b'{"events":[]}')
    assert response.status == 201
    assert response.body == {"message": "success"}
    assert response.headers["x-ratelimit-remaining"] == "2999"
    path, headers, body = handler.seen[0]
    assert path == "/users/track"
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers["Content-Type"] == "application/json"
    assert body == b'{"events":[]}'


def test_post_track_reuses_connection(server, handler):
    with BrazeClient(server, KEY, timeout_seconds=2) as client:
        for _ in range(3):
            assert client.post_track(b"{}").status == 201
        pool = client._session.get_adapter(client.url).poolmanager
        assert len(pool.pools) == 1


def test_post_track_non_json_body(server, handler):
    handler.script["/users/track"] = (502, {}, b"<html>Bad Gateway</html>", 0)
    response = BrazeClient(server, KEY, timeout_seconds=2).post_track(b"{}")
    assert (response.status, response.body, response.text) == (502, None, "<html>Bad Gateway</html>")


def test_redirect_is_not_followed(server, handler):
    handler.script["/users/track"] = (307, {"Location": server + "/elsewhere"}, b"", 0)
    response = BrazeClient(server, KEY, timeout_seconds=2).post_track(b"{}")
    assert response.status == 307
    assert [p for p, _, _ in handler.seen] == ["/users/track"]
    assert classify(response).action == bc.FAIL


def test_read_timeout_is_ambiguous(server, handler):
    handler.script["/users/track"] = (201, {}, b'{"message":"success"}', 1.0)
    with pytest.raises(TransportError) as e:
        BrazeClient(server, KEY, timeout_seconds=0.2).post_track(b"{}")
    assert e.value.kind == "timeout" and e.value.maybe_applied
    assert KEY not in str(e.value) and KEY not in repr(e.value)


def test_connection_refused_is_not_ambiguous():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransportError) as e:
        BrazeClient(f"http://127.0.0.1:{port}", KEY, timeout_seconds=1).post_track(b"{}")
    assert e.value.kind == "connection" and not e.value.maybe_applied
    assert KEY not in str(e.value)


def test_key_never_in_repr_or_errors():
    client = BrazeClient("https://rest.iad-01.braze.com", KEY, timeout_seconds=1)
    assert KEY not in repr(client) and KEY not in str(client)
    with pytest.raises(ValueError) as e:
        BrazeClient("ftp://x", KEY, timeout_seconds=1)
    assert KEY not in str(e.value)
    with pytest.raises(ValueError, match="timeout_seconds"):
        BrazeClient("https://x", KEY, timeout_seconds=0)
    with pytest.raises(ValueError, match="api_key"):
        BrazeClient("https://x", "", timeout_seconds=1)


def test_an_untrusted_certificate_is_refused_before_anything_is_sent(tmp_path):
    """TLS is verified: a server with a self-signed certificate gets no request, and the
    failure is a clean TransportError that says nothing was sent."""
    import ssl
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append(self.path)
            self.send_response(201)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = BrazeClient(f"https://127.0.0.1:{server.server_address[1]}", "sk-secret-123", 5)
        with pytest.raises(TransportError) as error:
            client.post_track(b"{}")
        assert error.value.kind == "connection" and not error.value.maybe_applied
        assert "sk-secret-123" not in str(error.value)
        assert received == []
    finally:
        server.shutdown()


# ---------------------------------------------------------------------------------------------
# Keys that cannot travel in a header, and errors that must not escape or leak


def _renderings_absent(text, key):
    from transforms.scrub import renderings

    return [form for form in renderings(key) if form in text]


@pytest.mark.parametrize("key, problem", [
    ("key-5f0c9d2e\nnever-shown-1", "a line break at position 13"),
    ("key-5f0c9d2e\r\nnever-shown-2", "a line break at position 13"),
    ("key-5f0c9d2e never-shown-3", "a space at position 13"),
    ("key-5f0c9d2e\x00never-shown-4", "a control character at position 13"),
    ("key-5f0c9d2e\u0151never-shown-5", "a non-ASCII character at position 13"),  # not Latin-1
    ("key-5f0c9d2e\u00e9never-shown-6", "a non-ASCII character at position 13"),  # Latin-1: would be sent
])
def test_a_key_that_cannot_be_a_header_is_never_sent(server, handler, key, problem):
    client = BrazeClient(server, key, timeout_seconds=2)  # never raises here: the sink builds clients
    with pytest.raises(TransportError) as e:
        client.post_track(b"{}")
    assert (e.value.kind, e.value.permanent, e.value.maybe_applied) == ("invalid_key", True, False)
    assert problem in e.value.detail and "nothing was sent" in e.value.detail
    assert handler.seen == []
    verdict = classify(e.value)
    assert (verdict.action, verdict.reason) == (bc.FAIL, bc.API_KEY_INVALID)
    for text in (str(e.value), repr(e.value), verdict.detail):
        assert _renderings_absent(text, key) == []


@pytest.mark.parametrize("key, error_class", [
    ("key-5f0c9d2e\nnever-shown-7", "InvalidHeader"),  # requests quotes the header through repr
    ("key-5f0c9d2e\u0151never-shown-8", "UnicodeEncodeError"),  # http.client cannot encode it
])
def test_behind_the_check_the_http_stack_errors_are_clean_scrubbed_transport_errors(server, handler, key,
                                                                                   error_class):
    """The check above is the first line; this is the second: with it switched off (white-box),
    what requests and http.client raise for such a key still leaves as a TransportError with
    no rendering of the key, and no character of it."""
    client = BrazeClient(server, key, timeout_seconds=2)
    client._key_problem = None
    with pytest.raises(TransportError) as e:
        client.post_track(b"{}")
    assert (e.value.kind, e.value.permanent) == ("client_error", True)
    assert error_class in e.value.detail
    assert _renderings_absent(str(e.value), key) == []
    assert "\u0151" not in str(e.value) and "\\u0151" not in str(e.value)
    assert classify(e.value).reason == bc.REQUEST_FAILED
    assert handler.seen == []


def test_any_other_failure_in_the_http_stack_is_a_scrubbed_transport_error(server):
    import requests
    from requests.adapters import HTTPAdapter

    class Exploding(HTTPAdapter):
        def send(self, request, **kwargs):
            raise RuntimeError(f"cannot send {request.headers['Authorization']!r}")

    session = requests.Session()
    session.mount("http://", Exploding())
    with pytest.raises(TransportError) as e:
        BrazeClient(server, KEY, timeout_seconds=2, session=session).post_track(b"{}")
    assert (e.value.kind, e.value.permanent) == ("client_error", True)
    assert "RuntimeError" in e.value.detail and "Bearer ***" in e.value.detail
    assert KEY not in str(e.value)


def test_an_error_quoting_the_key_in_any_rendering_is_scrubbed(server):
    import json
    import urllib.parse

    import requests
    from requests.adapters import HTTPAdapter

    key = 'sk/"quoted"+key=5f0c9d2e'  # valid in a header, but every rendering differs

    class Quoting(HTTPAdapter):
        def send(self, request, **kwargs):
            raise requests.exceptions.ConnectionError(
                f"raw {key} json {json.dumps(key)} url {urllib.parse.quote(key, safe='')} repr {key!r}")

    session = requests.Session()
    session.mount("http://", Quoting())
    with pytest.raises(TransportError) as e:
        BrazeClient(server, key, timeout_seconds=2, session=session).post_track(b"{}")
    assert e.value.kind == "connection" and not e.value.permanent
    assert e.value.detail == 'raw *** json "***" url *** repr \'***\''
