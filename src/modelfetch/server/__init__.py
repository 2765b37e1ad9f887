"""The HTTP service: REST API, WebSocket progress, Prometheus metrics and the dashboard page."""

from .app import create_app, run_server, serve

__all__ = ["create_app", "run_server", "serve"]
