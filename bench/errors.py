"""Errors that the CLI turns into one-line messages and documented exit codes."""

from __future__ import annotations


class NSDBenchError(Exception):
    """Base class: a user-facing problem, reported in one line, never as a traceback."""

    exit_code = 1


class UsageError(NSDBenchError):
    exit_code = 2


class DataError(NSDBenchError):
    """An NSD root (real or synthetic) is missing a file or is inconsistent."""

    exit_code = 1


class WeightsMissing(NSDBenchError):
    exit_code = 1


class InvalidSubmission(NSDBenchError):
    exit_code = 3


class MetricDrift(NSDBenchError):
    exit_code = 4
