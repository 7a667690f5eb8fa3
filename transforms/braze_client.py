"""The Braze REST transport and the pure rules every caller applies to its answers.

Three separate things live here, none of them Beam-aware:

* ``build_track_body``: a batch of ``BrazeItem`` → the request body, plus the map that leads
  Braze's ``errors[]`` entries (``input_array``, ``index``) back to the item that failed.
* ``BrazeClient``: one ``requests.Session`` that only sends one body to one path and turns
  transport failures into ``TransportError``. It makes no decisions: the transport stays
  apart from the policy, so either can change alone. Its constructor is the seam for other
  endpoints: ``path`` (``/users/track`` by default; the cohort job's export and partner
  calls), ``authorization=False`` for endpoints whose keys travel in the body, and
  ``also_scrub`` for those keys.
* ``classify``: Braze's answer → what to do (a ``Verdict``), tested with tables. How long to
  wait before trying again is ``transforms.retry_policy``, beside it.

The API key must never reach an exception message, a log line or a repr: ``BrazeClient``
keeps it only inside the session's headers and scrubs it, in every rendering
(``transforms.scrub``), from any error text it builds. A key that cannot travel in a header
(inner whitespace, control or non-ASCII characters: ``transforms.secrets.key_problem``) is
never sent: ``post_track`` raises a permanent ``TransportError`` instead, as it does for any
other failure to build or send the request, so nothing but ``TransportError`` leaves it.
"""
from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import orjson
import requests

from transforms.braze_facts import IDENTIFY_PATH, TRACK_PATH
from transforms.records import ATTRIBUTES, EVENTS, KINDS, PURCHASES, BrazeItem
from transforms.scrub import remember_secret, scrub
from transforms.secrets import key_problem

__all__ = [
    "TRACK_PATH", "IDENTIFY_PATH",
    "OK", "SPLIT", "REJECT", "FAIL", "RETRY",
    "Response", "TransportError", "ItemError", "Verdict",
    "build_track_body", "BrazeClient", "classify",
]


# Verdict actions: what the sink should do with the batch it sent.
OK = "ok"  # accepted; objects named in item_errors failed, the rest are delivered
SPLIT = "split"  # too large: send the halves (a single object → payload_too_large)
REJECT = "reject"  # every object invalid: item_errors for the named ones, `reason` for the rest
FAIL = "fail"  # the whole request failed for good (auth, forbidden, not found, ...)
RETRY = "retry"  # transient: back off and send again

# Reason codes (DeadLetter.reason) that classification produces.
BRAZE_REJECTED = "braze_rejected"
BRAZE_FAILED = "braze_failed"
BRAZE_AUTH = "braze_auth"
BRAZE_FORBIDDEN = "braze_forbidden"
BRAZE_NOT_FOUND = "braze_not_found"
BRAZE_UNSUPPORTED_MEDIA = "braze_unsupported_media"
BRAZE_UNEXPECTED_STATUS = "braze_unexpected_status"
PAYLOAD_TOO_LARGE = "payload_too_large"
API_KEY_INVALID = "api_key_invalid"  # the key cannot be sent in a header; nothing was sent
REQUEST_FAILED = "request_failed"  # the request could not be built or sent, not Braze's doing

# TransportError kinds. TIMEOUT and CONNECTION are transient (retried); the others permanent.
TIMEOUT = "timeout"
CONNECTION = "connection"
INVALID_KEY = "invalid_key"
CLIENT_ERROR = "client_error"

_MAX_INPUT_LENGTH = "max input length exceeded"
_TEXT_SNIPPET_CHARS = 500


class Response(NamedTuple):
    """What came back from one POST: status, the JSON body (None if absent or not JSON), the
    headers with lower-cased names, and the start of the raw text for diagnostics."""

    status: int
    body: Optional[dict]
    headers: Mapping[str, str]
    text: str = ""


class TransportError(Exception):
    """No HTTP answer. ``kind``:

    * "timeout", "connection": transient, worth retrying. ``maybe_applied`` is True when the
      request may have reached Braze before the failure (a read timeout, a connection dropped
      after sending), so a retry may duplicate events.
    * "invalid_key": the API key cannot travel in a header; nothing was sent. Permanent.
    * "client_error": the request could not be built or sent for another reason (an error in
      the HTTP stack, not an answer from Braze). Permanent: the same request would fail again.

    ``detail`` is scrubbed of the key in every rendering.
    """

    def __init__(self, kind: str, detail: str, maybe_applied: bool = False, permanent: bool = False):
        self.kind = kind
        self.detail = detail
        self.maybe_applied = maybe_applied
        self.permanent = permanent
        super().__init__(f"{kind}: {detail}")


class ItemError(NamedTuple):
    """One entry of Braze's ``errors[]``: which array, which index, and Braze's text."""

    input_array: str
    index: int
    type: str


class Verdict(NamedTuple):
    action: str  # OK | SPLIT | REJECT | FAIL | RETRY
    reason: str = ""  # DeadLetter reason for FAIL/REJECT/SPLIT; a short label for RETRY
    detail: str = ""  # human-readable: Braze's message, the status, the transport error
    http_status: Optional[int] = None
    item_errors: Tuple[ItemError, ...] = ()
    rate_limited: bool = False  # a 429
    maybe_applied: bool = False  # RETRY only: the failed request may have been applied


