-- Batch output files (README "Batches"; src/batches/files.rs): beside its
-- result, a row's handler may return lines for named files; a batch's file
-- is its succeeded rows' lines for that name, in row order.
--
-- A row's lines, `{name: [lines]}`, from its final successful attempt,
-- written in the transaction of its end. NULL for a row without files
-- (most rows): they cost nothing extra.
ALTER TABLE batch_rows ADD COLUMN files jsonb;

-- The names of a batch's files (for `output_files` and to tell an unknown
-- name from an empty file), added by the row ends that carry lines for
-- them (ON CONFLICT DO NOTHING). Deleting or pruning the batch removes
-- them. Lock order: after the ended rows, before `batch_counts`.
CREATE TABLE batch_files (
    batch_id    uuid NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    name        text NOT NULL,
    PRIMARY KEY (batch_id, name)
);
