"""`python -m runtree_pipeline +sweep=NAME key=value ...`: Hydra composes the config, we plan, run and report.

User errors are one line each on stderr with a non-zero exit (2: bad config or unknown `resume`, 3: tracking store
unusable, 4: a result could not be recorded, 130: interrupted, 143: terminated, 1: a stage produced no result); bugs
keep their traceback. What Hydra itself rejects (an override it cannot parse or apply, an unknown sweep) is a bad
config too: Hydra is made to raise it (HYDRA_FULL_ERROR=1) instead of printing it and exiting 1, and it is worded
here with the fix. A user who sets HYDRA_FULL_ERROR=1 asked for Hydra's full traceback and gets it.

Nothing heavy is imported at module level: the entry point installs its signal handling before Hydra, OmegaConf or
the planner are imported, so a Ctrl-C during start-up is an exit code, not a traceback.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import re
import signal
import sys
import textwrap
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

log = logging.getLogger("runtree_pipeline")
CONFIG_PACKAGE = "runtree_pipeline.conf"
PROG = "python -m runtree_pipeline"
_GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"
_show_hydra_errors = False
"""HYDRA_FULL_ERROR=1 as the user set it (the CLI sets it for itself while Hydra runs): what Hydra logs on its own
is then shown as well as our lines."""


def _fail(code: int, message: str) -> NoReturn:
    from runtree_pipeline.interrupts import received

    # An interrupt that a library turned into an error of its own (OmegaConf does) is reported as the interrupt.
    signum = received()
    if signum is not None and code != 128 + signum:
        code, message = 128 + signum, "interrupted (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
    for line in message.splitlines():
        print(f"runtree: error: {line}", file=sys.stderr)
    sys.stderr.flush()
    sys.exit(code)


def main() -> None:
    """Entry point of `python -m runtree_pipeline` (and of any console script pointed at it).

    The whole command runs inside `interruptible`, so a library that swallows the KeyboardInterrupt or turns it into
    an error of its own (OmegaConf does, during composition) still ends as 128 + the signal. Signals are ignored
    once we are done: Python restores the default handlers while it shuts down, and a late SIGTERM would otherwise
    kill the process after its work is finished.
    """
    try:
        _guarded()
    except SystemExit as e:
        _leave(e.code)
    _leave(0)


def _guarded() -> None:
    from runtree_pipeline import interrupts

    interrupts.set_handlers(interrupts.raise_signalled)
    signum: int | None = None
    try:
        with interrupts.interruptible():
            try:
                _main(sys.argv[1:])
            finally:
                signum = interrupts.received()
    except KeyboardInterrupt as e:
        interrupts.set_handlers(signal.SIG_IGN)
        _interrupted(getattr(e, "exit_code", 128 + (signum or signal.SIGINT)))
    except Exception:
        if signum is None:
            raise
        interrupts.set_handlers(signal.SIG_IGN)
        _interrupted(128 + signum)
    finally:
        interrupts.set_handlers(signal.SIG_IGN)
    if signum is not None:
        _interrupted(128 + signum)


def _leave(code: object) -> NoReturn:
    """Exit without tearing down the interpreter: the work is done and written, and freeing MLflow's, SQLAlchemy's
    and Hydra's objects one by one took 0.7-0.8 s of every command. What an exit must do still happens, in the
    interpreter's order: threads' exit callbacks and the wait for non-daemon threads (joblib's, concurrent.futures'),
    then exit handlers (logging's flush, MLflow's, Ray's), then database connections are closed (a sqlite store's
    write-ahead log is folded into its file), then the standard streams are flushed."""
    import atexit
    import threading

    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    threading._shutdown()  # type: ignore[attr-defined]  # what Py_Finalize calls first; nothing public does it
    atexit._run_exitfuncs()
    from runtree_pipeline.tracking.sqlite import close_engines

    close_engines()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code or 0)


def _interrupted(code: int) -> NoReturn:
    _fail(code, "interrupted (SIGTERM)" if code == 128 + signal.SIGTERM else "interrupted")


def import_from_working_directory() -> None:
    """Make the working directory importable for `_target_`s, as `python -m` does.

    A console script puts its own bin directory first on sys.path instead, and `python -P` nothing; spawned worker
    processes copy the driver's sys.path, and Ray adds the driver's working directory to its workers' path.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _main(argv: list[str]) -> None:
    import_from_working_directory()
    args = _parse_args(argv)
    if args.help:
        print(help_text(args.config_dir))
        return
    import hydra
    import yaml
    from hydra.errors import HydraException

    from runtree_pipeline.cli.hydra_callbacks import discard_empty_dirs, forget_new_dirs

    forget_new_dirs()
    global _show_hydra_errors
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    _show_hydra_errors = full_error == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra.main(version_base=None, config_path=f"pkg://{CONFIG_PACKAGE}", config_name="config")(_run)()
    except (HydraException, yaml.YAMLError) as e:
        discard_empty_dirs()
        if full_error == "1":
            raise
        _fail(2, describe_hydra_error(e, args.overrides))
    finally:
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error


