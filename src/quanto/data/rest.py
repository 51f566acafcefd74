"""Async REST plumbing shared by the vendor clients (alpaca, polygon, kite).

- `TokenBucket` / `limiter_for`: one thread-safe request budget per vendor and process, so every event
  loop of a worker (one per activity thread) draws from the same bucket; a 429 `Retry-After` pauses the
  whole bucket.
- `RetryPolicy` + `RestClient`: an aiohttp session with bounded concurrency, the rate limit, retries
  with full-jitter exponential backoff on 429/5xx/timeouts/connection errors/truncated bodies, and
  redaction of every secret (query `apiKey`, auth headers) in logs, stats and error messages.
- `VendorError` (retryable: the network or the vendor failed) vs `VendorRequestError` (an `InputError`:
  bad credentials, bad parameters; retrying cannot fix it).
- Row parsing for the vendor modules: `Fetched` (accepted canonical frame + rejected rows with a
  reason, so nothing is dropped silently), `Column` / `split_rows`, timeframe and window helpers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import httpx
import orjson
import polars as pl
import structlog
import yarl
from pydantic import SecretStr

from quanto.config.secrets import VENDOR_SECRETS
from quanto.data.schemas import BAR_SCHEMA, check_columns, polars_schema
from quanto.errors import InputError
from quanto.observability import metrics

log = structlog.get_logger("quanto.data.rest")

# Names whose values are credentials (compared case-insensitively).
SECRET_PARAMS = frozenset({"apikey", "api_key", "access_token", "token", "secret", "key"})
SECRET_HEADERS = frozenset({"apca-api-key-id", "apca-api-secret-key", "authorization", "x-api-key"})
REDACTED = "***"
AUTH_SCHEMES = frozenset({"token", "bearer", "basic"})
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Longest vendor error text quoted in an exception message.
MESSAGE_CHARS = 300


# --- Rate limiting --------------------------------------------------------------------------------

_TOKEN_EPSILON = 1e-9


class TokenBucket:
    """A token bucket shared by every thread and event loop of a process.

    `rate_per_s` tokens refill per second up to `burst`. State sits behind a `threading.Lock` and time
    comes from `clock` (monotonic), so one bucket can pace several event loops in several threads;
    waiting uses `sleep` (asyncio.sleep by default) and never holds the lock.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        if not rate_per_s > 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s!r}")
        if not isinstance(burst, int) or burst < 1:
            raise ValueError(f"burst must be an integer >= 1, got {burst!r}")
        self.rate_per_s = float(rate_per_s)
        self.burst = burst
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._tokens = float(burst)
        # Time up to which tokens are accounted; a pause moves it into the future.
        self._last = clock()

    def _take(self) -> float:
        """Take a token and return 0, or return how long to wait before trying again."""
        with self._lock:
            now = self._clock()
            if now < self._last:  # paused (Retry-After)
                return self._last - now
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate_per_s)
            self._last = now
            if self._tokens >= 1.0 - _TOKEN_EPSILON:  # float refills land a hair below 1.0
                self._tokens = max(0.0, self._tokens - 1.0)
                return 0.0
            return (1.0 - self._tokens) / self.rate_per_s

    async def acquire(self) -> None:
        """Wait until a token is available and take it."""
        while (wait := self._take()) > 0:
            await self._sleep(wait)

    def penalize(self, seconds: float) -> None:
        """Pause the bucket for `seconds` from now (a server said Retry-After); pauses never shorten.

        After the pause one request may go at once and the rest refill at the normal rate, so a fleet
        of waiting requests does not burst back into a server that just throttled it.
        """
        with self._lock:
            until = self._clock() + max(0.0, seconds)
            if until > self._last:
                self._last = until
                self._tokens = min(1.0, float(self.burst))


_limiters: dict[tuple[str, float, int], TokenBucket] = {}
_limiters_lock = threading.Lock()


def limiter_for(vendor: str, rate_per_s: float, burst: int) -> TokenBucket:
    """The process-wide bucket for (vendor, rate, burst): the same settings give the same bucket."""
    key = (vendor, float(rate_per_s), int(burst))
    with _limiters_lock:
        bucket = _limiters.get(key)
        if bucket is None:
            bucket = _limiters[key] = TokenBucket(rate_per_s, burst)
        return bucket


