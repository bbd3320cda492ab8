"""Where the tenant store's Redis is, and how to keep talking to it through a failover.

``tenancy.redis_url`` takes three forms:

* ``redis://[user:password@]host:port/db`` (or ``rediss://``, ``unix://``): one server, as before;
* ``redis+sentinel://[user:password@]h1:26379,h2:26379/<service>/<db>``: the master Sentinel names
  for ``<service>``, followed through failovers (the password is the data nodes', not the Sentinels');
* ``redis+cluster://[user:password@]h1:6379,h2:6379``: a Redis Cluster found from these startup nodes.

Sentinel and Cluster URLs take one option, ``?failover_wait_s=<seconds>``: how long a store call
keeps retrying while the master is being replaced (default ``FAILOVER_WAIT_S``).

A malformed URL is a ``RedisURLError`` (a ``ConfigError``) naming ``tenancy.redis_url``, raised
when the store is built -- at router start-up and by the CLI, before any connection is attempted.

What a failover needs from the client, and why it is here rather than left to redis-py:

* **Retries that are safe.** redis-py's own retry re-sends any command after a connection error,
  including one that already ran (a token taken twice). Its retries are switched off; ``call``
  retries whole store operations instead, and the store makes each operation idempotent (a
  nonce per admission or usage batch), so a retry never counts twice.
* **No lost writes after a promotion (Sentinel).** Replication is asynchronous, and after
  ``SENTINEL FAILOVER`` the old master keeps accepting writes until Sentinel reconfigures it
  (about ten seconds): a token taken there is forgotten, and the limit would be overshot. So a
  write counts only once a replica acknowledged it (``WAIT 1``). Without an acknowledgement the
  server written to must be the master Sentinel names, with no failover in progress and no other
  server promoted from its history (its ``master_replid`` is nobody's ``master_replid2``), or it
  is a ``StaleMaster`` error and the operation runs again on the new master; if it has online
  replicas that only lag, it waits for them; only a master without replicas is trusted alone.
  (Redis Cluster writes are not fenced: see docs/tenants-and-operations.md.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, unquote

import redis.asyncio as aioredis
from redis import exceptions as rx
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from common.settings import ConfigError

FIELD = "tenancy.redis_url"
FORMS = "redis://host:port/db, rediss://host:port/db, redis+sentinel://h1:26379,h2:26379/service/db or redis+cluster://h1:6379,h2:6379"
REDIS_PORT = 6379
SENTINEL_PORT = 26379
FAILOVER_WAIT_S = 5.0  # longer than a Sentinel failover with a short down-after-milliseconds, short enough to fall back
ALONE_S = 1.0  # how long "nobody acknowledges, and nobody was promoted" is trusted before it is checked again
BACKOFF_S = (0.02, 0.05, 0.1, 0.2, 0.25)

Kind = Literal["single", "sentinel", "cluster"]
Command = tuple[object, ...]
T = TypeVar("T")


class RedisURLError(ConfigError):
    """``tenancy.redis_url`` is malformed; the message says how, never with the password."""


class StaleMaster(rx.ConnectionError):
    """A write reached a server that is no longer (or not yet known to be) the master: it may be lost."""


# Errors after which a store operation runs again (it is idempotent); anything else is the caller's.
RETRYABLE: tuple[type[BaseException], ...] = (
    rx.ConnectionError,
    rx.TimeoutError,
    rx.ReadOnlyError,
    rx.ClusterDownError,
    rx.TryAgainError,
    rx.SlotNotCoveredError,
)
NOT_RETRYABLE: tuple[type[BaseException], ...] = (rx.AuthenticationError, rx.AuthorizationError)
TRANSIENT_REPLIES = ("NOREPLICAS",)  # min-replicas-to-write refusing while replicas reconnect after a failover


@dataclass(frozen=True)
class RedisTarget:
    """A parsed ``tenancy.redis_url``."""

    kind: Kind
    nodes: tuple[tuple[str, int], ...] = ()  # single: the server (none for unix://); sentinel: the Sentinels; cluster: startup nodes
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    url: str = field(default="", repr=False)  # single: handed to redis-py as given (its query options included)
    failover_wait_s: float = FAILOVER_WAIT_S


def redact(url: str) -> str:
    """The URL with any password replaced, for error messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{hosts}{slash}{tail}"


