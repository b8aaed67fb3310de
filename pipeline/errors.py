"""Exception classes that separate the user's mistakes from our bugs.

The CLI prints a :class:`PipelineError` as one paragraph and exits non-zero;
anything else is a bug and keeps its traceback (Polygraphy's habit).
"""
from __future__ import annotations


class PipelineError(Exception):
    """A problem the user can fix: bad option, missing data, foreign file..."""

    exit_code = 2


class ParityError(PipelineError):
    """An exported model disagrees with its PyTorch reference beyond tolerance."""

    exit_code = 3