# --- Errors ---------------------------------------------------------------------------------------


class _VendorFailure:
    """Fields and message shared by both vendor error types (args stay picklable)."""

    def __init__(self, vendor: str, path: str, status: int | None, message: str) -> None:
        super().__init__(vendor, path, status, message)  # type: ignore[call-arg]
        self.vendor, self.path, self.status, self.message = vendor, path, status, message

    def __str__(self) -> str:
        return f"{self.vendor} GET {self.path}: {self.message}"


class VendorError(_VendorFailure, Exception):
    """The vendor or the network failed after every retry (5xx, 429, timeouts, truncated bodies).

    Retrying later may help. `path` is redacted; `status` is the last HTTP status (None: no response).
    """


class VendorRequestError(_VendorFailure, InputError):
    """The vendor refused the request (401/403/404/422/...): credentials or parameters are wrong.

    An InputError, so activities turn it into a non-retryable failure; the message says what to fix and
    never contains a secret.
    """


# --- Retries --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How `RestClient` retries 429, 500/502/503/504, timeouts, connection errors and malformed bodies.

    Attempt k (k >= 1) that failed waits uniform(0, min(backoff_max_s, backoff_base_s * 2**(k-1)))
    ("full jitter"; the exact cap when `jitter` is False), and never less than the server's Retry-After.
    A Retry-After longer than `retry_after_max_s` fails at once with VendorError: the caller (a Temporal
    activity) retries much later instead of sleeping inside one attempt.
    """

    max_attempts: int = 6
    backoff_base_s: float = 0.25
    backoff_max_s: float = 30.0
    jitter: bool = True
    retry_after_max_s: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff_base_s < 0 or self.backoff_max_s < 0:
            raise ValueError("backoff_base_s and backoff_max_s must be >= 0")

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        cap = min(self.backoff_max_s, self.backoff_base_s * 2.0 ** (attempt - 1))
        return rng.uniform(0.0, cap) if self.jitter else cap


def retry_after_s(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Seconds a `Retry-After` header asks for: delta-seconds or an HTTP date; None when absent/invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT by definition
        when = when.replace(tzinfo=dt.UTC)
    now = now or dt.datetime.now(dt.UTC)
    return max(0.0, (when - now).total_seconds())


@dataclass
class RestStats:
    """Counters of one client: plain numbers, never a URL or a secret."""

    requests: int = 0  # HTTP attempts sent
    retries: int = 0  # attempts that were retried
    throttled: int = 0  # 429 responses
    server_errors: int = 0  # 5xx responses
    timeouts: int = 0
    connection_errors: int = 0
    malformed: int = 0  # 2xx bodies that did not parse (truncated)
    bytes: int = 0  # response body bytes received
    seconds: float = 0.0  # time spent waiting on responses, summed over attempts (they overlap)

    def as_dict(self) -> dict[str, int | float]:
        """The counters as a dict (for activity results and manifests)."""
        return asdict(self)


@dataclass
class _Retry:
    """One failed attempt worth retrying."""

    reason: str
    status: int | None = None
    retry_after: float | None = None


# What to do about a 401/403 beyond checking the variables (vendor specifics).
AUTH_NOTES = {
    "kite": "Kite access tokens expire every day at 06:00 IST: log in again for a new KITE_ACCESS_TOKEN"
}


def default_auth_hint(vendor: str) -> str:
    """What a 401/403 from `vendor` asks the user to check: its environment variables (names only)."""
    names = VENDOR_SECRETS.get(vendor)
    hint = f"check {'/'.join(names)}" if names else "check the vendor credentials"
    return f"{hint}; {AUTH_NOTES[vendor]}" if vendor in AUTH_NOTES else hint


def _unwrap(value: str | SecretStr) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value)


class RestClient:
    """Async GET client for one vendor: rate limit, bounded concurrency, retries, redaction.

    Use as `async with RestClient(...) as client:` inside one event loop; `limiter` may be shared across
    loops and threads. `headers` and `params` may hold secrets (plain str or SecretStr): they go on every
    request (params are re-added to absolute URLs of the same origin, e.g. Polygon `next_url`) and are
    redacted everywhere else. `auth_hint` is appended to 401/403 errors (default: `default_auth_hint`).
    `transport`, `sleep` and `seed` are for tests.
    """

    def __init__(
        self,
        vendor: str,
        base_url: str,
        *,
        limiter: TokenBucket,
        retry: RetryPolicy = RetryPolicy(),
        concurrency: int = 8,
        timeout_s: float = 30.0,
        headers: Mapping[str, str | SecretStr] | None = None,
        params: Mapping[str, str | SecretStr] | None = None,
        auth_hint: str | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        seed: int | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.vendor = vendor
        self.base_url = httpx.URL(base_url.rstrip("/"))
        self.limiter, self.retry, self.concurrency, self.timeout_s = limiter, retry, concurrency, timeout_s
        self.auth_hint = default_auth_hint(vendor) if auth_hint is None else auth_hint
        self.stats = RestStats()
        self._headers = {k: _unwrap(v) for k, v in (headers or {}).items()}
        self._params = {k: _unwrap(v) for k, v in (params or {}).items()}
        secrets = [v for k, v in self._headers.items() if k.lower() in SECRET_HEADERS]
        secrets += [v for k, v in self._params.items() if k.lower() in SECRET_PARAMS]
        # "token key:secret" style headers: hide the parts too, wherever they appear (not the scheme word).
        parts = [p for s in secrets for p in re.split(r"[\s:]+", s) if p.lower() not in AUTH_SCHEMES]
        self._secrets = sorted({s for s in secrets + parts if len(s) >= 4}, key=len, reverse=True)
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._http: aiohttp.ClientSession | None = None
        self._semaphore: asyncio.Semaphore | None = None

    async def __aenter__(self) -> RestClient:
        # aiohttp rather than httpx for the transport: its C parser costs a fraction of httpx's CPU per
        # request, which is what bounds requests/s on a small machine (httpx.URL still builds URLs).
        self._http = aiohttp.ClientSession(
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            connector=aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=self.concurrency),
            raise_for_status=False,
        )
        self._semaphore = asyncio.Semaphore(self.concurrency)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- redaction --

    def redact(self, text: str) -> str:
        """`text` with every secret value of this client replaced by ***."""
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def _shown(self, url: httpx.URL) -> str:
        """Path and query of `url` for logs and errors, secrets redacted."""
        query = [(k, REDACTED if k.lower() in SECRET_PARAMS else v) for k, v in url.params.multi_items()]
        shown = url.copy_with(query=None).path
        if query:
            shown += "?" + str(httpx.QueryParams(query)).replace("%2A%2A%2A", REDACTED)
        return self.redact(shown)

    # -- requests --

    def _target(self, path: str, params: Mapping[str, Any] | None) -> httpx.URL:
        """Absolute URL of a request, with the client's (secret) params merged in."""
        if path.startswith(("http://", "https://")):
            url = httpx.URL(path)
            if (url.scheme, url.host, url.port) != (
                self.base_url.scheme,
                self.base_url.host,
                self.base_url.port,
            ):
                raise VendorRequestError(
                    self.vendor,
                    url.path,
                    None,
                    f"refusing to follow a link to another host ({url.host}): credentials stay with "
                    f"{self.base_url.host}",
                )
        else:
            url = self.base_url.copy_with(path=self.base_url.path.rstrip("/") + "/" + path.lstrip("/"))
        merged = {**self._params, **{k: v for k, v in (params or {}).items() if v is not None}}
        return url.copy_merge_params(merged)

    async def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET `path` (relative to base_url, or an absolute URL of the same host) and parse its JSON."""
        return await self._get(path, params, orjson.loads)

    async def get_text(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        """GET `path` and return the body as text (CSV downloads)."""
        return await self._get(path, params, lambda body: body.decode("utf-8"))

    async def iter_pages(
        self,
        path: str,
        params: Mapping[str, Any] | None,
        next_request: Callable[[Any], tuple[str, Mapping[str, Any] | None] | None],
    ) -> AsyncIterator[Any]:
        """Yield JSON pages: GET path, then whatever `next_request(page)` says until it says None.

        A link already followed raises VendorError (a vendor paging loop would never end otherwise).
        """
        seen: set[str] = set()
        while True:
            page = await self.get_json(path, params)
            yield page
            following = next_request(page)
            if following is None:
                return
            path, params = following
            key = str(self._target(path, params))
            if key in seen:
                raise VendorError(
                    self.vendor, self._shown(httpx.URL(key)), None, "the vendor repeats a page link"
                )
            seen.add(key)

    async def _get(self, path: str, params: Mapping[str, Any] | None, parse: Callable[[bytes], Any]) -> Any:
        if self._http is None or self._semaphore is None:
            raise RuntimeError("RestClient is not open: use `async with RestClient(...) as client`")
        url = self._target(path, params)
        last = _Retry("no attempt")
        for attempt in range(1, self.retry.max_attempts + 1):
            async with self._semaphore:
                await self.limiter.acquire()
                outcome = await self._attempt(url, parse)
            if not isinstance(outcome, _Retry):
                return outcome[0]
            last = outcome
            if attempt == self.retry.max_attempts:
                break
            wait = self.retry.backoff(attempt, self._rng)
            if outcome.retry_after is not None:
                if outcome.retry_after > self.retry.retry_after_max_s:
                    raise VendorError(
                        self.vendor,
                        self._shown(url),
                        outcome.status,
                        f"{outcome.reason}; the server asks to wait {outcome.retry_after:.0f} s, more than "
                        f"retry_after_max_s={self.retry.retry_after_max_s:.0f}",
                    )
                wait = max(wait, outcome.retry_after)
            self.stats.retries += 1
            log.warning(
                "vendor request retried",
                vendor=self.vendor,
                url=self._shown(url),
                attempt=attempt,
                reason=outcome.reason,
                status=outcome.status,
                wait_s=round(wait, 3),
            )
            if outcome.status == 429:
                # Throttling is about the vendor account, not this request: every request backs off.
                self.limiter.penalize(wait)
            else:
                await self._sleep(wait)
        raise VendorError(
            self.vendor,
            self._shown(url),
            last.status,
            f"gave up after {self.retry.max_attempts} attempts: {last.reason}",
        )

    async def _attempt(self, url: httpx.URL, parse: Callable[[bytes], Any]) -> tuple[Any] | _Retry:
        """One HTTP attempt: (parsed body,) or a _Retry; raises on errors that retrying cannot fix."""
        assert self._http is not None
        self.stats.requests += 1
        started = time.perf_counter()
        try:
            # The URL is already encoded (httpx.URL): yarl must not quote it again.
            async with self._http.get(yarl.URL(str(url), encoded=True), allow_redirects=False) as resp:
                body = await resp.read()
                status, phrase = resp.status, resp.reason or ""
                retry_after = resp.headers.get("retry-after")
        except TimeoutError:
            self.stats.timeouts += 1
            metrics.count_vendor_failure(self.vendor, "timeout")
            return _Retry(f"timed out after {self.timeout_s:g} s")
        except aiohttp.ClientError as exc:  # connection, protocol and truncated-body failures
            self.stats.connection_errors += 1
            metrics.count_vendor_failure(self.vendor, "connection")
            return _Retry(f"connection error ({type(exc).__name__}: {self.redact(str(exc))[:MESSAGE_CHARS]})")
        finally:
            self.stats.seconds += time.perf_counter() - started
        self.stats.bytes += len(body)
        if 200 <= status < 300:
            try:
                return (parse(body),)
            except ValueError as exc:  # orjson.JSONDecodeError and UnicodeDecodeError are ValueErrors
                self.stats.malformed += 1
                metrics.count_vendor_failure(self.vendor, "malformed")
                return _Retry(f"malformed body ({len(body)} bytes: {type(exc).__name__})", status)
        detail = self._detail(body)
        if status in RETRY_STATUSES:
            if status == 429:
                self.stats.throttled += 1
            else:
                self.stats.server_errors += 1
            metrics.count_vendor_failure(self.vendor, "throttled" if status == 429 else "server_error")
            reason = f"{status} {phrase.lower()}" + (f" ({detail})" if detail else "")
            return _Retry(reason, status, retry_after_s(retry_after))
        message = f"{status} {phrase.lower()}" + (f": {detail}" if detail else "")
        if status in (401, 403) and self.auth_hint:
            message += f" — {self.auth_hint}"
        metrics.count_vendor_failure(self.vendor, "client_error" if 400 <= status < 500 else "server_error")
        if 400 <= status < 500:
            raise VendorRequestError(self.vendor, self._shown(url), status, message)
        raise VendorError(self.vendor, self._shown(url), status, message)

    def _detail(self, body: bytes) -> str:
        """The vendor's own error text from an error body (JSON message/error fields or plain text)."""
        try:
            data = orjson.loads(body)
        except ValueError:
            text = body.decode("utf-8", "replace").strip()
        else:
            if isinstance(data, dict):
                parts = [str(data[k]) for k in ("error_type", "message", "error") if data.get(k)]
                text = ": ".join(parts) if parts else body.decode("utf-8", "replace")
            else:
                text = str(data)
        return self.redact(" ".join(text.split()))[:MESSAGE_CHARS]


