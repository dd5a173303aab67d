"""Every error a user can act on, each with its exit code (`runtree`, which only reads, gives a failed read 3, not
4); anything else is a bug.

The CLIs print a `RuntreeError` as one line and exit with its `exit_code`; other exceptions keep their traceback.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable


def first_line(error: BaseException) -> str:
    """The readable part of an exception from a library that writes several lines (Hydra, OmegaConf, MLflow)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class RuntreeError(Exception):
    """Something the user can fix or retry, as opposed to a bug; `exit_code` is what the shell sees."""

    exit_code = 1


class ConfigError(RuntreeError, ValueError):
    """One problem in the config, located by stage and key so the user knows where to look."""

    exit_code = 2

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


class UnknownKey(ConfigError):
    """A key the config does not allow, most often a misspelt one: listed first among its stage's errors, since the
    others may follow from it (a misspelt `_target_` is also a missing one)."""


class ConfigErrors(RuntreeError, ValueError):
    """All problems found in one validation pass, so a user fixes them in one go rather than one per attempt."""

    exit_code = 2

    def __init__(self, errors: Iterable[ConfigError]) -> None:
        self.errors = sorted(
            errors, key=lambda e: (e.stage or "", not isinstance(e, UnknownKey), e.key or "", e.detail)
        )
        super().__init__("\n".join(str(e) for e in self.errors))


class StageInputError(RuntreeError, ValueError):
    """A `${best:...}` reference that has no value in the upstream stage's best run: that stage fails, not the run."""

    exit_code = 1


class UnknownPipeline(RuntreeError, LookupError):
    """`resume=` names no pipeline execution of this experiment."""

    exit_code = 2


class ExecutionTaken(RuntreeError):
    """`resume=` of an execution whose driver still runs it: two drivers would write the same runs."""

    exit_code = 2


class UnknownExperiment(RuntreeError, LookupError):
    """An experiment name that the store does not hold."""

    exit_code = 2


class NotRecorded(RuntreeError, LookupError):
    """`runtree` was asked for a pipeline, stage or best run the store does not hold: a wrong name, not a broken
    store, so scripts can tell it from exit 3."""

    exit_code = 2


class ExportFailed(RuntreeError):
    """`runtree export -o FILE` cannot write FILE: the user's path or a missing optional writer (pyarrow), fixed by
    a different argument, hence exit 2 and not the tracking store's 4."""

    exit_code = 2


class TrackingUnavailable(RuntreeError):
    """The tracking store cannot be reached or used; raised before any work starts."""

    exit_code = 3


class TrackingFailed(RuntreeError):
    """A write still failed after retries: the run is left for `resume` to redo, never silently dropped.

    `pipeline_id` is set once the failure stopped a pipeline, whose execution that `resume` finishes.
    """

    exit_code = 4

    def __init__(self, message: str, *, pipeline_id: str | None = None) -> None:
        self.detail = message
        self.pipeline_id = pipeline_id
        super().__init__(self.describe())

    def describe(self, resume_command: str | None = None) -> str:
        """The message, ending with how to finish the execution: `resume_command` (the CLI's whole command line)
        when given, else the `resume=` config value, which is all the Python API has."""
        if self.pipeline_id is None:
            return self.detail
        how = f": {resume_command}" if resume_command else f" resume={self.pipeline_id}"
        return f"{self.detail}; redo what is missing with{how}"


class Pruned(Exception):  # noqa: N818 - named for what happened to the leaf, as Optuna's TrialPruned is
    """Raised by `report` inside a leaf its level's pruner stopped: let it propagate, and the leaf's run ends
    KILLED as pruned at `step` (a target that catches it and returns finishes normally instead).

    An `Exception`, so a target's own `except Exception` cleanup still runs, and not a `RuntreeError`: it is a
    decision, not a problem for the user to fix.
    """

    def __init__(self, step: int) -> None:
        self.step = step
        super().__init__(f"pruned at step {step}")


class Preempted(Exception):  # noqa: N818 - named for what happened to the leaf, as Pruned is
    """Raised once by `report` or `save_checkpoint` inside a leaf after the pipeline got SIGTERM (how Slurm,
    Kubernetes and spot instances say "you have seconds"): the target may catch it and save a checkpoint first. The
    pipeline ends once its leaves are done or `preempt_grace_s` has passed, and `resume=` continues each leaf from its
    newest checkpoint."""

    def __init__(self) -> None:
        super().__init__("the pipeline is stopping (SIGTERM): save a checkpoint now if you can")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: open runs were ended KILLED and the execution can be finished with `resume`.

    `exit_code` follows the shell's 128 + signal convention (130 for SIGINT, 143 for SIGTERM), so a supervisor
    that sent SIGTERM sees that its own signal ended the process.
    """

    def __init__(
        self, pipeline_id: str, stage: str | None, killed: int, *, signum: int = signal.SIGINT, recorded: bool = True
    ) -> None:
        self.pipeline_id = pipeline_id
        self.stage = stage
        self.killed = killed
        self.signum = signum
        self.exit_code = 128 + signum
        self.recorded = recorded
        super().__init__(self.describe())

    def describe(self, resume_command: str | None = None) -> str:
        """The message, ending with how to finish the execution: `resume_command` (the CLI's whole command line)
        when given, else the `resume=` config value, which is all the Python API has."""
        when = f" during stage '{self.stage}'" if self.stage else ""
        if not self.recorded:
            return f"interrupted{when}: nothing was recorded yet; run the same command again"
        how = f": {resume_command}" if resume_command else f" resume={self.pipeline_id} (or resume=last)"
        return f"interrupted{when}: {self.killed} open run(s) ended KILLED; finish with{how}"
