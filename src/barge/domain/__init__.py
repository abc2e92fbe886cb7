"""Pure domain: batches, files, the lifecycle, input validation. No I/O, no imports of ours."""