def _parse_args(argv: list[str]) -> Any:
    """Hydra's own command line (the same parser `hydra.main` runs), checked here so a bad flag is one of our
    error lines and `--help` can be answered without composing a config."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()
    parser.prog = PROG
    parser.error = lambda message: _fail(2, f"{message} (see {PROG} --help)")  # type: ignore[method-assign]
    return parser.parse_args(argv)


def _run(cfg: Any) -> None:
    """The Hydra task. An error the user can act on ends as one line with its class's exit code; anything else is
    a bug and keeps its traceback."""
    from runtree_pipeline.errors import Interrupted, RuntreeError

    try:
        _execute(cfg)
    except (RuntreeError, Interrupted) as e:
        _fail(e.exit_code, _worded(e))


def _execute(cfg: Any) -> None:
    """Plan, run, report. Until the pipeline has run, a job that ends having recorded nothing (an invalid config,
    `resume=` of nothing, an unusable store, a dry run) takes away the output directory Hydra made for it."""
    from hydra.core.hydra_config import HydraConfig

    from runtree_pipeline.plan.stages import build_plan

    hydra_cfg = HydraConfig.get()
    sweep_name = hydra_cfg.runtime.choices.get("sweep") or "runtree"
    try:
        with _quiet("hydra.utils"):
            plan = build_plan(cfg, default_experiment=sweep_name)
        if cfg.get("dry_run"):
            print(plan.describe())
            _discard_output_dir()
            return

        from hydra.errors import InstantiationException
        from hydra.utils import instantiate

        from runtree_pipeline.api import run_plan
        from runtree_pipeline.errors import ConfigError, first_line
        from runtree_pipeline.reports.progress import make_progress

        try:
            executor = instantiate(cfg.executor) if cfg.get("executor") else None
        except InstantiationException as e:
            target = cfg.executor.get("_target_")
            raise ConfigError(f"cannot create {target}: {first_line(e.__cause__ or e)}", key="executor") from e
        result = run_plan(
            plan,
            executor=executor,
            progress=make_progress(bool(cfg.get("progress", True))),
            command=_command(hydra_cfg.overrides),
            plots=bool(cfg.get("plots", True)),
            output_dir=hydra_cfg.runtime.output_dir,
        )
    except BaseException as e:
        if not _recorded_anything(e):
            _discard_output_dir()
        raise

    from runtree_pipeline.reports.summary import render, write_json

    where = f"experiment '{result.experiment}' in {result.tracking_uri}"
    if not result.tracking_uri.startswith(("http://", "https://")):
        where += f" — run `mlflow ui --backend-store-uri {result.tracking_uri}` and open that experiment"
    print(render(result, plan, where=where))
    summary = write_json(result, Path(hydra_cfg.runtime.output_dir) / "summary.json")
    log.info("summary written to %s", summary)
    if not result.ok:
        failed = [f"{n}: {s.reason}" for n, s in result.stages.items() if s.status != "FINISHED"]
        _fail(1, "pipeline did not complete: " + "; ".join(failed))


def _recorded_anything(error: BaseException) -> bool:
    """Whether a job that ended with `error` before its pipeline finished may have recorded something."""
    from runtree_pipeline.errors import Interrupted, RuntreeError
    from runtree_pipeline.interrupts import received

    if isinstance(error, Interrupted):
        return error.recorded
    if isinstance(error, RuntreeError):
        return error.exit_code not in (2, 3)  # a bad config, `resume=` of nothing, an unusable store: before any run
    # Before the runner took over (it reports a signal as Interrupted); a bug keeps its output directory.
    return not isinstance(error, KeyboardInterrupt) and received() is None


def _discard_output_dir() -> None:
    from hydra.core.hydra_config import HydraConfig

    from runtree_pipeline.cli.hydra_callbacks import discard_output_dir

    hydra_cfg = HydraConfig.get()
    discard_output_dir(hydra_cfg.runtime.output_dir, launch_dir=hydra_cfg.runtime.cwd, job_name=hydra_cfg.job.name)


def _worded(error: BaseException) -> str:
    """An error after which `resume=` finishes the execution ends with the whole command line that does it, the way
    it was typed (the same program, config flags and overrides), to paste in the same directory. In a multirun it
    is the interrupted job's own command; jobs after it in a sequential multirun never started, and it says so."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from runtree_pipeline.cli.hydra_callbacks import SEQUENTIAL_LAUNCHER
    from runtree_pipeline.errors import Interrupted, TrackingFailed

    if not isinstance(error, (Interrupted, TrackingFailed)) or not error.pipeline_id:
        return str(error)
    if isinstance(error, Interrupted) and not error.recorded:
        return str(error)
    hydra_cfg = HydraConfig.get()
    command = _command(hydra_cfg.overrides, resume=error.pipeline_id)
    message = error.describe(command)
    if hydra_cfg.mode == RunMode.MULTIRUN and hydra_cfg.launcher.get("_target_") == SEQUENTIAL_LAUNCHER:
        message = f"multirun job #{hydra_cfg.job.num} stopped; the jobs after it did not start\n{message}"
    return message


