"""Errors the CLI turns into one clear line and an exit code, never a traceback."""


class AutolabelError(Exception):
    """A usage or configuration problem (exit code 2). The message names the file or field."""


class ModelNotAvailable(AutolabelError):
    """A model id or path that cannot be loaded here (offline, or not downloaded)."""


class InputError(Exception):
    """One input file that cannot be used; it becomes an error record, the run goes on."""

    def __init__(self, file: str, reason: str):
        super().__init__(f"{file}: {reason}")
        self.file = file
        self.reason = reason
