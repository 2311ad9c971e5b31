-- The columns results gained after the first release.
--
-- IF NOT EXISTS: a database created by a later infra/schema.sql (before there were migrations)
-- has one or both already; adopting it records version 2 and changes nothing.

-- When S3 saw the object (from the event).
ALTER TABLE results ADD COLUMN IF NOT EXISTS object_created_at timestamptz;

-- What the output is (outputs.py); every row written before this column was a set of boxes.
ALTER TABLE results ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'detections';
