-- OpenTelemetry traces across the queue (part 16): the context of the PRODUCER
-- span of the enqueue that inserted the row, as its propagator wrote it
-- ({"traceparent": "00-<trace id>-<span id>-01"}, and "tracestate" or
-- "baggage" when there are some). The worker that runs the task starts its
-- CONSUMER span as that span's child. NULL where nothing was traced: without
-- OpenTelemetry installed, a plain SQL insert, the seed, a periodic tick. A
-- nullable column without a default: added without rewriting the table.
ALTER TABLE tasks ADD COLUMN trace_context jsonb;
