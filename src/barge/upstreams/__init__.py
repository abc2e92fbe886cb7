"""Upstreams: the HTTP client that sends one request to an OpenAI-compatible server."""
