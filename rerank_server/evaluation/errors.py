"""The one failure evaluate.py reports: bad input or a refusing endpoint, as a single line for the user."""

from __future__ import annotations


class EvaluationError(Exception):
    """Bad data, bad options or an endpoint that refused: the message is shown as `error: <message>`."""
