"""Heap's segment-sync webhook: the `Heap-Hash` signature, and the `segment.users.sync` / `.drain` bodies.

Sources (spec §7 "Verified 2026-12", which overrides §3): github heap/heap-api-reference
`middleware/validateHeapHeader.ts` (the reference validator), `bin/generateTestHeapHeaders.js` (the
reference signer), `constants.ts`, `webhook_spec.yaml`, `webhooks/bodyHelpers.ts`, `bin/data/sync.json`,
`bin/data/drain.json`.

- `Heap-Hash: ts:<ms>,hmac:<digest>`: comma-separated `key:value` pairs, read in any order; pairs other
  than `ts` and `hmac` are ignored. `ts` is **milliseconds** since the epoch (`+Date.now()`).
- digest = HMAC-SHA256(key = the shared secret, message = f"{ts}{body}"). The reference validator and
  generator encode it as **Base64** (`CryptoJS.enc.Base64.stringify`) while spec §3/§7 say hex: both are
  accepted, each decoded to the 32 raw bytes and compared in constant time (`hmac.compare_digest`).
- body: the reference validator hashes `JSON.stringify(parsedBody)`, not the bytes received. So the raw
  bytes are tried first (cheap), then - only for a body of at most `MAX_COMPACT_FALLBACK_BYTES`, nested
  at most `MAX_NESTING` deep, holding no float and no integer beyond +-(2^53 - 1) - its compact
  (`JSON.stringify`) form; a body matching neither is refused. What the receiver applies is always the
  exact bytes that matched (`Signature.signed_body`): the raw body, or the compact form it computed,
  never a second parse of the body received (see `compact_form` for why floats and big integers are
  refused rather than re-encoded).
- Several secrets may be valid at once (a rotation: HEAP_WEBHOOK_SECRET plus
  HEAP_WEBHOOK_PREVIOUS_SECRETS); a signature under any of them is accepted.
- Errors as the reference answers them: 400 for a missing or malformed header and for a timestamp
  outside the window (`MalformedHeader`, `TimestampOutOfRange`), 403 for a wrong HMAC
  (`InvalidSignature`). The reference allows 60 s of age and 1 s ahead; here both are settings, and a
  timestamp exactly at either limit is refused.

Bodies (`webhook_spec.yaml`, `bodyHelpers.ts`): `{"id_token", "action_type", "customer_config", "data"}`.
`segment.users.sync`'s `data` holds `segment {id, name}`, `sync_info {page_number, total_pages,
sync_task_id}`, `add` and `remove` (`[{"id"}]`, `id` being the identity property the customer chose);
`segment.users.drain`'s `data` holds only `segment`: the destination is asked to empty that audience.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from json.encoder import encode_basestring
from typing import Any

import orjson

SYNC_ACTION = "segment.users.sync"
DRAIN_ACTION = "segment.users.drain"
ACTIONS = (SYNC_ACTION, DRAIN_ACTION)
# Defaults of HEAP_WEBHOOK_MAX_AGE_SECONDS / HEAP_WEBHOOK_MAX_FUTURE_SECONDS. Heap's reference validator
# allows 60 s / 1 s (constants.ts MAX_OLD_TIMESTAMP_DELTA, MAX_FUTURE_TIMESTAMP_DELTA); the defaults here
# leave room for ordinary clock skew between Heap's machines and ours. A 60 s window only works if Heap
# signs every retry anew: that is our inference from the reference, not documented behaviour.
DEFAULT_MAX_AGE_SECONDS = 120.0
DEFAULT_MAX_FUTURE_SECONDS = 30.0
MAX_IDENTITY_CHARS = 255  # Heap's identity limit (spec §3, ingest)
MAX_SYNC_TASK_ID_CHARS = 4096  # any string (spec §7), within reason: it is stored in the sync's summary
# Bounds of a signed page. Heap documents none for its webhook (spec §3, §7), so each is far beyond what
# Heap sends and small enough that no page can make the receiver, the sensor or a run do unbounded work.
# - A sync of more pages than this is refused (400): 100,000 pages of 100 ids is 10 million changes in one
#   sync. The sensor counts a sync's received pages against it and never builds a range of page numbers.
MAX_TOTAL_PAGES = 100_000
# - ids per page, add and remove together: the body cap (10 MB) allows about 500,000 short ids; Heap's
#   own bulk APIs take at most 1000 items a request (spec §3).
MAX_PAGE_IDS = 100_000
# - a numeric id is a Heap user_id: a whole number in [0, 2^53 - 1] (spec §3, `/api/track`); the segment id
#   an integer (spec §7) within the same JavaScript-safe range.
# - a segment name, like an event name or property value, at most 1024 characters (spec §3, ingest);
# - id_token is a UUID (spec §3; 36 characters); customer_config is kept with every page and drain, so its
#   `fields` (one per field of the integration's form) and its encoded size are capped.
MAX_SEGMENT_NAME_CHARS = 1024
MAX_ID_TOKEN_CHARS = 256
MAX_CUSTOMER_FIELDS = 100
MAX_CUSTOMER_CONFIG_BYTES = 64 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # no identity holds one; "a\n" must never pass as "a"
# The compact form is tried only for bodies up to this size. Heap's reference generator sends the very
# string it signed, so Heap's own bodies match on their raw bytes; the fallback serves a body re-encoded on
# the way (a proxy that pretty-prints). It is computed for any request with a well-formed header and a
# current timestamp - no secret needed - so it is capped: 1 MB parses, checks and re-encodes in tens of
# milliseconds, where 10 MB of floats held the GIL for about 4 s.
MAX_COMPACT_FALLBACK_BYTES = 1_000_000
# Heap's bodies nest 5 levels (body > data > add > [] > {id}; body > customer_config > fields > [] > {});
# a deeper body is refused (400), so no encoder ever recurses past this (Python's limit is 1000 frames,
# orjson.dumps stops at 255) and Heap is not asked to retry a body that can never be stored.
MAX_NESTING = 32
MAX_SAFE_INTEGER = 2**53 - 1  # JavaScript's Number.MAX_SAFE_INTEGER: JSON.parse keeps every digit up to here
# `ts:<13 digits>,hmac:<64 hex>` is 86 characters; extra pairs are allowed (and ignored), within reason.
MAX_HEADER_CHARS = 1024
_TIMESTAMP = re.compile(r"[0-9]{1,16}")
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
_BASE64_DIGEST = re.compile(r"[A-Za-z0-9+/]{43}=")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_SECONDS_NOT_MS = 10**11  # a `ts` below this (1973 in ms) was almost certainly written in seconds


class SignatureError(Exception):
    """`Heap-Hash` does not authenticate the request; `status` is the HTTP answer (400 or 403). The message
    says why and never holds a secret or a digest."""

    status = 400


class MalformedHeader(SignatureError):
    """`Heap-Hash` is missing or is not `ts:<ms>,hmac:<digest>` pairs (400, as the reference validator)."""


class TimestampOutOfRange(SignatureError):
    """The signed timestamp is older than the allowed age or too far ahead (400, as the reference)."""


class InvalidSignature(SignatureError):
    """The HMAC matches neither the raw body nor its compact form under any configured secret (403)."""

    status = 403


class InvalidPayload(ValueError):
    """A signed body that is not a valid Heap webhook; the message names the field."""


@dataclass(frozen=True)
class Signature:
    """A verified `Heap-Hash`: when Heap signed, how, and which secret and body form matched."""

    timestamp_ms: int
    encoding: str  # "base64" (Heap's reference) or "hex" (spec wording)
    body_form: str  # "raw" (the bytes received) or "compact" (their JSON.stringify re-serialisation)
    secret_index: int  # 0: HEAP_WEBHOOK_SECRET; n: the n-th of HEAP_WEBHOOK_PREVIOUS_SECRETS
    # The bytes whose HMAC matched: the body received ("raw") or the compact form computed from it
    # ("compact"). The receiver parses these, so what it applies is exactly what was signed.
    signed_body: bytes = field(default=b"", repr=False, compare=False)

    @property
    def secret_name(self) -> str:
        return "the current secret" if self.secret_index == 0 else f"previous secret #{self.secret_index}"


@dataclass(frozen=True)
class SyncPage:
    """One validated page of a `segment.users.sync`."""

    sync_task_id: str
    page_number: int
    total_pages: int
    segment_id: int
    segment_name: str
    add: tuple[str, ...]
    remove: tuple[str, ...]
    id_token: str | None = field(default=None, repr=False, compare=False)
    customer_config: Any = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> str:
        """Where the sync is stored: a hash of its id, so any string is a safe folder name."""
        return sync_key(self.sync_task_id)


@dataclass(frozen=True)
class DrainRequest:
    """A validated `segment.users.drain`: empty the audience of `segment_id`. `key` is a hash of the signed
    body (`compact_json`): a drain carries no id of its own, so Heap's retries share it."""

    key: str
    segment_id: int
    segment_name: str
    id_token: str | None = field(default=None, repr=False, compare=False)
    customer_config: Any = field(default=None, repr=False, compare=False)