# --- Rows to canonical frames ---------------------------------------------------------------------


REJECTED_SCHEMA = pl.Schema({"symbol": pl.String, "ts": pl.String, "raw": pl.String, "reason": pl.String})


_NO_REJECTS = pl.DataFrame(schema=REJECTED_SCHEMA)


def empty_rejected() -> pl.DataFrame:
    """A rejected-rows frame with no rows (one shared instance: building frames costs; never mutate it)."""
    return _NO_REJECTS


@dataclass
class Fetched:
    """What a vendor call returned: canonical rows, and rows that could not be read (never dropped).

    `rejected` has symbol, ts (as shipped), raw (the row's JSON) and reason (the field and its value);
    rows the vendor sent = len(frame) + len(rejected) + rows outside the requested window.
    """

    frame: pl.DataFrame
    rejected: pl.DataFrame = field(default_factory=empty_rejected)


# kind -> Python types accepted as shipped (bool is not a number even though it is an int subclass).
# The *_text kinds read numbers shipped as text (CSV); an empty string there means null.
_KIND_TYPES: dict[str, frozenset[type]] = {
    "float": frozenset({int, float}),
    "int": frozenset({int}),
    "str": frozenset({str}),
    "bool": frozenset({bool}),
    "date": frozenset({str}),
    "iso": frozenset({str}),
    "ms": frozenset({int}),
    "float_text": frozenset({str}),
    "int_text": frozenset({str}),
}
_KIND_DTYPES: dict[str, pl.DataType] = {
    "float": pl.Float64(),
    "int": pl.Int64(),
    "bool": pl.Boolean(),
    "ms": pl.Int64(),
}  # the rest arrive as strings
_KIND_WORDS = {
    "float": "a number",
    "int": "an integer",
    "str": "a string",
    "bool": "true/false",
    "date": "a YYYY-MM-DD date",
    "iso": "an ISO 8601 timestamp with offset",
    "ms": "epoch milliseconds",
    "float_text": "a number",
    "int_text": "an integer",
}
_PARSED_KINDS = frozenset({"date", "iso", "ms", "float_text", "int_text"})
_BLANK_IS_NULL = frozenset({"date", "float_text", "int_text"})
_MISSING = object()
_ISO_Z = "%Y-%m-%dT%H:%M:%SZ"
_ISO_ANY = "%Y-%m-%dT%H:%M:%S%.f%#z"


