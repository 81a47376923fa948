-- Who asked to cancel a task ('taskworker cancel', 'the dashboard (user admin)'),
-- so that the stored reason names it: a pending task cancelled at once gets
-- `cancelled: by <who>` as its error; a running one keeps the request here until
-- its holder (or the rescue, if the holder died) writes `cancelled`, naming it.
ALTER TABLE tasks ADD COLUMN cancel_requested_by text;