def sync_key(sync_task_id: str) -> str:
    """The storage key of a sync: 32 hex characters of SHA-256 of its id (the id itself may be any string)."""
    return hashlib.sha256(sync_task_id.encode("utf-8")).hexdigest()[:32]


# ------------------------------------------------------------------------------------------ signature


def verify(header: str | None, body: bytes, secrets: Sequence[str], *,
           max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
           max_future_seconds: float = DEFAULT_MAX_FUTURE_SECONDS, now_ms: int | None = None) -> Signature:
    """Check `Heap-Hash` against `body` under any of `secrets`; returns what matched or raises a
    `SignatureError` (`MalformedHeader`, `TimestampOutOfRange`: 400; `InvalidSignature`: 403).

    Checked in the reference validator's order: header, then timestamp window, then HMAC."""
    if not secrets or not all(secrets):
        raise ValueError("verify needs at least one non-empty secret")
    ts, digest, encoding = check_header(header, max_age_seconds=max_age_seconds,
                                        max_future_seconds=max_future_seconds, now_ms=now_ms)
    prefix = str(ts).encode()  # the reference parses ts with parseInt, then formats it back
    keys = [secret.encode() for secret in secrets]
    index = _matching_secret(keys, prefix + body, digest)
    if index is not None:
        return Signature(ts, encoding, "raw", index, body)
    compact, skipped = compact_form(body)
    if compact is not None and compact != body:
        index = _matching_secret(keys, prefix + compact, digest)
        if index is not None:
            return Signature(ts, encoding, "compact", index, compact)
    raise InvalidSignature("the hmac matches neither the raw body nor its compact JSON form under any "
                           "configured secret" + (f" ({skipped})" if skipped else ""))


