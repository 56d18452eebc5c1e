"""OTLP JSON, written straight from the SDK's spans and metrics with msgspec."""
