-- Runs and their ordered event logs (the same columns as the SQLite storage).
CREATE TABLE coreexec_runs (
    run_id TEXT PRIMARY KEY,
    job_name TEXT NOT NULL,
    job_reference TEXT,
    status TEXT NOT NULL,
    tags JSONB NOT NULL,
    run_config JSONB NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    ended_at DOUBLE PRECISION,
    parent_run_id TEXT
);
CREATE INDEX coreexec_runs_by_created ON coreexec_runs (created_at DESC);
CREATE INDEX coreexec_runs_by_status ON coreexec_runs (status, created_at DESC);

-- Ids come from an identity column taken while the run's advisory lock is held, so
-- within a run they grow in commit order and a reader paging with "id > after" never
-- skips an event committed later under a smaller id.
CREATE TABLE coreexec_events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    step_key TEXT,
    timestamp DOUBLE PRECISION NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX coreexec_events_by_run ON coreexec_events (run_id, id);
