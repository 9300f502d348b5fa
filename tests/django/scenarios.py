"""Django scenarios that test_django_e2e.py runs through poolproxy, one per subprocess:
``python scenarios.py NAME`` (settings from the PP_* variables, see pp_project/settings.py).

Each scenario asserts what must hold and prints one line ``PP_RESULT {json}`` with the figures
the pytest side checks and reports; a failed assertion exits non-zero with its traceback.
Running in a subprocess keeps Django's global state (settings, connections, app registry) out of
the rest of the test suite.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import threading
import time
import traceback
import urllib.request
import zoneinfo
from collections import Counter as Tally
from collections.abc import Callable
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pp_project.settings")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import django  # noqa: E402

django.setup()

from django.core.signals import request_finished, request_started  # noqa: E402
from django.db import (  # noqa: E402
    DatabaseError,
    IntegrityError,
    OperationalError,
    connection,
    connections,
    transaction,
)
from django.db.backends.signals import connection_created  # noqa: E402
from django.db.models import Avg, Count, F, Sum  # noqa: E402
from django.db.models.deletion import ProtectedError  # noqa: E402
from django.db.models.functions import TruncDay  # noqa: E402
from django.utils import timezone  # noqa: E402
from pp_app.models import Account, Author, Book, Counter, Event, Job, Review, Tag  # noqa: E402

PG = connection.vendor == "postgresql"
TOKYO = zoneinfo.ZoneInfo("Asia/Tokyo")
UTC = dt.UTC
THREADS = int(os.environ.get("PP_THREADS", "16"))
POOL_SIZE = int(os.environ.get("PP_POOL_SIZE", "4"))

# 16 distinct time zones for the clients of the session_leak threads (PostgreSQL).
ZONES = ["Europe/Paris", "Europe/London", "Asia/Kolkata", "Australia/Sydney", "America/Chicago",
         "America/Denver", "America/Los_Angeles", "Pacific/Auckland", "Africa/Cairo",
         "Asia/Shanghai", "Asia/Dubai", "America/Sao_Paulo", "Europe/Moscow", "Asia/Singapore",
         "America/Anchorage", "Pacific/Honolulu"]

SCENARIOS: dict[str, Callable[[], dict[str, Any]]] = {}


def scenario(fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    SCENARIOS[fn.__name__] = fn
    return fn


# --------------------------------------------------------------------------- helpers


def sql_value(sql: str, alias: str = "default", params: tuple = ()) -> Any:
    with connections[alias].cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]


def backend_id(alias: str = "default") -> int:
    """The server connection (PostgreSQL backend pid / MariaDB connection id) serving us now."""
    return int(sql_value("SELECT pg_backend_pid()" if PG else "SELECT CONNECTION_ID()", alias))


def session_state(alias: str) -> dict[str, str]:
    """Session settings a leaking pooler would carry from one client to another."""
    if PG:
        names = ("TimeZone", "IntervalStyle", "application_name", "work_mem", "statement_timeout")
        with connections[alias].cursor() as cur:
            cur.execute("SELECT " + ", ".join(f"current_setting('{n}')" for n in names))
            return dict(zip(names, cur.fetchone(), strict=True))
    names = ("time_zone", "tx_isolation", "sql_auto_is_null", "foreign_key_checks", "sql_mode")
    with connections[alias].cursor() as cur:
        cur.execute("SELECT " + ", ".join(f"@@SESSION.{n}" for n in names))
        return {n: str(v) for n, v in zip(names, cur.fetchone(), strict=True)}


def tx_isolation(alias: str) -> str:
    """The isolation level of the transaction the alias is in (call inside atomic())."""
    if PG:
        return str(sql_value("SELECT current_setting('transaction_isolation')", alias))
    return str(sql_value("SELECT @@SESSION.tx_isolation", alias))


def run_threads(n: int, fn: Callable[[int], Any], timeout: float = 100.0) -> list[Any]:
    """Run ``fn(i)`` in ``n`` threads started together; each closes its Django connections.
    Raises with every thread's traceback if any failed."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[str] = []

    def target(i: int) -> None:
        try:
            barrier.wait(30)
            results[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(f"thread {i}: {exc!r}\n{traceback.format_exc()}")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        errors.append(f"threads still running after {timeout}s (deadlock or lost wakeup?)")
    if errors:
        raise AssertionError(f"{len(errors)} thread(s) failed:\n" + "\n".join(errors[:5]))
    return results


def is_deadlock(exc: BaseException) -> bool:
    """MariaDB 1213 (InnoDB deadlock; the app must retry) / PostgreSQL 40P01."""
    cause = exc.__cause__
    code = getattr(cause, "args", [None])[0] if cause is not None else None
    return code == 1213 or getattr(cause, "sqlstate", None) == "40P01"


class PoolSampler(threading.Thread):
    """Polls poolproxy's /pools while a scenario runs: the most server connections and clients
    the pool of our listener and database ever had."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.url = os.environ.get("PP_ADMIN_POOLS_URL", "")
        self.listener = os.environ.get("PP_LISTENER", "")
        self.database = connection.settings_dict["NAME"]
        self.max_servers = self.max_clients = self.max_waiters = 0
        self.samples = 0
        self.error = ""
        self._stop_event = threading.Event()

    def run(self) -> None:
        while self.url and not self._stop_event.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=2) as resp:
                    pools = json.load(resp)
                servers = clients = waiters = 0
                for pool in pools:  # MySQL pools may be split by capability variant: sum them
                    if (pool.get("listener"), pool.get("database")) != (self.listener,
                                                                         self.database):
                        continue
                    servers += sum(pool["servers"].values())
                    clients += sum(pool["clients"].values())  # by state: active/waiting/idle
                    waiters += int(pool["waiters"])
            except Exception as exc:  # noqa: BLE001 - reported in the result
                self.error = repr(exc)
                self._stop_event.wait(0.05)
                continue
            self.max_servers = max(self.max_servers, servers)
            self.max_clients = max(self.max_clients, clients)
            self.max_waiters = max(self.max_waiters, waiters)
            self.samples += 1
            self._stop_event.wait(0.02)

    def stop(self) -> dict[str, int]:
        self._stop_event.set()
        self.join(5)
        return {"max_servers": self.max_servers, "max_clients": self.max_clients,
                "max_waiters": self.max_waiters, "samples": self.samples, "error": self.error}


def fake_request(fn: Callable[[], Any]) -> Any:
    """What Django does around a request: close_old_connections() on start and finish (this is
    where CONN_MAX_AGE and CONN_HEALTH_CHECKS act)."""
    request_started.send(sender=None)
    try:
        return fn()
    finally:
        request_finished.send(sender=None)


# --------------------------------------------------------------------------- scenarios


@scenario
def migrated() -> dict[str, Any]:
    """migrate ran from scratch: every table exists and the data migration seeded the tags."""
    tables = set(connection.introspection.table_names())
    expected = {"pp_app_author", "pp_app_book", "pp_app_book_tags", "pp_app_review",
                "pp_app_account", "pp_app_job", "pp_app_counter", "pp_app_event",
                "auth_user", "django_content_type", "django_migrations"}
    assert expected <= tables, expected - tables
    assert set(Tag.objects.values_list("slug", flat=True)) >= {"fiction", "history", "science"}
    with connection.cursor() as cur:
        constraints = connection.introspection.get_constraints(cur, "pp_app_event")
    assert "pp_event_kind_at_idx" in constraints, constraints.keys()
    applied = sql_value("SELECT COUNT(*) FROM django_migrations WHERE app = 'pp_app'")
    assert applied == 2, applied
    return {"tables": len(tables), "pp_app_migrations": applied}


def _clean() -> None:
    Review.objects.all().delete()
    Book.objects.all().delete()
    Account.objects.all().delete()
    Author.objects.all().delete()
    Tag.objects.exclude(slug__in=("fiction", "history", "science")).delete()


@scenario
def crud() -> dict[str, Any]:
    _clean()
    joined = dt.datetime(2024, 3, 1, 9, 15, 30, 123456, tzinfo=TOKYO)
    soseki = Author.objects.create(
        name="夏目漱石", email="soseki@example.com", joined=joined,
        profile={"langs": ["ja", "en"], "address": {"city": "Tokyo", "zip": "162-0843"},
                 "score": 4.5, "active": True, "quote": "吾輩は猫である 😺"})
    austen = Author.objects.create(name="Jane Austen", email="jane@example.com",
                                   profile={"langs": ["en"], "address": {"city": "Bath"}})
    fiction, history = Tag.objects.get(slug="fiction"), Tag.objects.get(slug="history")
    cat = Book.objects.create(author=soseki, title="吾輩は猫である", isbn="978-4-00-310101-8",
                              published=dt.datetime(1905, 1, 1, tzinfo=TOKYO),
                              meta={"pages": 610, "editions": [1905, 1906]})
    cat.tags.add(fiction, history)
    pride = Book.objects.create(author=austen, title="Pride and Prejudice", isbn="978-0141439518",
                                meta={"pages": 480})
    pride.tags.add(fiction)
    Review.objects.bulk_create([Review(book=cat, rating=r) for r in (5, 4, 5)]
                               + [Review(book=pride, rating=3)])

    # Read back: datetimes are the same instants, JSON is intact.
    got = Author.objects.get(pk=soseki.pk)
    assert got.joined == joined and got.profile == soseki.profile, (got.joined, got.profile)
    assert timezone.localtime(got.joined).hour == 9  # TIME_ZONE is Asia/Tokyo
    # JSON lookups run in the database.
    assert list(Author.objects.filter(profile__address__city="Tokyo")) == [soseki]
    assert set(Author.objects.filter(profile__langs__contains=["en"])) == {soseki, austen}
    assert list(Author.objects.filter(profile__has_key="score")) == [soseki]
    assert Book.objects.filter(meta__pages__gt=500).get() == cat
    # Unique field and unique constraint violations: the connection stays usable.
    for dup in (dict(author=austen, title="Other", isbn=cat.isbn),
                dict(author=austen, title="Pride and Prejudice", isbn="new-isbn")):
        try:
            with transaction.atomic():
                Book.objects.create(**dup)
        except IntegrityError:
            pass
        else:
            raise AssertionError(f"duplicate accepted: {dup}")
    # Joins, prefetch, aggregates.
    books = list(Book.objects.select_related("author").prefetch_related("tags").order_by("id"))
    assert [b.author.name for b in books] == ["夏目漱石", "Jane Austen"]
    assert [sorted(t.slug for t in b.tags.all()) for b in books] == [
        ["fiction", "history"], ["fiction"]]
    stats = Book.objects.annotate(n=Count("reviews"), avg=Avg("reviews__rating")).order_by("id")
    assert [(b.n, round(b.avg, 2)) for b in stats] == [(3, 4.67), (1, 3.0)]
    # Updates: F(), JSON, M2M removal; delete with cascade; PROTECT.
    Review.objects.filter(book=pride).update(rating=F("rating") + 1)
    assert Review.objects.get(book=pride).rating == 4
    Book.objects.filter(pk=pride.pk).update(meta={"pages": 481, "note": "reprint"})
    pride.refresh_from_db()
    assert pride.meta == {"pages": 481, "note": "reprint"}
    cat.tags.remove(history)
    assert cat.tags.count() == 1
    Account.objects.create(name="austen-royalties", owner=austen)
    try:
        austen.delete()
    except ProtectedError:
        pass
    else:
        raise AssertionError("PROTECT did not protect")
    deleted, per_model = soseki.delete()
    assert per_model.get("pp_app.Review") == 3 and per_model.get("pp_app.Book") == 1, per_model
    assert not Book.objects.filter(pk=cat.pk).exists()
    assert Author.objects.count() == 1
    return {"deleted": deleted, "authors_left": Author.objects.count()}


@scenario
def atomic() -> dict[str, Any]:
    _clean()
    pids: list[int] = []
    committed: list[str] = []

    def make(name: str) -> Author:
        pids.append(backend_id())
        return Author.objects.create(name=name, email=f"{name}@example.com")

    with transaction.atomic(durable=True):
        make("outer")
        transaction.on_commit(lambda: committed.append("outer"))
        try:
            with transaction.atomic():
                make("inner-raised")
                transaction.on_commit(lambda: committed.append("never"))
                raise RuntimeError("roll back to the savepoint")
        except RuntimeError:
            pass
        with transaction.atomic():
            make("inner-kept")
            with transaction.atomic():
                make("inner-set-rollback")
                transaction.set_rollback(True)
        sid = transaction.savepoint()
        make("manual-rolled-back")
        transaction.savepoint_rollback(sid)
        sid = transaction.savepoint()
        make("manual-kept")
        transaction.savepoint_commit(sid)
        try:  # an error inside a nested block: the transaction goes on after it
            with transaction.atomic():
                make("outer")
        except IntegrityError:
            pass
        make("after-error")
        # Isolation through the pool: another Django connection is given another server
        # (the open transaction holds ours) and does not see uncommitted rows.
        assert not Author.objects.using("other").filter(name="outer").exists()
        other_pid = backend_id("other")
        assert other_pid != pids[0], "an open transaction's server was given to another client"
        assert committed == []
    assert len(set(pids)) == 1, f"one transaction ran on several servers: {pids}"
    assert committed == ["outer"], committed
    names = set(Author.objects.values_list("name", flat=True))
    assert names == {"outer", "inner-kept", "manual-kept", "after-error"}, names
    assert Author.objects.using("other").filter(name="outer").exists()

    try:
        with transaction.atomic():
            make("whole-rollback")
            with transaction.atomic():
                make("whole-rollback-inner")
            raise RuntimeError("roll back everything")
    except RuntimeError:
        pass
    assert not Author.objects.filter(name__startswith="whole-rollback").exists()
    assert connection.get_autocommit() and not connection.in_atomic_block
    return {"savepoint_levels": 3, "server_per_transaction": len(set(pids))}


@scenario
def select_for_update() -> dict[str, Any]:
    _clean()
    Job.objects.all().delete()
    Account.objects.create(name="shared", balance=0)
    Job.objects.bulk_create([Job(name=f"job-{i}") for i in range(64)])
    increments = 10
    sampler = PoolSampler()
    sampler.start()

    def worker(i: int) -> dict[str, Any]:
        pids = set()
        for _ in range(increments):
            with transaction.atomic():
                acct = Account.objects.select_for_update().get(name="shared")
                pids.add(backend_id())
                time.sleep(0.001)  # widen the race window
                acct.balance += 1
                acct.save(update_fields=["balance"])
        claimed = 0
        while True:
            with transaction.atomic():
                job = (Job.objects.select_for_update(skip_locked=True)
                       .filter(claimed_by__isnull=True).order_by("id").first())
                if job is None:
                    break
                job.claimed_by, job.claimed_at = f"t{i}", timezone.now()
                job.save(update_fields=["claimed_by", "claimed_at"])
                claimed += 1
        return {"pids": sorted(pids), "claimed": claimed}

    results = run_threads(THREADS, worker)
    pool = sampler.stop()
    acct = Account.objects.get(name="shared")
    assert acct.balance == THREADS * increments, (acct.balance, "lost update under select_for_update")
    claims = Tally(Job.objects.values_list("claimed_by", flat=True))
    assert None not in claims and sum(claims.values()) == 64, claims
    assert sum(r["claimed"] for r in results) == 64, "a job was claimed twice"
    all_pids = {p for r in results for p in r["pids"]}
    assert len(all_pids) <= POOL_SIZE, (all_pids, POOL_SIZE)
    assert pool["samples"] > 0 and 0 < pool["max_servers"] <= POOL_SIZE, pool

    # NOWAIT: a second connection fails at once on the locked row, and is usable afterwards.
    locked = threading.Event()
    release = threading.Event()
    nowait: dict[str, Any] = {}

    def holder() -> None:
        try:
            with transaction.atomic():
                Account.objects.select_for_update().get(name="shared")
                locked.set()
                release.wait(20)
        finally:
            connection.close()

    t = threading.Thread(target=holder)
    t.start()
    assert locked.wait(20)
    try:
        with transaction.atomic():
            Account.objects.select_for_update(nowait=True).get(name="shared")
    except DatabaseError as exc:
        nowait["error"] = str(exc).splitlines()[0]
    finally:
        release.set()
        t.join(20)
    assert "error" in nowait, "NOWAIT did not fail on a locked row"
    assert Account.objects.get(name="shared").balance == THREADS * increments
    return {"balance": acct.balance, "servers_used": len(all_pids), "pool": pool,
            "nowait_error": nowait["error"]}


@scenario
def bulk() -> dict[str, Any]:
    Event.objects.filter(kind__startswith="bulk").delete()
    Counter.objects.filter(key__startswith="bulk").delete()
    base = dt.datetime(2024, 1, 1, tzinfo=TOKYO)
    events = Event.objects.bulk_create(
        [Event(kind="bulk", at=base + dt.timedelta(minutes=i), seq=i,
               data={"i": i, "tags": ["a", "b"][: i % 3], "nested": {"ok": i % 2 == 0}})
         for i in range(2000)],
        batch_size=500)
    returned_pks = sum(1 for e in events if e.pk is not None)
    if connection.features.can_return_rows_from_bulk_insert:
        assert returned_pks == 2000, returned_pks
    assert Event.objects.filter(kind="bulk").count() == 2000
    assert Event.objects.filter(kind="bulk", data__nested__ok=True).count() == 1000
    assert Event.objects.filter(kind="bulk").aggregate(s=Sum("seq"))["s"] == sum(range(2000))
    # bulk_update and ignore/update conflicts.
    some = list(Event.objects.filter(kind="bulk", seq__lt=300))
    for e in some:
        e.data = {**e.data, "updated": True}
    Event.objects.bulk_update(some, ["data"], batch_size=100)
    assert Event.objects.filter(kind="bulk", data__updated=True).count() == 300
    Tag.objects.bulk_create([Tag(slug="fiction"), Tag(slug="bulk-new")], ignore_conflicts=True)
    assert Tag.objects.filter(slug__in=["fiction", "bulk-new"]).count() == 2
    Counter.objects.bulk_create([Counter(key=f"bulk-{i}", value=1) for i in range(10)])
    kwargs: dict[str, Any] = {"update_conflicts": True, "update_fields": ["value"]}
    if connection.features.supports_update_conflicts_with_target:
        kwargs["unique_fields"] = ["key"]
    Counter.objects.bulk_create([Counter(key=f"bulk-{i}", value=2) for i in range(5, 15)], **kwargs)
    values = dict(Counter.objects.filter(key__startswith="bulk-").values_list("key", "value"))
    assert len(values) == 15 and values["bulk-0"] == 1 and values["bulk-7"] == 2, values
    return {"events": 2000, "returned_pks": returned_pks}


@scenario
def races() -> dict[str, Any]:
    Counter.objects.filter(key__startswith="race").delete()
    Counter.objects.create(key="race-hits", value=0)
    rounds = 10
    hits = 25
    deadlocks = 0
    lock = threading.Lock()

    def retrying(fn: Callable[[], Any]) -> Any:
        nonlocal deadlocks
        for _ in range(20):
            try:
                return fn()
            except OperationalError as exc:
                if not is_deadlock(exc):
                    raise
                with lock:
                    deadlocks += 1
                time.sleep(0.01)
        raise AssertionError("still deadlocking after 20 attempts")

    def worker(i: int) -> dict[str, int]:
        created = 0
        for r in range(rounds):
            key = f"race-{r % 4}"
            _, was_created = retrying(lambda key=key: Counter.objects.update_or_create(
                key=key, defaults={"value": i}))
            created += was_created
            _, was_created = retrying(lambda r=r: Counter.objects.get_or_create(
                key=f"race-goc-{r}", defaults={"value": i}))
            created += was_created
        for _ in range(hits):
            Counter.objects.filter(key="race-hits").update(value=F("value") + 1)
        return {"created": created}

    results = run_threads(THREADS, worker)
    keys = Tally(Counter.objects.filter(key__startswith="race-").values_list("key", flat=True))
    assert all(n == 1 for n in keys.values()) and len(keys) == 4 + rounds + 1, keys
    created = sum(r["created"] for r in results)
    assert created == 4 + rounds, f"{created} creations reported for {4 + rounds} keys"
    assert Counter.objects.get(key="race-hits").value == THREADS * hits
    return {"created": created, "deadlocks_retried": deadlocks}


def _seed_iter_events(n: int) -> None:
    if Event.objects.filter(kind="iter").count() != n:
        Event.objects.filter(kind="iter").delete()
        Event.objects.bulk_create(
            [Event(kind="iter", at=timezone.now(), seq=i, data={"i": i}) for i in range(n)],
            batch_size=1000)


def _iterate(alias: str, n: int, interleave: bool) -> int:
    total = seen = 0
    for e in Event.objects.using(alias).filter(kind="iter").order_by("seq").iterator(chunk_size=200):
        total += e.seq
        seen += 1
        if interleave and seen % 500 == 0:  # other queries between chunks, on both aliases
            assert Author.objects.using(alias).count() >= 0
            assert Tag.objects.using("default").filter(slug="fiction").exists()
    assert seen == n, seen
    return total


def _blocked(alias: str) -> dict[str, Any]:
    """Whether a query on ``alias`` waits for the only server (pool_size 1) until poolproxy's
    query_wait_timeout, and the error it then gets."""
    start = time.monotonic()
    try:
        backend_id(alias)
    except OperationalError as exc:
        connections[alias].close()
        return {"blocked": True, "seconds": round(time.monotonic() - start, 2),
                "error": str(exc).strip().splitlines()[0],
                "sqlstate": getattr(exc.__cause__, "sqlstate", None)}
    return {"blocked": False, "seconds": round(time.monotonic() - start, 2)}


@scenario
def iterator() -> dict[str, Any]:
    """Runs on a pool_size 1 listener with a short query_wait_timeout."""
    n = 3000
    _seed_iter_events(n)
    expected = sum(range(n))
    result: dict[str, Any] = {}
    # DISABLE_SERVER_SIDE_CURSORS=True (default alias): outside and inside atomic().
    assert _iterate("default", n, interleave=True) == expected
    with transaction.atomic():
        assert _iterate("default", n, interleave=True) == expected
    assert not _blocked("other")["blocked"]
    if not PG:
        # MySQLdb's default cursor buffers the whole result: no server-side cursor exists and
        # DISABLE_SERVER_SIDE_CURSORS changes nothing on MySQL.
        result["mysql"] = "iterator() buffered client-side; nothing pinned"
        return result

    # Server-side cursors on PostgreSQL (alias ssc) inside atomic(): DECLARE ... WITHOUT HOLD
    # lives in the transaction, which holds the server anyway; nothing is pinned afterwards.
    with transaction.atomic(using="ssc"):
        assert _iterate("ssc", n, interleave=False) == expected
    result["ssc_in_atomic_then_other_client"] = _blocked("other")
    assert not result["ssc_in_atomic_then_other_client"]["blocked"]

    # Outside atomic() (autocommit) Django declares the cursor WITH HOLD: poolproxy pins the
    # client to its server (reason cursor_with_hold) until it disconnects. It works for this
    # client, but with pool_size 1 every other client now waits until query_wait_timeout.
    assert _iterate("ssc", n, interleave=False) == expected
    result["ssc_autocommit_then_other_client"] = _blocked("other")
    assert result["ssc_autocommit_then_other_client"]["blocked"], result
    assert _iterate("ssc", 3000, interleave=False) == expected  # the pinned client still works
    connections["ssc"].close()  # disconnect: the pin ends (DISCARD ALL), the server is shared
    result["after_ssc_closed"] = _blocked("other")
    assert not result["after_ssc_closed"]["blocked"]

    # psycopg 3 and prepared statements. Django's default cursor binds parameters client-side
    # (simple query protocol) and never prepares, whatever prepare_threshold says (prep_client).
    # With server_side_binding, parameters travel in unnamed statements (ssb): no pin either.
    # With server_side_binding and a prepare_threshold (prep: 1), the second run of a query
    # makes psycopg prepare a *named* statement: in transaction mode poolproxy renames it and
    # prepares it on whichever server the client gets, so that does not pin either (the test
    # checks that poolproxy_client_pins_total{reason="prepared_statement"} does not move).
    for alias in ("prep_client", "ssb", "prep"):
        for _ in range(4):
            assert list(Tag.objects.using(alias).filter(slug="fiction").values_list("slug"))
        result[f"{alias}_then_other_client"] = _blocked("other")
        assert not result[f"{alias}_then_other_client"]["blocked"], (alias, result)
    # prep's named statement keeps working while other clients share its server, on the
    # same Django connection and in a transaction too.
    for _ in range(3):
        assert list(Tag.objects.using("prep").filter(slug="fiction").values_list("slug"))
        assert not _blocked("other")["blocked"]
        with transaction.atomic(using="prep"):
            assert list(Tag.objects.using("prep").filter(slug="fiction").values_list("slug"))
    connections["prep"].close()
    result["after_prep_closed"] = _blocked("other")
    assert not result["after_prep_closed"]["blocked"]
    return result


@scenario
def time_zones() -> dict[str, Any]:
    """USE_TZ with TIME_ZONE Asia/Tokyo (and America/New_York as the other alias's TIME_ZONE
    on PostgreSQL)."""
    Event.objects.filter(kind="tz").delete()
    # 00:30 on Jan 1st in Tokyo is still Dec 31st in UTC.
    at = dt.datetime(2024, 1, 1, 0, 30, tzinfo=TOKYO)
    event = Event.objects.create(kind="tz", at=at, data={"when": "new year in Tokyo"})
    got = Event.objects.get(pk=event.pk)
    assert got.at == at and got.at.utcoffset() == dt.timedelta(0), got.at  # aware, in UTC
    assert timezone.localtime(got.at).strftime("%Y-%m-%d %H:%M") == "2024-01-01 00:30"
    assert timezone.get_current_timezone_name() == "Asia/Tokyo"
    result: dict[str, Any] = {}
    if PG:
        # Django sets the connection's TimeZone (UTC for default, the alias's TIME_ZONE for
        # other); the database does the date arithmetic in the current time zone.
        assert sql_value("SHOW TimeZone") == "UTC"
        assert sql_value("SHOW TimeZone", "other") == "America/New_York"
        raw_default = sql_value("SELECT at::text FROM pp_app_event WHERE id = %s", "default",
                                (event.pk,))
        raw_other = sql_value("SELECT at::text FROM pp_app_event WHERE id = %s", "other",
                              (event.pk,))
        assert raw_default == "2023-12-31 15:30:00+00", raw_default
        assert raw_other == "2023-12-31 10:30:00-05", raw_other
        assert Event.objects.filter(kind="tz", at__date=dt.date(2024, 1, 1)).count() == 1
        assert Event.objects.filter(kind="tz", at__date=dt.date(2023, 12, 31)).count() == 0
        with timezone.override("UTC"):
            assert Event.objects.filter(kind="tz", at__date=dt.date(2023, 12, 31)).count() == 1
        day = Event.objects.filter(kind="tz").annotate(d=TruncDay("at")).values_list("d", flat=True)
        assert list(day) == [dt.datetime(2024, 1, 1, tzinfo=TOKYO)], list(day)
        other_got = Event.objects.using("other").get(pk=event.pk)
        assert other_got.at == at
        result.update(raw_default=raw_default, raw_other=raw_other)
    else:
        # MySQL DATETIME has no zone: Django stores UTC and converts in Python; the session
        # time_zone of the other alias (+09:00 via init_command) does not change stored values.
        raw = sql_value("SELECT CAST(at AS CHAR) FROM pp_app_event WHERE id = %s",
                        params=(event.pk,))
        assert raw.startswith("2023-12-31 15:30:00"), raw
        assert Event.objects.using("other").get(pk=event.pk).at == at
        assert sql_value("SELECT @@SESSION.time_zone", "other") == "+09:00"
        assert sql_value("SELECT @@SESSION.time_zone") == "SYSTEM"
        # at__date with USE_TZ uses CONVERT_TZ(), which needs the server's time zone tables.
        tz_tables = sql_value("SELECT CONVERT_TZ('2024-01-01 00:00:00', 'UTC', 'Asia/Tokyo')")
        if tz_tables is not None:
            assert Event.objects.filter(kind="tz", at__date=dt.date(2024, 1, 1)).count() == 1
            day = (Event.objects.filter(kind="tz").annotate(d=TruncDay("at"))
                   .values_list("d", flat=True))
            assert list(day) == [dt.datetime(2024, 1, 1, tzinfo=TOKYO)], list(day)
        result.update(raw=raw, tz_tables_loaded=tz_tables is not None)
    return result


@scenario
def threads() -> dict[str, Any]:
    """THREADS Django threads over a pool of POOL_SIZE servers, each doing ``requests`` fake
    requests (close_old_connections() around each, as Django's request signals do).

    With PP_PAUSE_FOR_REAP (seconds, on a listener with a short server_idle_timeout) every thread
    pauses half-way, poolproxy closes the idle servers meanwhile, and the persistent Django
    connections (CONN_MAX_AGE=600) carry on over new ones."""
    Counter.objects.filter(key__startswith="thr").delete()
    Counter.objects.create(key="thr-total", value=0)
    requests = 12
    pause = float(os.environ.get("PP_PAUSE_FOR_REAP", "0"))
    halfway = threading.Barrier(THREADS)
    max_age = connection.settings_dict["CONN_MAX_AGE"]
    sampler = PoolSampler()
    sampler.start()

    opened: Tally[str] = Tally()

    def count_connection(sender: Any, connection: Any, **kwargs: Any) -> None:
        opened[threading.current_thread().name] += 1

    connection_created.connect(count_connection)

    def one_request(i: int, r: int) -> int:
        with transaction.atomic():
            pid = backend_id()
            Counter.objects.filter(key="thr-total").update(value=F("value") + 1)
            Counter.objects.update_or_create(key=f"thr-{i}", defaults={"value": r})
            Event.objects.create(kind="thr", at=timezone.now(), seq=r, data={"t": i})
        assert Counter.objects.filter(key=f"thr-{i}").get().value == r  # autocommit read
        return pid

    def worker(i: int) -> dict[str, Any]:
        pids: list[list[int]] = [[], []]
        for r in range(requests):
            if r == requests // 2 and pause:
                halfway.wait(30)
                time.sleep(pause)
            pids[r >= requests // 2].append(fake_request(lambda r=r: one_request(i, r)))
        return {"pids": pids, "django_connections": opened[threading.current_thread().name]}

    Event.objects.filter(kind="thr").delete()
    connections.close_all()
    started = time.monotonic()
    results = run_threads(THREADS, worker)
    elapsed = time.monotonic() - started
    pool = sampler.stop()
    total = Counter.objects.get(key="thr-total").value
    assert total == THREADS * requests, total
    assert Event.objects.filter(kind="thr").count() == THREADS * requests
    first = {p for r in results for p in r["pids"][0]}
    second = {p for r in results for p in r["pids"][1]}
    assert len(first) <= POOL_SIZE and len(second) <= POOL_SIZE, (first, second)
    django_conns = [r["django_connections"] for r in results]
    if max_age == 0:
        assert all(n == requests for n in django_conns), django_conns  # one per request
    else:
        assert all(n == 1 for n in django_conns), django_conns  # persistent
    if pause:
        assert not first & second, (
            "servers were not replaced while Django connections stayed open", first, second)
    assert pool["samples"] > 0, pool
    assert 0 < pool["max_servers"] <= POOL_SIZE, pool
    if max_age:
        assert pool["max_clients"] >= THREADS, pool
    return {"threads": THREADS, "pool_size": POOL_SIZE, "conn_max_age": max_age,
            "health_checks": connection.settings_dict["CONN_HEALTH_CHECKS"],
            "servers_first_half": len(first), "servers_second_half": len(second),
            "seconds": round(elapsed, 2), "pool": pool}


@scenario
def idle_client() -> dict[str, Any]:
    """A persistent Django connection (CONN_MAX_AGE=600) that poolproxy closes between two
    requests (client_idle_timeout on the listener): with CONN_HEALTH_CHECKS Django notices at
    the start of the next request and reconnects; without, that request fails once."""
    pause = float(os.environ.get("PP_IDLE_PAUSE", "1.6"))
    opened = [0]

    def count_connection(sender: Any, connection: Any, **kwargs: Any) -> None:
        opened[0] += 1

    connection_created.connect(count_connection)
    first = fake_request(backend_id)
    time.sleep(pause)
    second: dict[str, Any] = {"ok": True}
    try:
        fake_request(backend_id)
    except DatabaseError as exc:
        second = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"}
    # Either way the request after works: Django drops a connection that had errors.
    third = fake_request(backend_id)
    assert first and third
    return {"health_checks": connection.settings_dict["CONN_HEALTH_CHECKS"],
            "second_request": second, "connections_opened": opened[0]}


@scenario
def connect_options() -> dict[str, Any]:
    """Per-connection settings given in DATABASES OPTIONS (on a pool_size 1 listener, so the
    aliases share the server)."""
    result: dict[str, Any] = {}
    if PG:
        # A startup parameter the server reports (TimeZone) is kept per client ...
        assert sql_value("SHOW TimeZone", "opt_tz") == "UTC"
        result["default_timezone"] = sql_value("SHOW TimeZone")
        # ... one it does not report is refused at connect, with poolproxy's explanation.
        try:
            backend_id("opt_stmt")
        except OperationalError as exc:
            result["opt_stmt_error"] = " ".join(str(exc).split())
        else:
            raise AssertionError("options=-c statement_timeout=... was accepted")
        assert "statement_timeout" in result["opt_stmt_error"], result
        assert sql_value("SHOW statement_timeout") == "0"
    else:
        # init_command SET SESSION var = literal: tracked and replayed, nothing pinned.
        assert sql_value("SELECT @@SESSION.innodb_lock_wait_timeout", "opt_lock") == 7
        assert backend_id("opt_lock") == backend_id("default")
        result["default_lock_wait"] = sql_value("SELECT @@SESSION.innodb_lock_wait_timeout")
        assert result["default_lock_wait"] == 50, result
        assert sql_value("SELECT @@SESSION.innodb_lock_wait_timeout", "opt_lock") == 7
    return result


@scenario
def session_leak() -> dict[str, Any]:
    """Two aliases with different session state share one server (pool_size 1); neither may
    ever observe the other's state. A pooler that leaks makes these assertions fail."""
    connections.close_all()
    other_pid = backend_id("other")  # connects first and sets its state
    default_pid = backend_id("default")
    assert other_pid == default_pid, "pool_size 1: both aliases must share the server"
    base = session_state("default")
    other = session_state("other")
    if PG:
        assert base["TimeZone"] == "UTC" and other["TimeZone"] == "America/New_York", (base, other)
    else:
        assert (base["time_zone"], base["tx_isolation"]) == ("SYSTEM", "READ-COMMITTED"), base
        assert (other["time_zone"], other["tx_isolation"]) == ("+09:00", "SERIALIZABLE"), other
        # sql_auto_is_null=1 from init_command made Django send its two-statement init query
        # ("SET SQL_AUTO_IS_NULL = 0; SET SESSION TRANSACTION ISOLATION LEVEL ...").
        assert other["sql_auto_is_null"] == "0", other
    for _ in range(3):  # interleave: the server moves between the clients every statement
        for alias in ("default", "other", "default"):
            with transaction.atomic(using=alias):
                level = tx_isolation(alias)
            want = ("serializable" if PG else "SERIALIZABLE") if alias == "other" else (
                "read committed" if PG else "READ-COMMITTED")
            assert level == want, (alias, level)
        assert session_state("default") == base
        assert session_state("other") == other

    # Plain SQL SETs of parameters poolproxy tracks and replays: never seen by the other alias.
    with connections["other"].cursor() as cur:
        if PG:
            cur.execute("SET TIME ZONE 'Europe/Paris'")
            cur.execute("SET IntervalStyle = 'iso_8601'")
            cur.execute("SET application_name = 'leaky'")
        else:
            cur.execute("SET SESSION time_zone = '-05:00'")
            cur.execute("SET foreign_key_checks = 0")
            cur.execute("SET SESSION sql_mode = 'ANSI_QUOTES,STRICT_TRANS_TABLES'")
    changed = session_state("other")
    assert backend_id("other") == backend_id("default")
    assert session_state("default") == base, ("leaked into default", session_state("default"))
    assert session_state("other") == changed
    assert changed != other

    # Threads: 16 clients (8 threads x 2 aliases), each with a time zone of its own, share the
    # one server; every transaction and every autocommit statement sees its own client's state.
    zones = ZONES if PG else [f"+{k // 4:02d}:{(k % 4) * 15:02d}" for k in range(1, 17)]
    zone_key = "TimeZone" if PG else "time_zone"

    def worker(i: int) -> int:
        want: dict[str, dict[str, str]] = {}
        for n, alias in enumerate(("default", "other")):
            zone = zones[2 * i + n]
            with connections[alias].cursor() as cur:
                cur.execute("SET TIME ZONE %s" if PG else "SET time_zone = %s", [zone])
            want[alias] = {**(base if alias == "default" else other), zone_key: zone}
        checks = 0
        for r in range(8):
            alias = "other" if (i + r) % 2 else "default"
            assert session_state(alias) == want[alias], (alias, session_state(alias))
            with transaction.atomic(using=alias):
                assert session_state(alias) == want[alias]
                checks += 2
        return checks

    checks = sum(run_threads(8, worker))

    # State poolproxy cannot replay pins the client; after it disconnects the server is reset,
    # so the next client still sees its own, clean state.
    connections.close_all()
    with connections["other"].cursor() as cur:
        if PG:
            cur.execute("SET work_mem = '7MB'")
            pinned_value = sql_value("SHOW work_mem", "other")
            assert pinned_value == "7MB"
        else:
            cur.execute("SET @leak = 42")
            pinned_value = sql_value("SELECT @leak", "other")
            assert pinned_value == 42
    connections["other"].close()
    if PG:
        assert sql_value("SHOW work_mem") == "4MB", "unreported SET leaked past disconnect"
    else:
        assert sql_value("SELECT @leak") is None, "user variable leaked past disconnect"
    return {"shared_server": default_pid, "default": base, "other": other,
            "other_after_set": changed, "thread_checks": checks}


def main() -> int:
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    if name not in SCENARIOS:
        print(f"usage: scenarios.py {{{','.join(SCENARIOS)}}}", file=sys.stderr)
        return 2
    result = SCENARIOS[name]()
    connections.close_all()
    print("PP_RESULT " + json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
