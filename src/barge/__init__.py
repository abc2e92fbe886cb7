"""Barge: a self-hosted batch API server that speaks the OpenAI Files and Batch APIs."""

__version__ = "0.1.0"
