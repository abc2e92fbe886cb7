"""The HTTP surface: routers, the auth dependency, error mapping."""
