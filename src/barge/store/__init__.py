"""Metadata and work-queue persistence behind the ``Store`` protocol."""
