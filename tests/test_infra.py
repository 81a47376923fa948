"""The test infrastructure itself: the server answers, fresh databases are empty."""

from contextlib import closing

import psycopg2


def test_server_answers_and_empty_db_is_empty(pg_base_url: str, empty_db_url: str) -> None:
    with closing(psycopg2.connect(pg_base_url, connect_timeout=3)) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)

    with closing(psycopg2.connect(empty_db_url, connect_timeout=3)) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_database(), to_regclass('public.tasks')")
        name, tasks = cur.fetchone()
        assert name.startswith("tw_")
        assert tasks is None
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert cur.fetchone() == (0,)
