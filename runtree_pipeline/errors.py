"""Errors a user can fix by editing the config, kept apart from bugs so the CLI can print them as one line each."""

from __future__ import annotations

from collections.abc import Iterable


def first_line(error: BaseException) -> str:
    """The readable part of an exception from a library that writes several lines (Hydra, OmegaConf, MLflow)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class ConfigError(ValueError):
    """One problem in the config, located by stage and key so the user knows where to look."""

    def __init__(self, message: str, *, stage: str | None = None, key: str | None = None) -> None:
        self.stage = stage
        self.key = key
        self.detail = message
        where = []
        if stage is not None:
            where.append(f"stage '{stage}'")
        if key is not None:
            where.append(f"key '{key}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class ConfigErrors(ValueError):
    """All problems found in one validation pass, so a user fixes them in one go rather than one per attempt."""

    def __init__(self, errors: Iterable[ConfigError]) -> None:
        self.errors = sorted(errors, key=lambda e: (e.stage or "", e.key or "", e.detail))
        super().__init__("\n".join(str(e) for e in self.errors))


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: open runs were ended KILLED and the execution can be finished with `resume`."""

    def __init__(self, pipeline_id: str, stage: str | None, killed: int) -> None:
        self.pipeline_id = pipeline_id
        self.stage = stage
        self.killed = killed
        super().__init__(
            f"interrupted during stage '{stage}': {killed} open run(s) ended KILLED; "
            f"finish with resume={pipeline_id} (or resume=last)"
        )
