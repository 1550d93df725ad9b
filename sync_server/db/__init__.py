"""The server's aggregate database: SQLite by default, PostgreSQL on request, one schema and one code path.

`schema` holds the tables, `engine` opens a target (path or URL), `store` is the ServerStore the
ingest and the CLI use; `records` the values that go in and come out.
"""

from sync_server.db.errors import ServerStoreError
from sync_server.db.records import Counts, Rejected, RejectedRecord
from sync_server.db.store import ServerStore

__all__ = ["Counts", "Rejected", "RejectedRecord", "ServerStore", "ServerStoreError"]