# --------------------------------------------------------------------------------------------
# Request body


def build_track_body(items: Sequence[BrazeItem]) -> Tuple[bytes, Dict[Tuple[str, int], int]]:
    """Items → (``/users/track`` JSON body, ``{(kind, index in that array): position in items}``).

    Only non-empty arrays are sent; within an array the items keep their order.
    """
    arrays: Dict[str, List[dict]] = {ATTRIBUTES: [], EVENTS: [], PURCHASES: []}
    index_map: Dict[Tuple[str, int], int] = {}
    for position, item in enumerate(items):
        array = arrays.get(item.kind)
        if array is None:
            raise ValueError(f"unknown Braze object kind {item.kind!r}; expected one of {KINDS}")
        index_map[(item.kind, len(array))] = position
        array.append(item.obj)
    body = {kind: array for kind, array in arrays.items() if array}
    return orjson.dumps(body), index_map


# --------------------------------------------------------------------------------------------
# Transport


class BrazeClient:
    """Posts bodies to ``{endpoint}{path}`` (``/users/track`` unless told otherwise; also
    ``/users/identify``) over one reusable session.

    It only sends and reports: status codes are not interpreted here (see ``classify``).
    Redirects are not followed (a redirect would re-send the key to another host), TLS is
    verified, and every call has a timeout. ``authorization=False``: no ``Authorization``
    header (the partner endpoints take their keys in the body); ``also_scrub``: more secrets
    to scrub from every error text (those keys).
    """

    def __init__(self, endpoint: str, api_key: str, timeout_seconds: float,
                 session: Optional[requests.Session] = None, *, path: str = TRACK_PATH,
                 authorization: bool = True, also_scrub: Sequence[str] = ()):
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
            raise ValueError(f"endpoint must be an http(s) URL, got {endpoint!r}")
        if not isinstance(api_key, str) or not api_key:
            raise ValueError("api_key must be a non-empty string")  # never echo the value
        # Not raised here: the sink builds clients where an exception would escape. The key is
        # refused when a request is made, as a permanent TransportError, and never sent.
        self._key_problem = key_problem(api_key)
        if not timeout_seconds or timeout_seconds <= 0:
            raise ValueError(f"timeout_seconds must be > 0, got {timeout_seconds!r}")
        self.endpoint = endpoint.rstrip("/")
        self.url = self.endpoint + path
        self.timeout_seconds = float(timeout_seconds)
        self._secrets = (api_key,) + tuple(s for s in also_scrub if s and s != api_key)
        for secret in self._secrets[1:]:
            remember_secret(secret)
        self._session = session if session is not None else requests.Session()
        self._session.verify = True
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if authorization:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, timeout_seconds={self.timeout_seconds})"

    __str__ = __repr__

    def __enter__(self) -> "BrazeClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def post(self, body: bytes) -> Response:
        """POST one body to ``url``. Returns the answer whatever its status; raises
        ``TransportError`` when there is no answer (timeout, refused, reset), when the key
        cannot be sent, or when the request fails in any other way. Nothing else escapes."""
        return self._send(self.url, body)

    def post_track(self, body: bytes) -> Response:
        """``post``, by the name the /users/track callers use."""
        return self._send(self.url, body)

    def post_identify(self, body: bytes) -> Response:
        """POST one ``/users/identify`` body; the same contract as ``post_track``."""
        return self._send(self.endpoint + IDENTIFY_PATH, body)

    def _send(self, url: str, body: bytes) -> Response:
        if self._key_problem is not None:
            raise TransportError(INVALID_KEY, f"the API key {self._key_problem}, so it cannot be sent in "
                                 "an HTTP header; nothing was sent. Store the key again without that "
                                 "character", False, permanent=True)
        try:
            return self._post(url, body)
        except TransportError:
            raise
        except Exception as e:  # noqa: BLE001 - the client's contract: only TransportError leaves
            # e.g. UnicodeEncodeError from http.client for a header it cannot encode in Latin-1,
            # whose message quotes the offending character (of the key): left out.
            what = f"{e.reason} at position {e.start}" if isinstance(e, UnicodeError) and hasattr(e, "start") \
                else str(e)
            raise TransportError(CLIENT_ERROR, self._scrub(f"could not send the request: {type(e).__name__}: {what}"),
                                 False, permanent=True) from None

    def _post(self, url: str, body: bytes) -> Response:
        try:
            r = self._session.post(
                url,
                data=body,
                headers=self._headers,
                timeout=(self.timeout_seconds, self.timeout_seconds),
                allow_redirects=False,
                verify=True,
            )
        except requests.exceptions.ConnectTimeout as e:
            raise TransportError(TIMEOUT, self._scrub(f"connect timeout: {e}"), False) from None
        except requests.exceptions.Timeout as e:  # ReadTimeout: the body may have been read
            raise TransportError(TIMEOUT, self._scrub(f"read timeout: {e}"), True) from None
        except requests.exceptions.ConnectionError as e:
            raise TransportError(CONNECTION, self._scrub(str(e)), _maybe_sent(e)) from None
        except (requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL,
                requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema) as e:
            # Refused while the request was being prepared: nothing was sent, and it would be
            # refused again. InvalidHeader quotes the header value, key included, through repr.
            raise TransportError(CLIENT_ERROR, self._scrub(f"could not send the request: {type(e).__name__}: {e}"),
                                 False, permanent=True) from None
        except requests.exceptions.RequestException as e:
            # ChunkedEncodingError, ContentDecodingError, ...: the answer broke mid-way.
            raise TransportError(CONNECTION, self._scrub(f"{type(e).__name__}: {e}"), True) from None
        headers = {k.lower(): v for k, v in r.headers.items()}
        raw = r.content or b""
        body_json: Optional[dict] = None
        if raw:
            try:
                parsed = orjson.loads(raw)
                body_json = parsed if isinstance(parsed, dict) else None
            except orjson.JSONDecodeError:
                body_json = None
        text = raw[:_TEXT_SNIPPET_CHARS].decode("utf-8", "replace")
        return Response(r.status_code, body_json, headers, self._scrub(text))

    def _scrub(self, text: str) -> str:
        return scrub(text, self._secrets)


