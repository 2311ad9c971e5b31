-- The first released schema (the first infra/schema.sql), as it was.
--
-- Written with IF NOT EXISTS because it also adopts a database that an earlier `visionq bootstrap`
-- created from infra/schema.sql, before there were migrations: there every object exists already,
-- and this migration only records version 1. Migrations after 0002 run only on databases that
-- have 0002 recorded, so they need not be idempotent.

-- One row per processed object version and model; the unique key is the result's identity.
CREATE TABLE IF NOT EXISTS results (
    id              bigserial PRIMARY KEY,
    job_id          text        NOT NULL,
    bucket          text        NOT NULL,
    key             text        NOT NULL,
    etag            text        NOT NULL,
    model           text        NOT NULL,
    width           integer     NOT NULL,
    height          integer     NOT NULL,
    detection_count integer     NOT NULL,
    inference_ms    double precision,
    total_ms        double precision,
    timings         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    output          jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT results_identity UNIQUE (bucket, key, etag, model)
);
CREATE INDEX IF NOT EXISTS results_job_id ON results (job_id);
CREATE INDEX IF NOT EXISTS results_created_at ON results (created_at);

-- One row per box, in original-image pixels, written with their result.
CREATE TABLE IF NOT EXISTS detections (
    result_id  bigint           NOT NULL REFERENCES results (id) ON DELETE CASCADE,
    idx        integer          NOT NULL,
    job_id     text             NOT NULL,
    class_id   integer          NOT NULL,
    label      text             NOT NULL,
    confidence double precision NOT NULL,
    x1         double precision NOT NULL,
    y1         double precision NOT NULL,
    x2         double precision NOT NULL,
    y2         double precision NOT NULL,
    PRIMARY KEY (result_id, idx)
);
CREATE INDEX IF NOT EXISTS detections_job_id ON detections (job_id);
CREATE INDEX IF NOT EXISTS detections_label ON detections (label);
