"""SQLite, the default database: the pragmas that let an API and workers share one file."""

from __future__ import annotations

from store.db import init_db, make_engine


def test_sqlite_pragmas(tmp_path):
    url = f"sqlite:///{tmp_path / 'mlp.db'}"
    init_db(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    engine.dispose()
