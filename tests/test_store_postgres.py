"""PostgreSQL-only parts of the page store: migrating when replicas start together, and the
pool. What every backend promises is in test_store_contract.py."""

import threading
import time

import pytest

psycopg = pytest.importorskip("psycopg")

from paged_context.pages import Turn  # noqa: E402
from paged_context.postgres_store import MIGRATIONS, OUTAGE_CHECK_SECONDS, PostgresStore  # noqa: E402
from paged_context.store import StoreError, open_store  # noqa: E402


def schema_version(url):
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT version FROM paged_context_schema").fetchall()


def test_replicas_starting_together_migrate_once(postgres_url):
    opened, errors = [], []
    start = threading.Barrier(6)

    def replica():
        start.wait()
        try:
            opened.append(PostgresStore(postgres_url, pool_size=2))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=replica) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(opened) == 6
    assert schema_version(postgres_url) == [(len(MIGRATIONS),)]
    opened[0].create_session("s")
    opened[0].append_turns("s", [Turn(0, "user", "hi")])
    assert [t.text for t in opened[5].turns("s")] == ["hi"]
    for store in opened:
        store.close()


def test_a_newer_schema_is_refused(postgres_url):
    PostgresStore(postgres_url).close()
    with psycopg.connect(postgres_url) as conn:
        conn.execute("UPDATE paged_context_schema SET version = version + 1")
    with pytest.raises(StoreError, match="newer than this release"):
        PostgresStore(postgres_url)


def test_a_holder_writes_and_reads_on_its_own_connection(postgres_url):
    """With one connection in the pool, held by the session's lock, the holder's writes
    and reads still go through (on that connection) instead of waiting for the pool: a
    request needs one connection, not two."""
    with open_store(postgres_url, pool_size=1, timeout=2) as store:
        store.create_session("s")
        with store.hold("s", wait=1):
            store.append_turns("s", [Turn(0, "user", "hi")])
            store.record_references("s", 0, [0], "recall")
            assert store.version("s") == 2 and [t.text for t in store.turns("s")] == ["hi"]
        assert store.version("s") == 2 and len(store.turns("s")) == 1


def test_a_busy_pool_is_waited_for(postgres_url):
    """A request waits for a pooled connection while another holds the only one, past the
    outage check, when nothing failed to connect while it waited (a failure before it
    does not count): busy is not out of reach."""
    with open_store(postgres_url, pool_size=1, timeout=30) as store:
        store.create_session("busy")
        store._pool.reconnect_failed()  # as if a connection attempt had failed a moment ago
        holding = threading.Event()

        def hold() -> None:
            with store.hold("busy", wait=1):
                holding.set()
                time.sleep(3 * OUTAGE_CHECK_SECONDS)

        holder = threading.Thread(target=hold)
        holder.start()
        assert holding.wait(10)
        started = time.monotonic()
        assert store.session("busy") is not None  # on the pool's one connection, once it is back
        assert time.monotonic() - started > 2 * OUTAGE_CHECK_SECONDS
        holder.join()


def test_an_unreachable_server_fails_at_open(tmp_path):
    with pytest.raises(psycopg.OperationalError):
        PostgresStore(f"postgresql://nobody@/pages?host={tmp_path}", timeout=2)


def test_bench_store_measures_both_backends_and_leaves_no_session(postgres_url, tmp_path, capsys):
    import json

    from paged_context import cli

    argv = ["bench", "store", "--db", postgres_url, "--dir", str(tmp_path), "--turns", "20", "--threads", "4", "--sessions", "8", "--session-turns", "3"]
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "store.json").read_text())
    for name in ("sqlite", "postgresql"):
        one, many = result["backends"][name]["one_writer"], result["backends"][name]["many_writers"]
        assert one["turns"] == 20 and 0 < one["p50_ms"] <= one["p95_ms"] and many["sessions_per_s"] > 0
    assert result["postgresql"]["fsync"] == "on" and "under_target" in result["acceptance"]
    assert "anchor: issue 18" in capsys.readouterr().out and (tmp_path / "out" / "store.png").exists()
    with open_store(postgres_url) as store:
        assert store.sessions() == []
    assert list(tmp_path.glob("bench-store-*")) == []  # its temporary folder is gone
    assert cli.main(["bench", "store", "--db", "sqlite.db"]) == 2  # --db is for PostgreSQL


def read_only(server, database, on):
    """Make a database read-only (or writable again) for new connections, and end the
    connections open to it, as a failover to a standby or a full disk's remount would."""
    with psycopg.connect(server.url(), autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {database} {'SET default_transaction_read_only = on' if on else 'RESET default_transaction_read_only'}")
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))


@pytest.mark.slow
def test_a_database_out_of_reach_or_read_only_gives_store_unavailable_and_loses_nothing():
    """A PostgreSQL server that stops, restarts or turns read-only under a running store:
    the writes meanwhile fail as StoreUnavailable (the server's 503) in seconds, not after
    the pool's 30-second wait for a busy pool, every committed turn is still there after,
    and the first write once the server is back succeeds (the pool checks a connection
    before lending it)."""
    from paged_context.postgres_server import PostgresServer, find_bindir
    from paged_context.store import StoreUnavailable

    if find_bindir() is None:
        pytest.skip("no PostgreSQL binaries")
    with PostgresServer() as server:
        url = server.create_database("faults")
        with PostgresStore(url, pool_size=2, timeout=30) as store:
            store.create_session("s")
            store.append_turns("s", [Turn(0, "user", "kept"), Turn(1, "assistant", "kept too")])
            server.halt()
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                store.append_turns("s", [Turn(2, "user", "lost: the database was down")])
            with pytest.raises(StoreUnavailable):
                store.turns("s")
            assert time.monotonic() - started < 10
            server.start()
            assert [t.text for t in store.turns("s")] == ["kept", "kept too"]  # nothing half written, nothing lost
            store.append_turns("s", [Turn(2, "user", "after the restart")])
            read_only(server, "faults", True)
            with pytest.raises(StoreUnavailable, match="read-only transaction"):
                store.append_turns("s", [Turn(3, "assistant", "refused: read-only")])
            read_only(server, "faults", False)
            store.append_turns("s", [Turn(3, "assistant", "written again")])
            assert [t.text for t in store.turns("s")] == ["kept", "kept too", "after the restart", "written again"]
