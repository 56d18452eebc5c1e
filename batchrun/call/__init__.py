"""Stage 3, call: the endpoint and its transport, one timed streamed attempt, the retry policy,
and the stream-mode driver that takes one request through its attempts into a row."""
