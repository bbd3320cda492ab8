"""``tenancy.redis_url``: every accepted form, and a clear error naming the field for every malformed one."""

from __future__ import annotations

import pytest

from common.settings import ConfigError
from router.tenants.redis_connect import FAILOVER_WAIT_S, RedisTarget, RedisURLError, check_redis_url, parse_redis_url, redact
from router.tenants.redis_store import RedisStore


@pytest.mark.parametrize(
    "url,expected",
    [
        ("redis://localhost:6379/0", RedisTarget("single", (("localhost", 6379),), url="redis://localhost:6379/0")),
        ("redis://redis", RedisTarget("single", (("redis", 6379),), url="redis://redis")),
        ("redis://redis:6380/", RedisTarget("single", (("redis", 6380),), url="redis://redis:6380/")),
        ("rediss://cache.example:6380/3", RedisTarget("single", (("cache.example", 6380),), db=3, url="rediss://cache.example:6380/3")),
        (
            "redis://:s3cret@redis:6379/1",
            RedisTarget("single", (("redis", 6379),), db=1, password="s3cret", url="redis://:s3cret@redis:6379/1"),
        ),
        ("redis://[::1]:6379/2", RedisTarget("single", (("::1", 6379),), db=2, url="redis://[::1]:6379/2")),
        (
            "redis://redis:6379/0?ssl_cert_reqs=none",
            RedisTarget("single", (("redis", 6379),), url="redis://redis:6379/0?ssl_cert_reqs=none"),
        ),
        ("unix:///run/redis.sock?db=2", RedisTarget("single", url="unix:///run/redis.sock?db=2")),
        (
            "redis+sentinel://s1:26379,s2:26380/mymaster/2",
            RedisTarget("sentinel", (("s1", 26379), ("s2", 26380)), "mymaster", 2),
        ),
        ("redis+sentinel://s1,s2/mymaster", RedisTarget("sentinel", (("s1", 26379), ("s2", 26379)), "mymaster", 0)),
        ("redis+sentinel://s1/mymaster/", RedisTarget("sentinel", (("s1", 26379),), "mymaster", 0)),
        (
            "redis+sentinel://app:p%40ss@[fd00::1]:26379,s2/tenants/0/",
            RedisTarget("sentinel", (("fd00::1", 26379), ("s2", 26379)), "tenants", 0, "app", "p@ss"),
        ),
        (
            "redis+sentinel://s1/mymaster/0?failover_wait_s=2.5",
            RedisTarget("sentinel", (("s1", 26379),), "mymaster", 0, failover_wait_s=2.5),
        ),
        ("redis+cluster://n1:7000,n2:7001", RedisTarget("cluster", (("n1", 7000), ("n2", 7001)))),
        ("redis+cluster://n1", RedisTarget("cluster", (("n1", 6379),))),
        ("redis+cluster://:pw@n1:7000/0", RedisTarget("cluster", (("n1", 7000),), password="pw")),
        ("redis+cluster://n1:7000/?failover_wait_s=0", RedisTarget("cluster", (("n1", 7000),), failover_wait_s=0.0)),
        ("REDIS+CLUSTER://n1:7000", RedisTarget("cluster", (("n1", 7000),))),
    ],
)
def test_every_form_parses(url: str, expected: RedisTarget) -> None:
    got = parse_redis_url(url)
    assert got == expected
    assert got.password == expected.password and got.url == expected.url  # (not compared by ==: repr=False fields are)
    assert got.failover_wait_s == expected.failover_wait_s
    check_redis_url(url)


@pytest.mark.parametrize(
    "url,says",
    [
        ("", "empty URL"),
        ("   ", "empty URL"),
        ("localhost:6379", "no scheme"),
        ("http://redis:6379/0", "unknown scheme 'http://'"),
        ("redis+sentinels://s1/m", "unknown scheme"),
        ("rediss+cluster://n1", "unknown scheme"),
        ("redis://", "missing host"),
        ("redis:///0", "missing host"),
        ("redis://:pw@/0", "missing host"),
        ("redis://redis:port/0", "port 'port'"),
        ("redis://redis:0/0", "port '0'"),
        ("redis://redis:65536/0", "port '65536'"),
        ("redis://redis:/0", "missing port"),
        ("redis://redis:6379/zero", "database 'zero'"),
        ("redis://redis:6379/-1", "database '-1'"),
        ("redis://redis:6379/0/1", "expected /<db>"),
        ("redis://a:6379,b:6379/0", "redis+sentinel:// or redis+cluster://"),
        ("redis://::1:6379/0", "in brackets"),
        ("redis://[::1/0", "unclosed"),
        ("redis://[::1]x/0", "after the IPv6 address"),
        ("redis://redis:6379/0#x", "fragment"),
        ("unix://", "socket path"),
        ("redis+sentinel://s1:26379", "missing the Sentinel service name"),
        ("redis+sentinel://s1:26379/", "missing the Sentinel service name"),
        ("redis+sentinel://s1:26379//0", "missing the Sentinel service name"),
        ("redis+sentinel://s1:26379/m/x", "database 'x'"),
        ("redis+sentinel://s1:26379/m/0/extra", "expected /<service>/<db>"),
        ("redis+sentinel://s1,,s2/m", "empty host"),
        ("redis+sentinel://s1,/m", "empty host"),
        ("redis+sentinel://s1:99999/m", "port '99999'"),
        ("redis+sentinel://s1/m?timeout=1", "unknown option 'timeout'"),
        ("redis+sentinel://s1/m?failover_wait_s=soon", "not a number"),
        ("redis+sentinel://s1/m?failover_wait_s=-1", "from 0 to 600"),
        ("redis+cluster://", "missing host"),
        ("redis+cluster://n1:7000/1", "only database 0"),
        ("redis+cluster://n1:7000/0/x", "only database 0"),
        ("redis+cluster://n1:x", "port 'x'"),
        ("redis+cluster://n1,:7000", "missing host"),
    ],
)
def test_malformed_urls_name_the_field_and_the_problem(url: str, says: str) -> None:
    with pytest.raises(RedisURLError) as exc:
        parse_redis_url(url)
    msg = str(exc.value)
    assert "tenancy.redis_url" in msg and says in msg, msg
    assert "redis+sentinel://h1:26379,h2:26379/service/db" in msg, "the message shows the accepted forms"
    assert isinstance(exc.value, ConfigError), "the CLI reports it like any configuration error (exit 2)"


def test_the_password_never_appears_in_an_error() -> None:
    for url in ("redis://:hunter2@redis:bad/0", "redis+sentinel://user:hunter2@s1/m/x", "redis+cluster://:hunter2@n1/3"):
        with pytest.raises(RedisURLError) as exc:
            parse_redis_url(url)
        assert "hunter2" not in str(exc.value) and "***" in str(exc.value)
    assert redact("redis://u:pw@h:1/0") == "redis://u:***@h:1/0"
    assert redact("redis://u@h:1/0") == "redis://u@h:1/0"
    assert redact("redis://h:1/0") == "redis://h:1/0"


def test_the_store_refuses_a_malformed_url_before_connecting() -> None:
    with pytest.raises(RedisURLError, match="tenancy.redis_url"):
        RedisStore("redis+sentinel://s1:26379")
    check_redis_url(None)
    check_redis_url("")


def test_defaults() -> None:
    assert parse_redis_url("redis+sentinel://s/m").failover_wait_s == FAILOVER_WAIT_S
    assert "hunter2" not in repr(parse_redis_url("redis://:hunter2@h/0")), "the password is kept out of repr"
