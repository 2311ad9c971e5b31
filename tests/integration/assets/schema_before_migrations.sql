-- visionq's PostgreSQL destination. Applied by `visionq bootstrap`; every statement is idempotent.

-- One row per processed object version and model. The unique key is the result's identity; the
-- first row written for it stands, so a redelivered or duplicated event adds nothing and changes
-- nothing, and the job record's summary (made from this row) always agrees with it.
CREATE TABLE IF NOT EXISTS results (
    id              bigserial PRIMARY KEY,
    job_id          text        NOT NULL,
    bucket          text        NOT NULL,
    key             text        NOT NULL,
    etag            text        NOT NULL,
    model           text        NOT NULL,
    kind            text        NOT NULL DEFAULT 'detections',  -- what the output is (outputs.py)
    width           integer     NOT NULL,
    height          integer     NOT NULL,
    detection_count integer     NOT NULL,
    inference_ms    double precision,
    total_ms        double precision,
    timings         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    output          jsonb       NOT NULL,
    object_created_at timestamptz,            -- when S3 saw the object (from the event)
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT results_identity UNIQUE (bucket, key, etag, model)
);
-- Columns added after the first release, for databases created before them.
ALTER TABLE results ADD COLUMN IF NOT EXISTS object_created_at timestamptz;
ALTER TABLE results ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'detections';
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
