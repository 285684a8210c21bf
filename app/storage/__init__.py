"""The storage layer: the only place that holds SQL (jobs, events, leases, the checkpointer)."""

from app.storage.base import EventDraft, JobConflict, LeaseLost, NewJob, Storage
from app.storage.sqlite import SqliteStorage

__all__ = ["EventDraft", "JobConflict", "LeaseLost", "NewJob", "SqliteStorage", "Storage"]
