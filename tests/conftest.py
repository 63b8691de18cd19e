import uuid

import pytest

from paged_context.sim.conversations import default_locomo_path


@pytest.fixture(scope="session")
def locomo_path():
    path = default_locomo_path()
    if path is None or not path.exists():
        pytest.skip("LoCoMo dev split not found (../shared/data/locomo or $PAGED_CONTEXT_LOCOMO)")
    return path


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny random Llama (tests/tiny_model.py) that vLLM's CPU attention can serve too."""
    from tiny_model import build

    return build(tmp_path_factory.mktemp("tiny-serve"), hidden=128, heads=2)


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway PostgreSQL for the test session (paged_context.postgres_server)."""
    from paged_context.postgres_server import PostgresServer, find_bindir

    if find_bindir() is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl, postgres) in pg_config --bindir, /usr/lib/postgresql/15/bin or PATH")
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on it."""
    return postgres_server.create_database(f"test_{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["sqlite", "postgres"])
def store_at(request, tmp_path):
    """Where a store is, for each backend: a SQLite file's path or a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "pages.db")
    return request.getfixturevalue("postgres_url")