def check_header(header: str | None, *, max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
                 max_future_seconds: float = DEFAULT_MAX_FUTURE_SECONDS,
                 now_ms: int | None = None) -> tuple[int, bytes, str]:
    """What `Heap-Hash` holds, checked without the body: its shape, its timestamp's window, a digest that
    is hex or Base64 of 32 bytes. Returns (ts in ms, digest, its encoding) or raises like `verify`; the
    receiver calls it before it reads a body, so a request that can never verify is not buffered."""
    ts, received = _parse_header(header)
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    age_ms = now - ts
    # Both limits are exclusive: a request signed exactly `max_age_seconds` ago is refused (the reference
    # generator's 5-minute "past" test request is refused even with the window raised to 300 s).
    if age_ms >= max_age_seconds * 1000 or -age_ms >= max_future_seconds * 1000:
        raise TimestampOutOfRange(_window_problem(ts, age_ms, max_age_seconds, max_future_seconds))
    decoded = _decode_digest(received)
    if decoded is None:
        raise InvalidSignature("the hmac is neither Base64 nor hex of a SHA-256 digest")
    return ts, *decoded


def _matching_secret(keys: Sequence[bytes], message: bytes, digest: bytes) -> int | None:
    for index, key in enumerate(keys):
        if hmac.compare_digest(hmac.new(key, message, hashlib.sha256).digest(), digest):
            return index
    return None