def _maybe_sent(exc: BaseException) -> bool:
    """False when the connection was never made (refused, DNS): nothing reached Braze."""
    seen = set()
    stack: List[Any] = [exc]
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or id(e) in seen:  # `reason` may be a plain string
            continue
        seen.add(id(e))
        name = type(e).__name__
        if name in ("NewConnectionError", "NameResolutionError", "ConnectionRefusedError",
                    "ConnectTimeoutError", "SSLCertVerificationError"):
            return False
        stack.extend([getattr(e, "reason", None), e.__cause__, e.__context__])
        stack.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
    return True


# --------------------------------------------------------------------------------------------
# Classification (pure)


def classify(response: Union[Response, TransportError]) -> Verdict:
    """Braze's answer (or the transport failure) → what the sink should do. See ``docs/architecture.md``,
    "Delivery", and ``docs/api-facts.md``, B2 and B10."""
    if isinstance(response, TransportError):
        if getattr(response, "permanent", False):
            reason = API_KEY_INVALID if response.kind == INVALID_KEY else REQUEST_FAILED
            return Verdict(FAIL, reason, response.detail)
        return Verdict(RETRY, reason=response.kind, detail=response.detail,
                       maybe_applied=response.maybe_applied)
    status = response.status
    body = response.body or {}
    message = body.get("message") if isinstance(body.get("message"), str) else ""
    shown = message or response.text or ""
    errors = _item_errors(body.get("errors"))

    if 200 <= status < 300:
        if message.strip().lower() == "success":
            return Verdict(OK, http_status=status, item_errors=errors)
        # A 2xx whose message is not "success" is a failed request (RudderStack's reading).
        return Verdict(FAIL, BRAZE_FAILED, f"HTTP {status}: {shown}" if shown else f"HTTP {status}",
                       status, errors)
    if status == 413 or (status == 400 and _MAX_INPUT_LENGTH in message.lower()):
        return Verdict(SPLIT, PAYLOAD_TOO_LARGE, f"HTTP {status}: {shown}".rstrip(": "), status)
    if status == 400:
        return Verdict(REJECT, BRAZE_REJECTED, shown or "HTTP 400", status, errors)
    permanent = {
        401: BRAZE_AUTH,
        403: BRAZE_FORBIDDEN,
        404: BRAZE_NOT_FOUND,
        415: BRAZE_UNSUPPORTED_MEDIA,
    }
    if status in permanent:
        return Verdict(FAIL, permanent[status], f"HTTP {status}: {shown}".rstrip(": "), status)
    if status in (408, 429) or 500 <= status < 600:
        # 502 failed before reaching Braze, 503 lacked capacity: not applied. 500/504 and the
        # rest may have been accepted before the failure (docs/api-facts.md, B10 and B16).
        maybe_applied = status >= 500 and status not in (502, 503)
        return Verdict(RETRY, f"http_{status}", f"HTTP {status}: {shown}".rstrip(": "), status,
                       rate_limited=status == 429, maybe_applied=maybe_applied)
    # 3xx (redirects are not followed) and other 4xx: our request or endpoint is wrong.
    location = response.headers.get("location", "")
    extra = f" (redirect to {location}; redirects are not followed)" if location else ""
    return Verdict(FAIL, BRAZE_UNEXPECTED_STATUS, f"HTTP {status}: {shown}{extra}".rstrip(": "),
                   status, errors)


def _item_errors(raw: Any) -> Tuple[ItemError, ...]:
    if not isinstance(raw, list):
        return ()
    out = []
    for e in raw:
        if not isinstance(e, dict):
            continue
        array, index = e.get("input_array"), e.get("index")
        if array not in KINDS or not isinstance(index, int) or isinstance(index, bool) or index < 0:
            continue
        text = e.get("type")
        out.append(ItemError(array, index, text if isinstance(text, str) else str(text)))
    return tuple(out)
