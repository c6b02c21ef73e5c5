"""REDIS_URL, and the one place it becomes a connection: a redis-py client (blocking or
asyncio) for the API and the workers, or the broker URL and transport options of Celery.

The forms a REDIS_URL takes:

- `redis://[user:password@]host:6379/0`, `rediss://...` (TLS), `unix:///path/redis.sock?db=0`;
- Redis Sentinel: `sentinel://[user:password@]host1:26379;sentinel://host2:26379/0`, each
  address a sentinel (26379 when no port is given), plus the name of the master group they
  watch. The settings take that name from MLP_REDIS_SENTINEL_MASTER and write it into the
  URL as `?master_name=NAME` (`with_sentinel_master`), so that the URL alone, which every
  process passes around, says where Redis is. The db number and the credentials may be
  written on any one address; they are the master's (the sentinels are asked without a
  password). Kombu and Celery's result backend read them from the first address only, so
  `celery_url` writes them on every one.

A Sentinel client asks the sentinels where the master is before each new connection, so
after a failover new connections go to the new master.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis as redis_lib
import redis.asyncio as aredis
import redis.asyncio.sentinel as async_sentinel
import redis.sentinel as sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["SENTINEL_PORT", "SentinelUrl", "is_sentinel_url", "with_sentinel_master",
           "redis_from_url", "async_redis_from_url", "celery_url",
           "celery_transport_options"]

SENTINEL_PORT = 26379
_MASTER_PARAM = "master_name"  # the name kombu's transport option has too
# Celery's connections to the sentinels (kombu would give them no timeouts at all)
_CELERY_SENTINEL_SOCKET = {"socket_connect_timeout": 3, "socket_timeout": 10}


def is_sentinel_url(url: str) -> bool:
    return url.strip().lower().startswith("sentinel://")


@dataclass(frozen=True)
class SentinelUrl:
    """A `sentinel://` REDIS_URL taken apart. `userinfo` is kept as written (quoted), for
    the URLs kombu reads; `username` and `password` are unquoted, for redis-py."""

    sentinels: tuple[tuple[str, int], ...]
    master: str | None
    db: int
    userinfo: str = field(repr=False)  # may hold a password

    @classmethod
    def parse(cls, url: str) -> SentinelUrl:
        """Raise ValueError, naming REDIS_URL, for an address that is not
        `sentinel://[userinfo@]host[:port][/db]`, or addresses that disagree on the db
        number, the credentials or the master's name."""
        sentinels: list[tuple[str, int]] = []
        dbs, userinfos, masters = set(), set(), set()
        for part in (p.strip() for p in url.split(";")):
            if not part:
                continue
            try:
                parts = urlsplit(part)
                port = parts.port or SENTINEL_PORT
            except ValueError as exc:
                raise ValueError(f"REDIS_URL: {exc} in sentinel address {_shown(part)!r}") \
                    from None
            if parts.scheme.lower() != "sentinel" or not parts.hostname:
                raise ValueError("REDIS_URL: every address of a Sentinel URL is "
                                 f"sentinel://host:port, not {_shown(part)!r}")
            sentinels.append((parts.hostname, port))
            userinfo, _, _ = parts.netloc.rpartition("@")
            if userinfo:
                userinfos.add(userinfo)
            path = parts.path.strip("/")
            if path:
                if not path.isdigit():
                    raise ValueError(f"REDIS_URL: the db number of a Sentinel URL is an "
                                     f"integer, not {path!r}")
                dbs.add(int(path))
            query = parse_qs(parts.query, keep_blank_values=True)
            unknown = sorted(set(query) - {_MASTER_PARAM})
            if unknown:
                raise ValueError(f"REDIS_URL: a Sentinel URL takes only ?{_MASTER_PARAM}=, "
                                 f"not {', '.join(unknown)}")
            masters.update(v.strip() for v in query.get(_MASTER_PARAM, ()))
        for what, values in (("db numbers", dbs), ("credentials", userinfos),
                             ("master names", masters)):
            if len(values) > 1:
                raise ValueError(f"REDIS_URL: the sentinel addresses give different {what}")
        if not sentinels:
            raise ValueError("REDIS_URL: a Sentinel URL names at least one sentinel")
        master = next(iter(masters), None)
        if master == "":
            raise ValueError(f"REDIS_URL: ?{_MASTER_PARAM}= is empty")
        return cls(sentinels=tuple(sentinels), master=master,
                   db=next(iter(dbs), 0), userinfo=next(iter(userinfos), ""))

    @property
    def username(self) -> str | None:
        name = self.userinfo.partition(":")[0]
        return unquote(name) if name else None

    @property
    def password(self) -> str | None:
        _, sep, password = self.userinfo.partition(":")
        return unquote(password) if sep else None

    def url(self, *, with_master: bool = True) -> str:
        """Every address with the credentials and the db number; `?master_name=` last."""
        auth = f"{self.userinfo}@" if self.userinfo else ""
        text = ";".join(f"sentinel://{auth}{_netloc_host(host)}:{port}/{self.db}"
                        for host, port in self.sentinels)
        if with_master and self.master:
            text += f"?{_MASTER_PARAM}={quote(self.master, safe='')}"
        return text

    def required_master(self) -> str:
        if not self.master:
            raise ValueError("a sentinel:// REDIS_URL needs the name of the master group its "
                             "sentinels watch: set MLP_REDIS_SENTINEL_MASTER")
        return self.master

    def client_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The master's connection options: the caller's, with the URL's db and
        credentials."""
        options = {"db": self.db, **kwargs}
        if self.username:
            options.setdefault("username", self.username)
        if self.password is not None:
            options.setdefault("password", self.password)
        return options


def with_sentinel_master(url: str, master: str | None) -> str:
    """`url` with the master's name written in (for a Sentinel URL; others are returned
    as they are). Raise ValueError when the URL names another master, or none is known."""
    if not is_sentinel_url(url):
        if master:
            raise ValueError("MLP_REDIS_SENTINEL_MASTER is set, but REDIS_URL does not name "
                             "sentinels (sentinel://host:26379;sentinel://host2:26379/0)")
        return url
    parsed = SentinelUrl.parse(url)
    if master and parsed.master and master != parsed.master:
        raise ValueError(f"MLP_REDIS_SENTINEL_MASTER ({master!r}) and REDIS_URL's "
                         f"?{_MASTER_PARAM}= ({parsed.master!r}) disagree")
    parsed = SentinelUrl(sentinels=parsed.sentinels, master=master or parsed.master,
                         db=parsed.db, userinfo=parsed.userinfo)
    parsed.required_master()
    return parsed.url()


def redis_from_url(url: str, **kwargs: Any) -> redis_lib.Redis:
    """A blocking redis-py client for any REDIS_URL form. `kwargs` (timeouts and the like)
    apply to the connections to Redis; with Sentinel, their `socket_*` ones to the
    connections to the sentinels as well."""
    kwargs.setdefault("socket_timeout", 10)
    kwargs.setdefault("health_check_interval", 30)
    if not is_sentinel_url(url):
        return redis_lib.Redis.from_url(url, **kwargs)
    parsed = SentinelUrl.parse(url)
    manager = sentinel.Sentinel(list(parsed.sentinels),
                                sentinel_kwargs=_sentinel_kwargs(kwargs, Retry),
                                **parsed.client_kwargs(kwargs))
    return manager.master_for(parsed.required_master())


def async_redis_from_url(url: str, **kwargs: Any) -> aredis.Redis:
    """The asyncio client for any REDIS_URL form (the API's event streams use it)."""
    if not is_sentinel_url(url):
        return aredis.Redis.from_url(url, **kwargs)
    parsed = SentinelUrl.parse(url)
    manager = async_sentinel.Sentinel(
        list(parsed.sentinels), sentinel_kwargs=_sentinel_kwargs(kwargs, AsyncRetry),
        **parsed.client_kwargs(kwargs))
    return manager.master_for(parsed.required_master())


def celery_url(url: str) -> str:
    """The broker (and result backend) URL that Celery and kombu read for a REDIS_URL:
    a unix socket is `redis+socket:///path?virtual_host=N`; a Sentinel URL has the db and
    credentials on every address and no query (the master's name goes into the transport
    options, `celery_transport_options`)."""
    if is_sentinel_url(url):
        return SentinelUrl.parse(url).url(with_master=False)
    parts = urlsplit(url)
    if parts.scheme != "unix":
        return url
    db = parse_qs(parts.query).get("db", ["0"])[0]
    return f"redis+socket://{parts.path}?virtual_host={db}"


def celery_transport_options(url: str) -> dict[str, Any]:
    """What kombu's Sentinel transport and Celery's Sentinel result backend need besides
    the URL: the master's name; nothing for the other forms."""
    if not is_sentinel_url(url):
        return {}
    return {"master_name": SentinelUrl.parse(url).required_master(),
            "sentinel_kwargs": _sentinel_kwargs(_CELERY_SENTINEL_SOCKET, Retry)}


def _sentinel_kwargs(kwargs: dict[str, Any], retry_class: type) -> dict[str, Any]:
    """Options of the connections to the sentinels: the caller's socket_* ones (timeouts),
    and no retries: a sentinel that does not answer is passed over for the next one at
    once, where redis-py's default would retry it with backoff (seconds, for every new
    connection to the master while one sentinel is down)."""
    options = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
    return {**options, "retry": retry_class(NoBackoff(), 0)}


def _netloc_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _shown(part: str) -> str:
    """An address for a message, without its credentials."""
    scheme, sep, rest = part.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else part.rpartition("@")[2]