def _fail(url: str, problem: str) -> RedisURLError:
    return RedisURLError(f"invalid configuration: {FIELD}: {problem} (expected {FORMS}); got {redact(url)!r}")


def _host_port(url: str, item: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    if not item:
        raise _fail(url, "empty host in the host list")
    if item.startswith("["):
        host, bracket, rest = item[1:].partition("]")
        if not bracket or not host:
            raise _fail(url, f"unclosed or empty IPv6 address {item!r}")
        if rest and not rest.startswith(":"):
            raise _fail(url, f"unexpected {rest!r} after the IPv6 address")
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = item.partition(":")
        if ":" in port_text:
            raise _fail(url, f"{item!r}: an IPv6 address must be written in brackets, [addr]:port")
        if not host:
            raise _fail(url, f"missing host in {item!r}")
        if item.endswith(":"):
            raise _fail(url, f"missing port after {host!r}:")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _fail(url, f"port {port_text!r} of {host!r} is not a number from 1 to 65535")
    return host, int(port_text)


def _db(url: str, text: str) -> int:
    if not text.isdigit():
        raise _fail(url, f"database {text!r} is not a non-negative integer")
    return int(text)


def _userinfo(netloc: str) -> tuple[str | None, str | None, str]:
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return None, None, netloc
    user, colon, password = userinfo.partition(":")
    return unquote(user) or None, unquote(password) if colon else None, hosts


def _options(url: str, query: str) -> float:
    wait = FAILOVER_WAIT_S
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name != "failover_wait_s":
            raise _fail(url, f"unknown option {name!r} (the only option is failover_wait_s)")
        try:
            wait = float(value)
        except ValueError:
            raise _fail(url, f"failover_wait_s={value!r} is not a number of seconds") from None
        if not 0 <= wait <= 600:
            raise _fail(url, f"failover_wait_s={value!r} must be from 0 to 600 seconds")
    return wait


def parse_redis_url(url: str) -> RedisTarget:
    """Check ``tenancy.redis_url`` and say which kind of deployment it names (no connection is made)."""
    if not url or not url.strip():
        raise _fail(url, "empty URL")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise _fail(url, "no scheme")
    if scheme == "unix":
        if not rest.split("?", 1)[0]:
            raise _fail(url, "unix:// needs a socket path")
        return RedisTarget("single", url=url)
    if scheme not in ("redis", "rediss", "redis+sentinel", "redis+cluster"):
        raise _fail(url, f"unknown scheme {scheme + '://'!r}")
    rest, _, fragment = rest.partition("#")
    if fragment:
        raise _fail(url, "unexpected '#' fragment")
    location, _, query = rest.partition("?")
    netloc, slash, path = location.partition("/")
    username, password, hosts = _userinfo(netloc)
    if not hosts:
        raise _fail(url, "missing host")
    items = hosts.split(",")
    if scheme in ("redis", "rediss"):
        if len(items) > 1:
            raise _fail(url, f"{scheme}:// names one server; for several use redis+sentinel:// or redis+cluster://")
        node = _host_port(url, items[0], REDIS_PORT)
        if "/" in path:
            raise _fail(url, f"path {'/' + path!r}: expected /<db>")
        db = _db(url, path) if path else 0
        return RedisTarget("single", (node,), db=db, username=username, password=password, url=url)
    wait = _options(url, query)
    if scheme == "redis+sentinel":
        sentinels = tuple(_host_port(url, i, SENTINEL_PORT) for i in items)
        parts = path.split("/") if slash else []
        if parts and parts[-1] == "" and len(parts) > 1:
            parts = parts[:-1]  # a trailing slash
        if not parts or not parts[0]:
            raise _fail(url, "missing the Sentinel service name: redis+sentinel://h1:26379,h2:26379/<service>/<db>")
        if len(parts) > 2:
            raise _fail(url, f"path {'/' + path!r}: expected /<service>/<db>")
        db = _db(url, parts[1]) if len(parts) == 2 else 0
        return RedisTarget("sentinel", sentinels, unquote(parts[0]), db, username, password, failover_wait_s=wait)
    nodes = tuple(_host_port(url, i, REDIS_PORT) for i in items)
    if path not in ("", "0"):
        raise _fail(url, f"path {'/' + path!r}: Redis Cluster has only database 0, write redis+cluster://h1:6379,h2:6379")
    return RedisTarget("cluster", nodes, username=username, password=password, failover_wait_s=wait)


def check_redis_url(url: str | None) -> None:
    """For start-up checks (``check-config``): raise ``RedisURLError`` when the URL is set and malformed."""
    if url:
        parse_redis_url(url)


def _no_retry() -> Retry:
    """redis-py retries nothing by itself: a resent write may already have run (see ``RedisConnection.call``)."""
    return Retry(NoBackoff(), 0)


class RedisConnection:
    """The client for one ``RedisTarget``, with idempotent-operation retries and (Sentinel) write fencing."""

    def __init__(self, target: RedisTarget, timeout_s: float) -> None:
        self.target = target
        self.kind: Kind = target.kind
        self.timeout_s = timeout_s
        self._sentinel: Sentinel | None = None
        self._wait_ms = max(5, int(timeout_s * 250))  # WAIT must answer well within the socket timeout
        self._alone: tuple[tuple[str, int], float] | None = None
        common: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s, "retry": _no_retry(),
                                  "health_check_interval": 0}  # fmt: skip
        self.client: Any
        if target.kind == "single":
            self.client = aioredis.Redis.from_url(target.url, **common)
        elif target.kind == "sentinel":
            self._sentinel = Sentinel(
                list(target.nodes),
                sentinel_kwargs=dict(common),
                db=target.db,
                username=target.username,
                password=target.password,
                **common,
            )
            self.client = self._sentinel.master_for(target.service)
        else:
            self.client = RedisCluster(
                startup_nodes=[ClusterNode(h, p) for h, p in target.nodes],
                username=target.username,
                password=target.password,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry=_no_retry(),
            )
        self.fenced = target.kind == "sentinel"
        self.wait_s = target.failover_wait_s if target.kind != "single" else 0.0

    # -- retries ----------------------------------------------------------------
    async def call(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run an idempotent store operation, again after connection-level errors, for up to ``wait_s``.

        One server (``redis://``) gets a single immediate retry (a pooled connection the server
        closed); Sentinel and Cluster keep trying, with a short backoff, while a new master takes
        over. When the time is up the error goes to the caller (the service's circuit breaker).
        """
        deadline = time.monotonic() + self.wait_s
        attempt = 0
        while True:
            try:
                return await op()
            except NOT_RETRYABLE:
                raise
            except Exception as exc:
                if not isinstance(exc, RETRYABLE) and not (isinstance(exc, rx.ResponseError) and str(exc).startswith(TRANSIENT_REPLIES)):
                    raise
                attempt += 1
                pause = BACKOFF_S[min(attempt - 1, len(BACKOFF_S) - 1)] if self.wait_s else 0.0
                if attempt > 1 and time.monotonic() + pause > deadline:
                    raise
                await self._recover()
                await asyncio.sleep(pause)

    async def _recover(self) -> None:
        """Drop idle pooled connections, which may lead to the old master; new ones ask Sentinel afresh."""
        if self.kind == "cluster":
            return  # redis-py re-reads the slot map after a connection error
        with contextlib.suppress(Exception):
            await self.client.connection_pool.disconnect(inuse_connections=False)
        self._alone = None

    # -- writes -------------------------------------------------------------------
    def pipeline(self) -> Any:
        """A non-transactional pipeline for reads (each command routed to its slot's node under Cluster)."""
        return self.client.pipeline(transaction=False)

    async def execute(self, commands: list[Command]) -> list[Any]:
        """Send writes as one pipeline; under Sentinel, return only once they are safe from a failover."""
        if not self.fenced:
            pipe = self.pipeline()
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute())
        pool = self.client.connection_pool
        conn = await pool.get_connection()
        try:
            return await self._fenced(conn, commands)
        except rx.ResponseError:
            raise  # every reply was read: the connection is in step
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    async def _fenced(self, conn: Any, commands: list[Command]) -> list[Any]:
        """The writes and ``WAIT 1`` on one connection we hold, so we know which server took them.

        No acknowledgement: a master Sentinel no longer names (or one a failover is replacing)
        raises ``StaleMaster`` and the operation runs again on the new one; a master whose
        replicas lag is waited for (``WAIT`` again, up to ``wait_s``); a master without replicas
        is trusted as it is, and that verdict for ``ALONE_S``.
        """
        address = (str(conn.host), int(conn.port))
        alone = self._alone is not None and self._alone[0] == address and self._alone[1] > time.monotonic()
        wait: list[Command] = [] if alone else [("WAIT", 1, self._wait_ms)]
        await conn.send_packed_command(conn.pack_commands([*commands, *wait]))
        replies: list[Any] = []
        error: rx.ResponseError | None = None
        for _ in range(len(commands) + len(wait)):
            try:
                replies.append(await conn.read_response())
            except rx.ResponseError as exc:  # read on: the connection must stay in step
                error = error or exc
                replies.append(exc)
        if wait and isinstance(replies[-1], rx.ResponseError):
            raise StaleMaster(f"{address[0]}:{address[1]} is a replica now: {replies[-1]}")
        if error is not None:
            raise error
        if alone:
            return replies
        acks = int(replies.pop())
        deadline = time.monotonic() + self.wait_s
        while acks < 1:
            verdict = await self._verdict(address)
            if verdict == "stale":
                raise StaleMaster(f"no replica acknowledged a write to {address[0]}:{address[1]}, which is no longer the master")
            if verdict == "alone":
                self._alone = (address, time.monotonic() + ALONE_S)
                break
            if time.monotonic() > deadline:
                raise StaleMaster(f"no replica of {address[0]}:{address[1]} acknowledged a write within {self.wait_s:g} s")
            await conn.send_command("WAIT", 1, self._wait_ms)
            acks = int(await conn.read_response())
        return replies

    async def _verdict(self, address: tuple[str, int]) -> Literal["stale", "alone", "lagging"]:
        """Is ``address`` still the master (and then: with online replicas that lag, or none)?

        It is stale unless Sentinel names it, no failover is under way, and nobody was promoted
        from its history. All three checks are needed: the Sentinel leading a failover flags it
        (``failover_in_progress``) but marks the replica it promotes as down for a while, another
        Sentinel may not know of the failover yet, while the promoted replica itself says
        ``role:master`` and carries the old master's replication id as its ``master_replid2``.
        """
        assert self._sentinel is not None
        try:
            named = await self._sentinel.discover_master(self.target.service)
            witness = self._sentinel.sentinels[0]  # discover_master puts the Sentinel that answered first
            state: Any = await witness.sentinel_master(self.target.service)
            replicas: Any = await witness.sentinel_slaves(self.target.service)
        except rx.RedisError:
            return "stale"
        if (str(named[0]), int(named[1])) != address:
            return "stale"
        flags = state.get("flags", "")
        if "failover_in_progress" in (flags.split(",") if isinstance(flags, str) else flags):
            return "stale"
        mine = await self._replication(address)
        if mine is None or mine.get("role") != "master":
            return "stale"
        for replica in replicas:  # every one Sentinel lists, down or not: the promoted one is "down" to it for a while
            other = await self._replication((str(replica["ip"]), int(replica["port"])))
            if other is not None and other.get("role") == "master" and str(other.get("master_replid2")) == str(mine.get("master_replid")):
                return "stale"  # promoted from our history: what we wrote will be discarded when we are demoted
        online = [v for k, v in mine.items() if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"]
        return "lagging" if online else "alone"

    async def _replication(self, address: tuple[str, int]) -> dict[str, Any] | None:
        """``INFO replication`` of one server, on a connection of its own; None when it does not answer."""
        r = aioredis.Redis(host=address[0], port=address[1], username=self.target.username, password=self.target.password,
                           socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s, retry=_no_retry())  # fmt: skip
        try:
            info: dict[str, Any] = await r.info("replication")
            return info
        except rx.RedisError:
            return None
        finally:
            await r.aclose()

    async def aclose(self) -> None:
        await self.client.aclose()
        if self._sentinel is not None:
            await self._sentinel.aclose()


def connect(url: str, timeout_s: float) -> RedisConnection:
    """Parse ``tenancy.redis_url`` and build its client (connections are opened on first use)."""
    return RedisConnection(parse_redis_url(url), timeout_s)