def _command(overrides: Any, resume: str | None = None) -> str:
    """This job's command line (see `cli_command`), with the config flags as Hydra's parser read them from this
    process's arguments: a parallel multirun's worker processes are given the launcher's."""
    from runtree_pipeline.tracking.provenance import cli_command

    args = _parse_args(sys.argv[1:])
    return cli_command(
        sys.argv[0] if sys.argv else "",
        list(overrides.task),
        list(overrides.hydra),
        config_dir=args.config_dir,
        config_path=args.config_path,
        config_name=args.config_name,
        resume=resume,
    )


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """A logger silenced for a moment: Hydra logs an import it cannot do (with a misleading cause: "'mytargets' is
    not a package" for a missing function) on stdout, beside our own line on stderr, unless the user asked for
    everything Hydra has to say (HYDRA_FULL_ERROR=1)."""
    logger = logging.getLogger(name)
    level = logger.level
    if not _show_hydra_errors:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


# ---- Hydra's errors, worded as ours ----------------------------------------------------------------------------


def describe_hydra_error(error: Exception, overrides: Sequence[str]) -> str:
    """One line for an error Hydra raised while reading the command line or composing the config, with the fix.

    Hydra's own text spans several lines (a search path dump, a grammar link) and for an unknown key keeps the
    reason in `__cause__`; the user needs the reason and what to type instead.
    """
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    mark = getattr(error, "problem_mark", None)
    if mark is not None:
        problem = ", ".join(filter(None, (getattr(error, "context", None), getattr(error, "problem", None))))
        return f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}: not valid YAML: {problem}"
    text = str(error).split("\nConfig search path:")[0]
    if isinstance(error, OverrideParseException):
        lines = [ln.strip() for ln in error.message.splitlines()]
        noise = ("Error parsing override", "See http")
        reason = next((ln for ln in lines if ln and not ln.startswith(noise) and set(ln) != {"^"}), "cannot parse it")
        return (
            f"malformed override '{error.override}': {reason} "
            f"(quote a value that holds special characters, e.g. 'key=\"a,b\"'; grammar: {_GRAMMAR})"
        )
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options is not None:
        group, _, name = error.missing_cfg_file.rpartition("/")
        prefix = _override_prefix(group, overrides)
        choices = ", ".join(f"{prefix}{group}={option}" for option in sorted(error.options)) or "none"
        hint = _did_you_mean(name, error.options, f"{prefix}{group}=")
        line = f"unknown {group} '{name}'{hint}; available: {choices}"
        if group == "sweep":
            line += f"; your own: --config-dir DIR with DIR/sweep/{name}.yaml"
        return line
    match = re.match(r"Could not override '([^']+)'\. No match in the defaults list", text)
    if match:
        group = match.group(1)
        given = next((o for o in overrides if re.match(rf"{re.escape(group)}(@[^=]*)?=", o)), f"{group}=NAME")
        return f"'{given}' overrides a {group} that is not chosen by default: did you mean +{given}?"
    match = re.match(r"Could not override '([^']+)'", text)
    cause = error.__cause__
    if match and isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        key = match.group(1)
        missing = str(cause.full_key)
        parent, _, leaf = missing.rpartition(".")
        known = list(cause.parent_node.keys()) if getattr(cause, "parent_node", None) is not None else []
        hint = _did_you_mean(leaf, [str(k) for k in known], f"{parent}." if parent else "")
        given = next((o for o in overrides if o.split("=", 1)[0] == key), f"{key}=VALUE")
        return f"cannot override '{key}': there is no key '{missing}'{hint}; to add a new key use +{given}"
    line = " ".join(ln.strip() for ln in text.splitlines() if ln.strip())
    if isinstance(cause, OmegaConfBaseException):
        line += f": {str(cause).strip().splitlines()[0]}"
    return line