@dataclass(frozen=True)
class Column:
    """Where one canonical column sits in a vendor row and what it must be.

    `key` is a dict key, a list index, or a tuple path into nested dicts. Kinds: float, int, str, bool,
    date ("YYYY-MM-DD" -> Date), iso (RFC 3339 with offset or Z -> UTC Datetime), ms (epoch ms -> UTC
    Datetime), float_text / int_text (numbers as text, e.g. CSV). A missing or null value rejects the
    row when `required`, else becomes null.
    """

    name: str
    key: str | int | tuple[str, ...]
    kind: str = "float"
    required: bool = True

    @property
    def label(self) -> str:
        """How a reason names the field: the vendor's key."""
        if isinstance(self.key, tuple):
            return ".".join(self.key)
        return f"[{self.key}]" if isinstance(self.key, int) else self.key


def bar_columns(ts_kind: str) -> tuple[Column, ...]:
    """The bar fields Alpaca and Polygon share (t o h l c v vw n); only the time format differs
    (`iso` for Alpaca, `ms` for Polygon)."""
    return (
        Column("ts", "t", ts_kind),
        Column("open", "o"),
        Column("high", "h"),
        Column("low", "l"),
        Column("close", "c"),
        Column("volume", "v"),
        Column("vwap", "vw", required=False),
        Column("trades", "n", "int", required=False),
    )


