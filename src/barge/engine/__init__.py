"""The engine: validates inputs, dispatches requests, writes results, finishes batches."""
