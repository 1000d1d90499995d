"""Errors a user can cause and fix.

Every exception here carries one sentence meant for the person at the terminal; the command line
prints it and exits non-zero instead of showing a traceback. Programming errors stay ordinary
exceptions so that they keep their tracebacks.
"""


class AffbenchError(Exception):
    """A problem with the user's input, data or environment, explained in one sentence."""


class DataLayoutError(AffbenchError):
    """A dataset root does not have the layout its pipeline expects."""


class ParameterMismatchError(AffbenchError):
    """An output folder was made with other preprocessing parameters than the ones asked for now."""


class UnknownNameError(AffbenchError):
    """A name (encoder, suite, metric, dataset) that no registry knows."""

    def __init__(self, kind: str, name: str, valid):
        valid = sorted(valid)
        super().__init__(f"Unknown {kind} {name!r}; valid {kind}s are: {', '.join(valid)}.")
        self.kind, self.name, self.valid = kind, name, valid
