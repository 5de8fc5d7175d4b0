"""The SQL of the spool bookkeeping (`series`, `instances`), kept apart from the code that runs
it so each statement reads as one piece.

Must not import pynetdicom, HTTP libraries or control_plane.
"""

from __future__ import annotations

SELECT_DUE_SERIES = """
    SELECT s.series_instance_uid, s.study_instance_uid, s.first_received_at, s.last_received_at,
        (SELECT count(*) FROM instances p
         WHERE p.series_instance_uid = s.series_instance_uid AND p.state = 'spooled'),
        s.target, s.reaped_at, s.failed_at, s.failure
    FROM series s
    WHERE s.series_instance_uid IN (
        SELECT series_instance_uid FROM instances
        WHERE state = 'spooled' AND (next_attempt_at IS NULL OR next_attempt_at <= :now))
      AND s.last_received_at <= :quiet_since
    ORDER BY s.last_received_at, s.series_instance_uid
"""
SELECT_SERIES = """
    SELECT s.series_instance_uid, s.study_instance_uid, s.first_received_at, s.last_received_at,
        (SELECT count(*) FROM instances p
         WHERE p.series_instance_uid = s.series_instance_uid AND p.state = 'spooled'),
        s.target, s.reaped_at, s.failed_at, s.failure
    FROM series s
    WHERE s.series_instance_uid = ?
"""
# A series needs support when it failed as a whole or holds failed instances. SQLite returns
# the bare columns of the row holding max(finished_at): the latest failed instance's error.
SELECT_FAILED_SERIES = """
    SELECT s.series_instance_uid,
        coalesce(s.failed_at, max(i.finished_at), s.last_received_at),
        coalesce(s.failure, i.last_error, 'instances failed'),
        count(i.id)
    FROM series s
    LEFT JOIN instances i
        ON i.series_instance_uid = s.series_instance_uid AND i.state = 'failed'
    GROUP BY s.series_instance_uid
    HAVING s.failed_at IS NOT NULL OR count(i.id) > 0
    ORDER BY 2 DESC, s.series_instance_uid
"""
SELECT_SPOOLED = """
    SELECT id, sop_instance_uid, series_instance_uid, study_instance_uid, sha256, size, path,
        received_at, spooled_at, state, attempts, next_attempt_at, last_error
    FROM instances
    WHERE series_instance_uid = :series AND state = 'spooled'
      AND (:now IS NULL OR next_attempt_at IS NULL OR next_attempt_at <= :now)
    ORDER BY id
"""
SELECT_INSTANCE = """
    SELECT id, sop_instance_uid, series_instance_uid, study_instance_uid, sha256, size, path,
        received_at, spooled_at, state, attempts, next_attempt_at, last_error
    FROM instances
    WHERE id = ?
"""
# Same SOP Instance UID in one of these states and same content makes an arrival a duplicate.
SELECT_DEDUP_CANDIDATES = """
    SELECT id, sha256, state, path FROM instances
    WHERE sop_instance_uid = ? AND state IN ('spooled', 'uploaded', 'skipped')
"""
# Rows in state spooled or failed still need their file on disk.
SELECT_FILE_KEEPING_PATHS = (
    "SELECT DISTINCT path FROM instances WHERE state IN ('spooled', 'failed')"
)
COUNT_FILE_KEEPING_ROWS = (
    "SELECT count(*) FROM instances WHERE path = ? AND state IN ('spooled', 'failed')"
)
# Per final state: (update of a spooled row, update of a superseded row keeping the detail).
FINISH = {
    "uploaded": (
        "UPDATE instances SET state = 'uploaded', file_id = :detail, finished_at = :now, "
        "next_attempt_at = NULL WHERE id = :id",
        "UPDATE instances SET file_id = :detail WHERE id = :id",
    ),
    "skipped": (
        "UPDATE instances SET state = 'skipped', skip_reason = :detail, finished_at = :now, "
        "next_attempt_at = NULL WHERE id = :id",
        "UPDATE instances SET skip_reason = :detail WHERE id = :id",
    ),
    "failed": (
        "UPDATE instances SET state = 'failed', last_error = :detail, attempts = attempts + 1, "
        "finished_at = :now, next_attempt_at = NULL WHERE id = :id",
        "UPDATE instances SET last_error = :detail WHERE id = :id",
    ),
}