def _parse_header(header: str | None) -> tuple[int, str]:
    if header is None or not header.strip():
        raise MalformedHeader("the Heap-Hash header is missing")
    if len(header) > MAX_HEADER_CHARS:
        raise MalformedHeader(f"the Heap-Hash header is longer than {MAX_HEADER_CHARS} characters")
    pairs: dict[str, str] = {}
    for part in header.split(","):
        if not part.strip():
            continue
        key, colon, value = part.partition(":")
        key = key.strip()
        if not colon:
            raise MalformedHeader("Heap-Hash must be comma-separated key:value pairs, e.g. "
                                  "ts:<ms>,hmac:<digest>")
        if key in ("ts", "hmac") and key in pairs:
            raise MalformedHeader(f"Heap-Hash has more than one {key!r} pair")
        pairs.setdefault(key, value.strip())
    if "ts" not in pairs:
        raise MalformedHeader("Heap-Hash has no ts:<milliseconds> pair")
    if not _TIMESTAMP.fullmatch(pairs["ts"]):
        raise MalformedHeader("the ts of Heap-Hash is not a whole number of milliseconds")
    if "hmac" not in pairs:
        raise MalformedHeader("Heap-Hash has no hmac:<digest> pair")
    return int(pairs["ts"]), pairs["hmac"]


def _window_problem(ts: int, age_ms: int, max_age: float, max_future: float) -> str:
    when = (f"{age_ms / 1000:.3f} s old; it must be less than {max_age:g} s" if age_ms > 0 else
            f"{-age_ms / 1000:.3f} s ahead of this machine's clock; it must be less than {max_future:g} s")
    hint = " (it looks like seconds: Heap signs milliseconds)" if ts < _SECONDS_NOT_MS else ""
    return f"the Heap-Hash timestamp {ts} is {when}{hint}"


def _decode_digest(value: str) -> tuple[bytes, str] | None:
    if _HEX_DIGEST.fullmatch(value):
        return bytes.fromhex(value), "hex"
    if _BASE64_DIGEST.fullmatch(value):
        return base64.b64decode(value, validate=True), "base64"
    return None


def compact_form(body: bytes) -> tuple[bytes | None, str | None]:
    """`JSON.stringify(JSON.parse(body))`, or None and why it is not tried (None, None: not JSON at all).

    Refused rather than re-encoded (Heap's ids are strings or small integers, so Heap never sends these):
    - a body over `MAX_COMPACT_FALLBACK_BYTES` or nested deeper than `MAX_NESTING`: the cost (see above);
    - a float or an integer beyond +-(2^53 - 1): JSON.parse rounds them to doubles, so many bodies share
      one compact form (`1152921504606847000` and `...050` both stringify as `...000`), and a request
      replayed within the window could carry digits nobody signed. The receiver applies the compact bytes
      that matched, so even without this rule it would store the signed value; refusing is stricter.
    orjson parses (it refuses NaN, Infinity and lone surrogates, as a JSON body from Heap never holds them)
    and, when no key is an array index ("0", "10": JavaScript moves those first), writes the compact form
    too: for strings and small integers its output is JSON.stringify's byte for byte. `compact_json` is
    used only for bodies with array-index keys.
    """
    if len(body) > MAX_COMPACT_FALLBACK_BYTES:
        return None, f"a body over {MAX_COMPACT_FALLBACK_BYTES:,} bytes is checked on its raw bytes only"
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None  # not JSON Heap could have parsed: only the raw bytes could match
    problem, index_keys = _inspect(parsed, numbers=True)
    if problem is not None:
        return None, f"its compact form is not tried: {problem}"
    return (compact_json(parsed) if index_keys else orjson.dumps(parsed)), None


def _inspect(value: Any, *, numbers: bool) -> tuple[str | None, bool]:
    """What makes `value` unfit to re-encode (too deep; with `numbers`, a float or an integer beyond
    +-MAX_SAFE_INTEGER), and whether any object key is an array index. Iterative: no recursion limit."""
    index_keys = False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
            if numbers and not index_keys:
                index_keys = any(_is_array_index(k) for k in item)
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_NESTING:
            return f"it is nested deeper than {MAX_NESTING} levels", index_keys
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
            elif not numbers or isinstance(child, bool) or child is None or isinstance(child, str):
                continue
            elif isinstance(child, float):
                return "it holds a number with a fraction or an exponent", index_keys
            elif isinstance(child, int) and abs(child) > MAX_SAFE_INTEGER:
                return "it holds an integer beyond 2^53 - 1, which JSON.parse rounds", index_keys
    return None, index_keys


# ------------------------------------------------------------------------- JSON.stringify, in Python


