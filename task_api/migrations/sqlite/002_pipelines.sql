-- Pipelines: a pipeline task carries its definition (a snapshot taken at create, so a running
-- pipeline is not changed by a redeploy) and the stages it has started; its stage tasks are
-- ordinary tasks that name it, their stage and, for a mapped stage, the item's position.
ALTER TABLE tasks ADD COLUMN parent_id TEXT;
ALTER TABLE tasks ADD COLUMN stage TEXT;
ALTER TABLE tasks ADD COLUMN item_index INTEGER;
ALTER TABLE tasks ADD COLUMN pipeline_def TEXT;
ALTER TABLE tasks ADD COLUMN stages_started TEXT;
-- One task per (pipeline, stage, item): a stage created twice fails its transaction instead of
-- running twice, whatever the code above it does.
CREATE UNIQUE INDEX tasks_stage_item ON tasks (parent_id, stage, COALESCE(item_index, -1))
    WHERE parent_id IS NOT NULL;