def _override_prefix(group: str, overrides: Sequence[str]) -> str:
    for override in overrides:
        match = re.match(rf"([+~]*){re.escape(group)}(@[^=]*)?=", override)
        if match:
            return match.group(1)
    return ""


def _did_you_mean(name: str, options: Sequence[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


# ---- --help ----------------------------------------------------------------------------------------------------


def help_text(config_dir: str | None = None) -> str:
    """The project's usage: the pipelines Hydra can find (shipped and in `config_dir`), every top-level key and
    every executor with their defaults, described by the comments next to them in the config files."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    overrides = []
    if config_dir is not None and Path(config_dir).is_dir():
        quoted = str(Path(config_dir).resolve()).replace("\\", "\\\\").replace("'", "\\'")
        overrides.append(f"hydra.searchpath=['file://{quoted}']")
    GlobalHydra.instance().clear()
    with initialize_config_module(CONFIG_PACKAGE, version_base=None):
        loader = GlobalHydra.instance().config_loader()
        sweeps = loader.get_group_options("sweep", config_name="config", overrides=overrides)
        executors = loader.get_group_options("executor", config_name="config", overrides=overrides)
        base = compose("config", overrides=overrides, return_hydra_config=True)
        executor_keys = {
            name: compose("config", overrides=[*overrides, f"executor={name}"]).executor for name in executors
        }

    def text_of(path: str) -> str:
        if config_dir is not None and (Path(config_dir) / path).is_file():
            return (Path(config_dir) / path).read_text()
        resource = resources.files(CONFIG_PACKAGE).joinpath(path)
        return resource.read_text() if resource.is_file() else ""

    top_comments = _key_comments(text_of("config.yaml"))
    out = [
        f"usage: {PROG} [--config-dir DIR] [-m] +sweep=NAME [KEY=VALUE ...]",
        "",
        "Runs a DAG of sweep stages declared in Hydra config and records it as an MLflow run tree, with every",
        "parent carrying the best of its children.",
        "",
        "pipelines (choose one with +sweep=NAME; your own go in DIR/sweep/NAME.yaml, found with --config-dir DIR):",
    ]
    out += _table((f"+sweep={name}", _description(text_of(f"sweep/{name}.yaml"))) for name in sweeps)
    if not sweeps:
        out.append("  (none found)")
    out += ["", "keys (KEY=VALUE sets one, shown with its default; any key of a sweep too: stages.NAME.params.K=V):"]
    rows = []
    for key, value in base.items():
        if key == "hydra":
            continue
        if key == "executor":
            shown = f"executor={base.hydra.runtime.choices.get('executor')}"
        elif isinstance(value, (str, int, float, bool)) or value is None:
            shown = f"{key}={_yaml_scalar(value)}"
        else:
            shown = key
        rows.append((shown, top_comments.get(key, "")))
    out += _table(rows)
    out += ["", "executors (executor=NAME chooses where leaves run; executor.KEY=VALUE sets one of its keys):"]
    width = max((len(name) for name in executor_keys), default=0)
    for name, keys in executor_keys.items():
        text = text_of(f"executor/{name}.yaml")
        out += _table([(name.ljust(width), _description(text))])
        comments = _key_comments(text)
        rows = [(f"{k}={_yaml_scalar(v)}", comments.get(k, "")) for k, v in keys.items() if k != "_target_"]
        out += _table(rows, indent=4)
    out += [
        "",
        "examples:",
        f"  {PROG} +sweep=cnn dry_run=true                      # the DAG and run counts, records nothing",
        f"  {PROG} +sweep=cnn stages.search.subvariants.n=8 executor=processes executor.workers=4",
        f"  {PROG} -m +sweep=cnn stages.search.params.epochs=2,3   # Hydra multirun: one pipeline per job",
        f"  {PROG} +sweep=cnn resume=last                       # finish the newest execution",
        f"  {PROG} --config-dir ./my_conf +sweep=mine           # ./my_conf/sweep/mine.yaml; targets import from .",
        "",
        "exit codes: 0 done; 1 a stage produced no successful leaf; 2 invalid config; 3 tracking store unusable;",
        "4 a result could not be recorded; 130 interrupted (SIGINT); 143 terminated (SIGTERM).",
        "",
        "Hydra's own flags and options (--cfg job, --info, hydra/launcher=joblib, ...): --hydra-help.",
        "Reading results afterwards: runtree --help. More: the project's README.md.",
    ]
    return "\n".join(out)


def _table(rows: Any, indent: int = 2, line_width: int = 118) -> list[str]:
    rows = list(rows)
    if not rows:
        return []
    width = max(len(left) for left, _ in rows)
    margin = " " * (indent + width + 2)
    out = []
    for left, right in rows:
        wrapped = textwrap.wrap(right, max(40, line_width - len(margin))) or [""]
        out.append(f"{' ' * indent}{left.ljust(width)}  {wrapped[0]}".rstrip())
        out += [margin + more for more in wrapped[1:]]
    return out


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


_KEY_LINE = re.compile(r"^(?:  - )?([A-Za-z_]\w*):[^#]*#\s*(.+)$")


def _key_comments(text: str) -> dict[str, str]:
    """The comment written next to each top-level key (or defaults-list entry), so the config file documents its
    keys in one place, for readers of the file and of --help alike."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        match = _KEY_LINE.match(line)
        if match:
            out.setdefault(match.group(1), match.group(2).strip())
    return out


def _description(text: str) -> str:
    """The leading comment of a config file, without Hydra's `# @package` directive."""
    lines = []
    for line in text.strip().splitlines():
        if not line.startswith("#"):
            break
        body = line.lstrip("#").strip()
        if body and not body.startswith("@package"):
            lines.append(body)
    return " ".join(lines)
