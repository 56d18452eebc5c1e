"""Observability: logging and OpenTelemetry set-up, the progress line, and the OTLP JSON files."""
