"""Study storage: an embedded SQLite file by default, PostgreSQL (or any SQLAlchemy URL) for many workers.

Both go through Optuna's ``RDBStorage`` with heartbeats: a worker that dies mid-trial leaves a trial whose
heartbeat stops; after ``grace_period`` seconds the next worker marks it failed and re-queues the same
parameters (``RetryHeartbeatStaleTrialCallback``), so a killed run resumes with no trial lost.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

from ..errors import ConfigError

__all__ = ["open_storage", "storage_url"]

_ATTEMPTS = 5


def storage_url(storage: str | Path | None, default_dir: Path) -> str:
    """A SQLAlchemy URL: ``None`` -> ``sqlite:///<default_dir>/search.db``; a path -> a SQLite file there."""
    if storage is None:
        default_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(default_dir / 'search.db').resolve()}"
    s = str(storage)
    if "://" in s:
        if not s.startswith(("sqlite:", "postgresql", "mysql")):
            raise ConfigError(f"storage {s!r}: use sqlite:///FILE or postgresql://USER@HOST/DB")
        return s
    path = Path(s)
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"


def open_storage(url: str, *, heartbeat_interval: int = 10, grace_period: int | None = None):  # noqa: ANN201
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    last: Exception | None = None
    for attempt in range(_ATTEMPTS):  # workers starting together race to create the tables: retry
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                return optuna.storages.RDBStorage(
                    url, engine_kwargs={"pool_pre_ping": True} if url.startswith("postgresql") else None,
                    heartbeat_interval=heartbeat_interval, grace_period=grace_period or 3 * heartbeat_interval,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
            except Exception as exc:  # SQLAlchemy raises many types for an unreachable or bad database
                last = exc
                time.sleep(0.2 * (attempt + 1))
    raise ConfigError(f"cannot open the search storage {url.split('@')[-1]!r}: {last}")
