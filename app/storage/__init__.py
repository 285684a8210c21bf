"""The storage layer: the only place that holds SQL (jobs, events, leases, the checkpointer)."""

from app.storage.base import EventDraft, JobConflict, NewJob, Storage
from app.storage.sqlite import SqliteStorage

__all__ = ["EventDraft", "JobConflict", "NewJob", "SqliteStorage", "Storage"]
