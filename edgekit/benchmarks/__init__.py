"""Measurement: an isolated worker process per measurement, metrics, reports."""
