"""What the API does once at start, in process."""

from __future__ import annotations

import gc

from task_api.app import create_app
from task_api.settings import ApiSettings


async def test_start_brings_an_empty_database_up_and_freezes_what_it_built(tmp_path):
    gc.unfreeze()
    app = create_app(ApiSettings(database_url=f"sqlite:///{tmp_path}/t.db", storage_url=f"file://{tmp_path}/s"))
    try:
        async with app.router.lifespan_context(app):
            # What start built is kept out of every later collection's walk.
            assert gc.get_freeze_count() > 10_000
            db = app.state.services.queue.store
            assert await db.fetchval("SELECT count(*) FROM tasks") == 0  # migrated, empty
    finally:
        gc.unfreeze()