def compact_json(value: Any) -> bytes:
    """`JSON.stringify(value)` as JavaScript writes it, UTF-8 encoded (ECMA-262 §25.5.2
    SerializeJSONProperty).

    Compact (no spaces), non-ASCII kept as is, control characters and lone surrogates escaped as `\\u00xx`.
    Numbers are JavaScript doubles: 1.0 -> `1`, 1e21 -> `1e+21`, 1.5e-7 -> `1.5e-7`, an integer beyond 2^53
    -> its nearest double. Object keys keep their order, except that keys which are array indices ("0",
    "10", ...) come first in ascending order, as in every JavaScript object (OrdinaryOwnPropertyKeys).
    orjson.dumps is compact and keeps order too, but writes floats (1.0, 1e-07) and big integers the
    Python way and never reorders keys, hence this function.
    """
    parts: list[str] = []
    _encode(value, parts)
    return "".join(parts).encode("utf-8")


def _encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_js_string(value))
    elif isinstance(value, int):
        out.append(str(value) if abs(value) <= 2**53 else _js_number_of_int(value))
    elif isinstance(value, float):
        out.append(_js_number(value))
    elif isinstance(value, dict):
        out.append("{")
        for index, key in enumerate(_js_key_order(value)):
            if index:
                out.append(",")
            out.append(_js_string(key))
            out.append(":")
            _encode(value[key], out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        raise TypeError(f"{type(value).__name__} is not a JSON value")


def _js_string(text: str) -> str:
    # encode_basestring escapes '"', '\\', \b \f \n \r \t and other controls as lowercase \u00xx, like
    # JavaScript; JSON.stringify (ES2019) also escapes lone surrogates, which Python keeps as characters.
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", encode_basestring(text))


def _js_key_order(obj: dict) -> list[str]:
    indices = sorted((k for k in obj if _is_array_index(k)), key=int)
    return indices + [k for k in obj if not _is_array_index(k)]


def _is_array_index(key: str) -> bool:
    return key.isascii() and key.isdigit() and (key == "0" or key[0] != "0") and int(key) < 2**32 - 1


def _js_number_of_int(value: int) -> str:
    try:
        return _js_number(float(value))  # JSON.parse read it as the nearest double
    except OverflowError:
        return "null"  # beyond the largest double: Infinity, which JSON.stringify writes as null


def _js_number(value: float) -> str:
    """Number::toString (ECMA-262 §6.1.6.1.20) for a finite double; NaN and infinities are `null` in JSON."""
    if not math.isfinite(value):
        return "null"
    if value == 0:
        return "0"  # -0 too
    sign = "-" if value < 0 else ""
    # repr gives the shortest digits that round-trip, the same digits JavaScript picks.
    shortest = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(str(d) for d in shortest.digits)
    k, n = len(digits), shortest.exponent + len(digits)
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = f"{digits[:n]}.{digits[n:]}"
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        exponent = n - 1
        mantissa = digits if k == 1 else f"{digits[0]}.{digits[1:]}"
        text = f"{mantissa}e{'+' if exponent >= 0 else '-'}{abs(exponent)}"
    return sign + text


# ------------------------------------------------------------------------------------------- bodies


def parse_request(payload: Any) -> SyncPage | DrainRequest:
    """Validate a decoded, signed body as a sync page or a drain; raises `InvalidPayload` naming the field."""
    if not isinstance(payload, dict):
        raise InvalidPayload("body must be a JSON object")
    action = payload.get("action_type")
    if action not in ACTIONS:
        raise InvalidPayload(f"action_type must be one of {', '.join(map(repr, ACTIONS))}, got {action!r}")
    id_token = payload.get("id_token")
    if id_token is not None and (not isinstance(id_token, str) or len(id_token) > MAX_ID_TOKEN_CHARS):
        raise InvalidPayload(f"id_token must be a string of at most {MAX_ID_TOKEN_CHARS} characters")
    config = payload.get("customer_config")
    well_formed = isinstance(config, dict) and isinstance(config.get("fields", []), list)
    if config is not None and not well_formed:
        raise InvalidPayload("customer_config must be an object whose fields is an array")
    if config is not None and len(config.get("fields", [])) > MAX_CUSTOMER_FIELDS:
        raise InvalidPayload(f"customer_config.fields holds more than {MAX_CUSTOMER_FIELDS} fields")
    # What is kept or hashed must be encodable: customer_config (stored with every page or drain) and a
    # drain's whole body (its key is a hash of it). A page's other fields are read, never re-encoded.
    too_deep, _ = _inspect(payload if action == DRAIN_ACTION else config, numbers=False)
    if too_deep is not None:
        raise InvalidPayload(f"{'body' if action == DRAIN_ACTION else 'customer_config'}: {too_deep} (Heap's "
                             f"bodies nest 5)")
    if config is not None and len(orjson.dumps(config)) > MAX_CUSTOMER_CONFIG_BYTES:
        raise InvalidPayload(f"customer_config is larger than {MAX_CUSTOMER_CONFIG_BYTES:,} bytes")
    data = _object(payload.get("data"), "data")
    segment = _object(data.get("segment"), "data.segment")
    segment_id = _integer(segment.get("id"), "data.segment.id", 1, MAX_SAFE_INTEGER)
    name = segment.get("name", "" if action == DRAIN_ACTION else None)
    if not isinstance(name, str) or len(name) > MAX_SEGMENT_NAME_CHARS:
        raise InvalidPayload(f"data.segment.name must be a string of at most {MAX_SEGMENT_NAME_CHARS} "
                             "characters")
    if action == DRAIN_ACTION:
        key = hashlib.sha256(compact_json(payload)).hexdigest()[:32]
        return DrainRequest(key, segment_id, name, id_token, config)
    info = _object(data.get("sync_info"), "data.sync_info")
    task = info.get("sync_task_id")
    if not isinstance(task, str) or not task or len(task) > MAX_SYNC_TASK_ID_CHARS:
        raise InvalidPayload(f"data.sync_info.sync_task_id must be a non-empty string of at most "
                             f"{MAX_SYNC_TASK_ID_CHARS} characters")
    page = _integer(info.get("page_number"), "data.sync_info.page_number", 1, MAX_TOTAL_PAGES)
    total = _integer(info.get("total_pages"), "data.sync_info.total_pages", 1, MAX_TOTAL_PAGES)
    if page > total:
        raise InvalidPayload(f"data.sync_info.page_number {page} is beyond total_pages {total}")
    add, remove = data.get("add", []), data.get("remove", [])
    for value, where in ((add, "data.add"), (remove, "data.remove")):
        if not isinstance(value, list):
            raise InvalidPayload(f"{where} must be an array of {{\"id\": ...}} objects")
    if len(add) + len(remove) > MAX_PAGE_IDS:
        raise InvalidPayload(f"data.add and data.remove hold {len(add) + len(remove):,} ids; a page may hold "
                             f"at most {MAX_PAGE_IDS:,} ids")
    return SyncPage(task, page, total, segment_id, name, _ids(add, "data.add"), _ids(remove, "data.remove"),
                    id_token, config)


def parse_page(payload: Any) -> SyncPage:
    """`parse_request` for a body that must be a sync page (a drain is an `InvalidPayload` here)."""
    request = parse_request(payload)
    if not isinstance(request, SyncPage):
        raise InvalidPayload(f"action_type must be {SYNC_ACTION!r}, got {DRAIN_ACTION!r}")
    return request


def _object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidPayload(f"{where} must be an object")
    return value


def _integer(value: Any, where: str, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise InvalidPayload(f"{where} must be an integer from {minimum} to {maximum:,}, got {shown(value)}")
    return value


def shown(value: Any) -> str:
    """`value` for an error message: its repr, cut to 40 characters (it may be a huge string or number)."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**40 else "a number of over 40 digits"
    return text if len(text) <= 40 else f"{text[:37]}..."


def _ids(value: list, where: str) -> tuple[str, ...]:
    ids = []
    for index, item in enumerate(value):
        raw = item.get("id") if isinstance(item, dict) else None
        if isinstance(raw, str) and raw:
            if len(raw) > MAX_IDENTITY_CHARS:
                raise InvalidPayload(f"{where}[{index}].id is longer than {MAX_IDENTITY_CHARS} characters")
            if _CONTROL.search(raw):
                raise InvalidPayload(f"{where}[{index}].id holds a control character")
            ids.append(raw)
        elif isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw <= MAX_SAFE_INTEGER:
            ids.append(str(raw))
        else:
            raise InvalidPayload(f"{where}[{index}].id must be a non-empty string or an integer from 0 to "
                                 f"{MAX_SAFE_INTEGER:,}")
    return tuple(ids)
