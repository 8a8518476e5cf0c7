"""Fixtures for the task API tests: every test runs on SQLite and on the real Postgres."""

from __future__ import annotations

import contextlib

import pytest

from support import api_process, postgres_database
from task_api.store import PostgresStore, SqliteStore, Store
from taskfleet.client import ConsumerClient, ProducerClient


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tasks.db'}"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture
def api_env():
    """Extra TASKFLEET_* settings for the API under test; tests override by parametrizing."""
    return {"TASKFLEET_LEASE_S": "30", "TASKFLEET_REAP_INTERVAL_S": "0.2"}


@pytest.fixture
def api(database_url, tmp_path, api_env):
    server = api_process(database_url, tmp_path, **api_env)
    with server:
        yield server


@pytest.fixture
async def producer(api):
    async with ProducerClient(api.url) as client:
        yield client


@pytest.fixture
async def consumer(api):
    async with ConsumerClient(api.url, consumer_id="test-consumer", host="test-host") as client:
        yield client


@contextlib.asynccontextmanager
async def connected(database: Store):
    await database.connect()
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def queue_db(request, tmp_path):
    """A connected database of either backend, for tests that drive the queue in-process."""
    if request.param == "sqlite":
        async with connected(SqliteStore(f"sqlite:///{tmp_path / 'tasks.db'}")) as database:
            yield database
        return
    with postgres_database() as url:
        async with connected(PostgresStore(url)) as database:
            yield database


@pytest.fixture
async def postgres_db():
    """The real Postgres alone, for what only that backend does."""
    with postgres_database() as url:
        async with connected(PostgresStore(url)) as database:
            yield database