def _value(row: Any, key: str | int | tuple[str, ...]) -> Any:
    """The raw value at `key`, or _MISSING."""
    if isinstance(key, tuple):
        for part in key:
            if not isinstance(row, dict) or part not in row:
                return _MISSING
            row = row[part]
        return row
    if isinstance(key, int):
        return row[key] if isinstance(row, list | tuple) and -len(row) <= key < len(row) else _MISSING
    return row.get(key, _MISSING) if isinstance(row, dict) else _MISSING


def _column(rows: Sequence[Any], key: str | int | tuple[str, ...], row_types: set[type]) -> list[Any]:
    """Raw values at `key` of every row (_MISSING where absent); fast paths for uniform rows."""
    if row_types == {dict} and isinstance(key, str):
        return [r.get(key, _MISSING) for r in rows]
    if row_types == {list} and isinstance(key, int) and key >= 0:
        return [r[key] if len(r) > key else _MISSING for r in rows]
    return [_value(r, key) for r in rows]


def _convert(series: pl.Series, kind: str) -> pl.Series:
    """Values as shipped -> typed column; values that do not parse become null."""
    if kind == "iso":
        # The exact format most vendors ship parses twice as fast; anything else takes the general one.
        fast = series.str.to_datetime(_ISO_Z, time_unit="ns", time_zone="UTC", strict=False)
        if fast.null_count() == series.null_count():
            return fast
        return series.str.to_datetime(_ISO_ANY, time_unit="ns", time_zone="UTC", strict=False)
    if kind == "ms":
        return pl.from_epoch(series, time_unit="ms").dt.replace_time_zone("UTC").dt.cast_time_unit("ns")
    if kind == "date":
        return series.str.to_date("%Y-%m-%d", strict=False)
    if kind == "float_text":
        return series.str.strip_chars().cast(pl.Float64, strict=False)
    if kind == "int_text":
        return series.str.strip_chars().cast(pl.Int64, strict=False)
    return series


