"""The APIs batchrun speaks: request bodies, the SSE decoder and the stream folds. Pure code:
no I/O, no retries, no clocks."""
