"""Errors the CLI turns into one clear line and an exit code, never a traceback."""


class AutolabelError(Exception):
    """A usage or configuration problem (exit code 2). The message names the file or field."""


def flag_error(error, where: str) -> AutolabelError:
    """A pydantic ValidationError over a command's options as one line naming the flag:
    `WHERE: --batch-size: message` (a rule across options names its flags itself: `WHERE: message`)."""
    first = error.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:
        return AutolabelError(f"{where}: {message}")
    return AutolabelError(f"{where}: --{str(first['loc'][0]).replace('_', '-')}: {message}")


class ModelNotAvailable(AutolabelError):
    """A model id or path that cannot be loaded here (offline, or not downloaded)."""


class InputError(Exception):
    """One input file that cannot be used; it becomes an error record, the run goes on."""

    def __init__(self, file: str, reason: str):
        super().__init__(f"{file}: {reason}")
        self.file = file
        self.reason = reason

    @property
    def message(self) -> str:
        """The one line an error record and the summary show."""
        return f"{self.file}: {self.reason}"

    @property
    def files(self) -> list[dict[str, str]]:
        """Each unusable file with its reason, as an error record's `files` lists them."""
        return [{"file": self.file, "reason": self.reason}]


class GroupInputError(InputError):
    """Every unusable file of one group, each with its reason: a group is read whole, so all of
    them are named, not just the first. `file` is `where` (a manifest line) if given, else the first
    file, as error records had it before they listed `files`."""

    def __init__(self, errors: list[InputError], where: str | None = None):
        self.errors = list(errors)
        self.where = where
        super().__init__(where or self.errors[0].file, self.errors[0].reason)
        self.args = (self.message,)

    @property
    def message(self) -> str:
        return describe_files(self.files, self.where)

    @property
    def files(self) -> list[dict[str, str]]:
        return [f for e in self.errors for f in e.files]


def describe_files(files: list[dict[str, str]], where: str | None = None) -> str:
    """One line naming every unusable file with its reason, after `where` (a manifest line) if given:
    `a.jpg: empty file (0 bytes)`, or `3 unusable files: a.jpg: ...; b.jpg: ...; c.jpg: ...`."""
    parts = [f"{f['file']}: {' '.join(str(f['reason']).split())}" for f in files]
    body = parts[0] if len(parts) == 1 else f"{len(parts)} unusable files: " + "; ".join(parts)
    return f"{where}: {body}" if where else body