def _quote(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()[:80]


def reject_rows(
    rows: Sequence[Any], reasons: Mapping[int, str], symbols: Sequence[str | None], ts_key: Any = None
) -> pl.DataFrame:
    """The rejected frame for rows[i] with reasons[i]: symbol, ts (as shipped), raw JSON, reason."""
    idx = sorted(reasons)
    return pl.DataFrame(
        {
            "symbol": [symbols[i] for i in idx],
            "ts": [_shown_ts(rows[i], ts_key) for i in idx],
            "raw": [orjson.dumps(rows[i], default=str, option=orjson.OPT_NON_STR_KEYS).decode() for i in idx],
            "reason": [reasons[i] for i in idx],
        },
        schema=REJECTED_SCHEMA,
    )


def split_rows(
    rows: Sequence[Any],
    columns: Sequence[Column],
    *,
    symbol: str | Sequence[str],
    ts_key: str | int | tuple[str, ...] | None = None,
    checks: Sequence[tuple[pl.Expr, pl.Expr]] = (),
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Typed frame of the rows whose every column is valid (plus `symbol`), and the rejected rows.

    `symbol` is the canonical symbol of every row, or one per row (None where unknown); `ts_key` says
    which raw value the rejected frame shows as ts. A row is rejected at its first problem: a required
    value missing or null, a wrong JSON type (a string volume, a boolean price), a timestamp, date or
    number-as-text that does not parse, then `checks` — (is_bad, reason) string expressions evaluated
    on the typed columns, e.g. (pl.col("split_from") <= 0, pl.lit("split_from must be > 0")).
    Type checks are list comprehensions per column and conversion is vectorized: a 10,000-row page
    costs milliseconds.
    """
    n = len(rows)
    symbols = [symbol] * n if isinstance(symbol, str) else list(symbol)
    bad: dict[int, str] = {}
    data: dict[str, pl.Series] = {}
    row_types = {type(r) for r in rows}
    for col in columns:
        raw = _column(rows, col.key, row_types)
        blank_null = col.kind in _BLANK_IS_NULL
        ok_types = _KIND_TYPES[col.kind]
        if set(map(type, raw)) <= ok_types and not (blank_null and "" in raw):
            odd = []  # the common case, checked at C speed
        else:
            odd = [i for i, v in enumerate(raw) if type(v) not in ok_types or (blank_null and v == "")]
        clean = list(raw) if odd else raw
        for i in odd:  # usually none: the fast path skips this loop
            v, clean[i] = raw[i], None
            if v is _MISSING or v is None or v == "":
                if col.required:
                    bad.setdefault(
                        i, f"{col.label} is {'missing' if v is _MISSING else 'empty' if v == '' else 'null'}"
                    )
            else:
                bad.setdefault(i, f"{col.label} = {_quote(v)}: expected {_KIND_WORDS[col.kind]}")
        series = pl.Series(col.name, clean, dtype=_KIND_DTYPES.get(col.kind, pl.String()))
        if col.kind in _PARSED_KINDS:
            shipped_nulls = series.null_count()
            series = _convert(series, col.kind)
            if series.null_count() > shipped_nulls:  # some text did not parse: find which (rare)
                shipped = pl.Series([v is not None for v in clean], dtype=pl.Boolean)
                for i in (series.is_null() & shipped).arg_true().to_list():
                    bad.setdefault(i, f"{col.label} = {_quote(raw[i])}: expected {_KIND_WORDS[col.kind]}")
        data[col.name] = series
    data["symbol"] = pl.Series("symbol", symbols, dtype=pl.String)
    frame = pl.DataFrame(data)
    if checks:
        # Checks see only rows that parsed; the row index maps them back to the raw rows.
        ok = frame.with_row_index("__row").filter(
            pl.Series([i not in bad for i in range(n)], dtype=pl.Boolean)
        )
        for is_bad, reason in checks:
            hits = ok.filter(is_bad.fill_null(False)).select("__row", reason.alias("__reason"))
            for i, why in hits.iter_rows():
                bad.setdefault(i, why)
    if not bad:
        return frame, empty_rejected()
    keep = pl.Series([i not in bad for i in range(n)], dtype=pl.Boolean)
    return frame.filter(keep), reject_rows(rows, bad, symbols, ts_key)


def _shown_ts(row: Any, key: str | int | tuple[str, ...] | None) -> str | None:
    if key is None:
        return None
    v = _value(row, key)
    return None if v is _MISSING or v is None else str(v)


def json_part(page: Any, key: str, expected: type, *, vendor: str, path: str) -> Any:
    """page[key] when it has the `expected` JSON type; expected() when absent or null (no data).

    A page that is not an object, or a value of another type, is a vendor protocol break: VendorError.
    """
    if not isinstance(page, dict):
        raise VendorError(vendor, path, 200, f"expected a JSON object, got {type(page).__name__}")
    value = page.get(key)
    if value is None:
        return expected()
    if not isinstance(value, expected):
        raise VendorError(
            vendor, path, 200, f"'{key}' should be a JSON {expected.__name__}, got {type(value).__name__}"
        )
    return value


# --- Timeframes and windows -----------------------------------------------------------------------

_BAR_DTYPES = polars_schema(BAR_SCHEMA)
_NOT_NULL_BARS = [f.name for f in BAR_SCHEMA if not f.nullable]
_TIMEFRAME = re.compile(r"^([1-9]\d*)(min|h|d|w|mo)$")
DAY_UNITS = frozenset({"d", "w", "mo"})


def split_timeframe(timeframe: str) -> tuple[int, str]:
    """Canonical timeframe -> (count, unit): "5min" -> (5, "min"); units min, h, d, w, mo.

    Raises InputError for anything else.
    """
    m = _TIMEFRAME.match(timeframe) if isinstance(timeframe, str) else None
    if not m:
        raise InputError(
            f"unknown timeframe {timeframe!r}; expected <n>min, <n>h, <n>d, <n>w or <n>mo (e.g. 1min, 1h, 1d)"
        )
    return int(m.group(1)), m.group(2)


def require_aware(value: dt.datetime, name: str) -> dt.datetime:
    """`value` in UTC; InputError when it is naive (a window must be exact instants)."""
    if not isinstance(value, dt.datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise InputError(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(dt.UTC)


def request_start(start: dt.datetime, unit: str, tz: str) -> dt.datetime:
    """Where to start asking the vendor: `start`, or for daily-and-longer bars the local midnight of
    start's local date (vendors stamp those bars at local midnight, before the session open we use)."""
    if unit not in DAY_UNITS:
        return start
    local = start.astimezone(ZoneInfo(tz))
    return local.replace(hour=0, minute=0, second=0, microsecond=0).astimezone(dt.UTC)


def session_open_stamps(frame: pl.LazyFrame, unit: str, tz: str, session_open: dt.time) -> pl.LazyFrame:
    """Canonical bar stamps: daily-and-longer bars come stamped at local midnight of their date, but the
    canonical ts is the bar's open, so they are re-stamped at `session_open` local time of that date (the
    convention of the sample vendor and of validation's session grid). Intraday stamps stay as shipped.
    """
    if unit not in DAY_UNITS:
        return frame
    local_day = pl.col("ts").dt.convert_time_zone(tz).dt.date()
    opened = local_day.cast(pl.Datetime("ns")) + pl.duration(
        hours=session_open.hour, minutes=session_open.minute
    )
    return frame.with_columns(opened.dt.replace_time_zone(tz).dt.convert_time_zone("UTC").alias("ts"))


def rfc3339(value: dt.datetime) -> str:
    """UTC RFC 3339 with a Z, seconds precision (what Alpaca and friends expect)."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def finish_bars(
    parts: Sequence[tuple[pl.DataFrame, pl.DataFrame]],
    *,
    timeframe: str,
    vendor: str,
    tz: str,
    session_open: dt.time,
    start: dt.datetime,
    end: dt.datetime,
) -> Fetched:
    """Parsed pages (split_rows output) -> canonical BAR_SCHEMA bars in [start, end) + all rejected rows.

    Frames need ts, open, high, low, close, volume and symbol; vwap and trades are null when absent.
    """
    _, unit = split_timeframe(timeframe)
    frames = [f for f, _ in parts if len(f)]
    rejected = [r for _, r in parts if len(r)]
    if not frames:
        empty = pl.from_arrow(BAR_SCHEMA.empty_table())
        return Fetched(empty, pl.concat(rejected) if rejected else empty_rejected())
    frame = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
    # Integer bounds: a timezone-aware datetime literal costs more than the whole page's filter.
    lo, hi = (int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000 for t in (start, end))
    constants = {
        "timeframe": pl.lit(timeframe, pl.String).alias("timeframe"),
        "vendor": pl.lit(vendor, pl.String).alias("vendor"),
        "imputed": pl.lit(False, pl.Boolean).alias("imputed"),
    }
    stamped = session_open_stamps(frame.lazy(), unit, tz, session_open)
    typed = stamped.collect_schema()

    def canonical(name: str, dtype: pl.DataType) -> pl.Expr:
        if name in constants:
            return constants[name]
        if name not in typed:
            return pl.lit(None, dtype).alias(name)
        # Casting costs even when it changes nothing; pages are small and many.
        return pl.col(name) if typed[name] == dtype else pl.col(name).cast(dtype, strict=True)

    # One lazy query (a page costs one collect): stamps, window, order, exact canonical dtypes.
    frame = (
        stamped.filter(pl.col("ts").dt.epoch("ns").is_between(lo, hi, closed="left"))
        .sort("symbol", "ts")
        .select(canonical(c, dtype) for c, dtype in _BAR_DTYPES.items())
        .collect()
    )
    if frame.schema != _BAR_DTYPES or any(frame[c].null_count() for c in _NOT_NULL_BARS):
        check_columns(frame, BAR_SCHEMA, f"{vendor} {timeframe} bars")  # raises, naming the column
    return Fetched(frame, pl.concat(rejected) if rejected else empty_rejected())
