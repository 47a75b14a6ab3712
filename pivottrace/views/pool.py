"""The Pool page's view-models and actions: upload and ingest a pool file, the pool's summary.

Bad files become InvalidInput with the reason; good rows still load. Tracing and routing run as
background jobs (common.py re-exports jobs.py's calls). It never calls Streamlit and runs no SQL.
"""

from __future__ import annotations

from .. import pipeline, store
from ..datasets import PoolFormatError, read_pool_bytes
from ..safe_text import visible_bidi
from .common import InvalidInput


def ingest_upload(db, data: bytes, filename: str, *, question_field: str | None = None,
                  answer_field: str | None = None) -> pipeline.IngestReport:
    """Ingest an uploaded pool file. Rejected rows come back with line numbers; good rows still load."""
    try:
        loaded = read_pool_bytes(data, filename, question_field=question_field or None,
                                 answer_field=answer_field or None)
    except PoolFormatError as err:
        raise InvalidInput(str(err)) from None
    try:
        return pipeline.ingest_loaded(db, loaded)
    except store.StorageError as err:  # a full disk, a read-only database: one line, nothing half-written
        raise InvalidInput(str(err)) from None


def rejected_rows(report: pipeline.IngestReport) -> list[dict]:
    return [{"line": r.line, "reason": visible_bidi(r.reason if r.item is None else f"item {r.item}: {r.reason}")}
            for r in report.rejected]


def pool_summary(db) -> dict:
    info = store.status(db)
    return {**info, "sources": store.source_counts(db)}
