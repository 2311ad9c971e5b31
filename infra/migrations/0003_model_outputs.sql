-- Several models, several kinds of output.
--
-- A result's identity is the object version, the model's registry name and its version (weights
-- digest): re-running another model over the same objects adds rows beside the old ones.
-- Rows written before names existed came from the one model a worker served, now called "default".
ALTER TABLE results ADD COLUMN IF NOT EXISTS model_name text NOT NULL DEFAULT 'default';
ALTER TABLE results DROP CONSTRAINT IF EXISTS results_identity;
ALTER TABLE results ADD CONSTRAINT results_identity UNIQUE (bucket, key, etag, model_name, model);
-- The number of items in the output, whatever their kind (boxes, captions, classes, ...).
ALTER TABLE results RENAME COLUMN detection_count TO item_count;
CREATE INDEX IF NOT EXISTS results_model_name ON results (model_name, created_at);

-- Captions (image-to-text), best first; score: mean log-probability per generated token.
CREATE TABLE IF NOT EXISTS captions (
    result_id bigint           NOT NULL REFERENCES results (id) ON DELETE CASCADE,
    idx       integer          NOT NULL,
    job_id    text             NOT NULL,
    text      text             NOT NULL,
    score     double precision,
    PRIMARY KEY (result_id, idx)
);
CREATE INDEX IF NOT EXISTS captions_job_id ON captions (job_id);

-- Top-k classes, idx 0 the best; class_id is NULL for zero-shot labels.
CREATE TABLE IF NOT EXISTS classifications (
    result_id bigint           NOT NULL REFERENCES results (id) ON DELETE CASCADE,
    idx       integer          NOT NULL,
    job_id    text             NOT NULL,
    class_id  integer,
    label     text             NOT NULL,
    score     double precision NOT NULL,
    PRIMARY KEY (result_id, idx)
);
CREATE INDEX IF NOT EXISTS classifications_job_id ON classifications (job_id);
CREATE INDEX IF NOT EXISTS classifications_label ON classifications (label);

-- Instance masks as polygons ([[x, y], ...] in original-image pixels), with their boxes.
CREATE TABLE IF NOT EXISTS segments (
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
    polygon    jsonb            NOT NULL,
    PRIMARY KEY (result_id, idx)
);
CREATE INDEX IF NOT EXISTS segments_job_id ON segments (job_id);
CREATE INDEX IF NOT EXISTS segments_label ON segments (label);

-- Poses: one row per instance, its keypoints as [[x, y, confidence], ...] in the model's order.
CREATE TABLE IF NOT EXISTS keypoints (
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
    points     jsonb            NOT NULL,
    PRIMARY KEY (result_id, idx)
);
CREATE INDEX IF NOT EXISTS keypoints_job_id ON keypoints (job_id);

-- Rotated boxes: centre form (angle in radians) and the four corners ([[x, y], ...]).
CREATE TABLE IF NOT EXISTS oriented_boxes (
    result_id  bigint           NOT NULL REFERENCES results (id) ON DELETE CASCADE,
    idx        integer          NOT NULL,
    job_id     text             NOT NULL,
    class_id   integer          NOT NULL,
    label      text             NOT NULL,
    confidence double precision NOT NULL,
    cx         double precision NOT NULL,
    cy         double precision NOT NULL,
    width      double precision NOT NULL,
    height     double precision NOT NULL,
    angle      double precision NOT NULL,
    corners    jsonb            NOT NULL,
    PRIMARY KEY (result_id, idx)
);
CREATE INDEX IF NOT EXISTS oriented_boxes_job_id ON oriented_boxes (job_id);
CREATE INDEX IF NOT EXISTS oriented_boxes_label ON oriented_boxes (label);
