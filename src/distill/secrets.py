"""Keeping credentials out of every config, log line and file that a run leaves behind.

A credential is the value of an environment variable named like one (`WANDB_API_KEY`, `HF_TOKEN`,
...; 8 characters or more) and the value of a command-line override whose key is named like one
(`+hydra.job.env_set.WANDB_API_KEY=...`, `+logger.wandb.api_key=...`; each value of a sweep).
`scrub` replaces them in any text; `CredentialGuard` (a Hydra callback) and `guard_job` (called by
`distill.cli.run_task`) apply it to the files Hydra writes and, through the log record factory, to
every log line.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

REDACTED = "<redacted>"
# Names of config keys, overrides and environment variables whose values are credentials. A name
# matches when it ends a word: `tokenizer`, `max_new_tokens` and `pad_token_id` are no credentials.
SECRET_NAME = re.compile(
    r"(?:api[_-]?keys?|private[_-]?keys?|secrets?|passwords?|passwd|credentials?)(?![a-z0-9])"
    r"|(?<!pad_)(?<!eos_)(?<!bos_)(?<!unk_)(?<!sep_)(?<!cls_)(?<!mask_)token(?![a-z0-9])(?![_-]ids?(?![a-z0-9]))",
    re.IGNORECASE,
)
ENV_MIN_CHARS = 8  # shorter values of credential-named variables are not scrubbed from text
CLI_MIN_CHARS = 6  # nor shorter values of credential overrides on their own (`key=value` always is)
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")

_overrides_seen: set[str] = set()  # overrides of this process's jobs (a submitted job has no command line)
_watched: set[Path] = set()  # files to clean once more when the process exits, however it exits


def is_secret_name(name: str) -> bool:
    """Whether a key or variable name holds a credential (`api_key`, `WANDB_API_KEY`, `authToken`, ...)."""
    return bool(SECRET_NAME.search(re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", str(name))))


def secret_values() -> set[str]:
    """Values of environment variables named like credentials (WANDB_API_KEY, HF_TOKEN, ...)."""
    return {v for k, v in os.environ.items() if is_secret_name(k) and len(v) >= ENV_MIN_CHARS}


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return [] if value is None else [str(value)]


@functools.lru_cache(maxsize=1024)
def _credential_override(override: str) -> tuple[str, tuple[str, ...]] | None:
    """(key as written, its values) of a `key=value` override whose key is named like a credential."""
    key, sep, raw = override.partition("=")
    if not sep or key.startswith("-") or not is_secret_name(key):
        return None
    values = {raw}
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_override(override)
        items = list(parsed.sweep_string_iterator()) if parsed.is_sweep_override() else [parsed.value()]
        values.update(_strings(items))
    except Exception:  # noqa: BLE001 - not Hydra's syntax: take the text, and each item of a sweep
        values.update(raw.split(","))
    values |= {v.strip("'\" ") for v in values}
    return key, tuple(sorted(v for v in values if v))


def remember(overrides: Iterable[Any]) -> None:
    """Count the credentials among `overrides` (a job's, when its command line is not this process's)."""
    _overrides_seen.update(str(o) for o in overrides if _credential_override(str(o)))


def _replacements() -> list[tuple[str, str]]:
    pairs = dict.fromkeys(secret_values(), REDACTED)
    for override in [*sys.argv[1:], *_overrides_seen]:
        found = _credential_override(override)
        if found is None:
            continue
        key, values = found
        for value in values:
            pairs[f"{key}={value}"] = f"{key}={REDACTED}"
            if len(value) >= CLI_MIN_CHARS and "${" not in value:  # an interpolation names a credential, is none
                pairs[value] = REDACTED
    return sorted(pairs.items(), key=lambda p: -len(p[0]))  # a credential inside a longer one goes last


def secret_strings() -> set[str]:
    """Every credential value known to this process: the environment's and the command line's."""
    return {needle for needle, replacement in _replacements() if replacement == REDACTED}


def scrub(text: str) -> str:
    """`text` with every credential replaced by `<redacted>` (`key=<redacted>` for a credential override)."""
    for needle, replacement in _replacements():
        if needle in text:
            text = text.replace(needle, replacement)
    return text


def redact(config: Any, _secrets: set[str] | None = None) -> Any:
    """A copy of a plain config (dicts, lists, scalars) with credentials replaced by `<redacted>`.

    A value is a credential when its key is named like one, or when it contains a credential value
    (e.g. a `${oc.env:WANDB_API_KEY}` that was resolved).
    """
    secrets = secret_strings() if _secrets is None else _secrets
    if isinstance(config, dict):
        return {
            k: REDACTED if is_secret_name(str(k)) and config[k] not in (None, "") else redact(v, secrets)
            for k, v in config.items()
        }
    if isinstance(config, (list, tuple)):
        return type(config)(redact(v, secrets) for v in config)
    if isinstance(config, str) and any(s in config for s in secrets):
        return REDACTED
    return config


def redact_override(override: str, secrets: set[str] | None = None) -> str:
    """`key=<redacted>` for an override that carries a credential (by its key or its value), else the override."""
    secrets = secret_strings() if secrets is None else secrets
    key, sep, value = override.partition("=")
    if sep and (is_secret_name(key) or any(s in value for s in secrets)):
        return f"{key}={REDACTED}"
    return override


_redact_override = redact_override


def _clean_hydra_node(node: dict, secrets: set[str]) -> None:
    """The command line as Hydra keeps it (override lists, override_dirname), credentials replaced."""
    overrides = node.get("overrides") if isinstance(node.get("overrides"), dict) else {}
    job = node.get("job") if isinstance(node.get("job"), dict) else {}
    dirname = job.get("override_dirname")
    kv_sep = ((job.get("config") or {}).get("override_dirname") or {}).get("kv_sep", "=")
    for group in ("task", "hydra"):
        lines = overrides.get(group)
        if not isinstance(lines, list):
            continue
        clean = [redact_override(str(o), secrets) for o in lines]
        if isinstance(dirname, str):  # override_dirname joins the task overrides, `=` turned into kv_sep
            for old, new in zip(lines, clean, strict=True):
                if old != new:
                    dirname = dirname.replace(str(old).replace("=", kv_sep), new.replace("=", kv_sep))
        overrides[group] = clean
    if isinstance(dirname, str):
        job["override_dirname"] = dirname


def clean_config_file(path: Path) -> bool:
    """Rewrite a config Hydra saved (.hydra/*.yaml, multirun.yaml) without credentials; whether it changed."""
    import yaml

    if not path.is_file():
        return False
    text = path.read_text()
    secrets = secret_strings()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if isinstance(data, list):  # overrides.yaml
        clean: Any = [redact_override(str(o), secrets) for o in data]
    elif isinstance(data, dict):
        if isinstance(data.get("hydra"), dict):  # hydra.yaml, multirun.yaml: the command line is kept there too
            _clean_hydra_node(data["hydra"], secrets)
        clean = redact(data, secrets)
    else:
        clean = None
    # Rewritten as YAML only when a value changed; the text is scrubbed either way.
    new = scrub(text if clean is None or clean == data else yaml.safe_dump(clean, sort_keys=False))
    if new == text:
        return False
    path.write_text(new)
    return True


def redact_saved_configs(hydra_dir: Path) -> None:
    """Rewrite Hydra's saved config.yaml / overrides.yaml / hydra.yaml in `hydra_dir` without credentials."""
    for name in HYDRA_FILES:
        clean_config_file(Path(hydra_dir) / name)


def clean_text_file(path: Path) -> None:
    """Scrub a text file (a sweep's summary, a log) in place; files that are not UTF-8 text are left alone."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return
    clean = scrub(text)
    if clean != text:
        path.write_text(clean)


def command_line_has_secret(argv: list[str]) -> bool:
    """Whether an override on the command line carries a credential (W&B would record the command line)."""
    secrets = secret_strings()
    return any(redact_override(a, secrets) != a for a in argv)


# -- log records ----------------------------------------------------------------------------------


def _scrub_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed message is logging's to report, at emit time
        return
    clean = scrub(message)
    if clean != message:
        record.msg, record.args = clean, ()
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        trace = logging.Formatter().formatException(record.exc_info)
        if scrub(trace) != trace:  # formatters use exc_text as it is
            record.exc_text = scrub(trace)
    if record.stack_info:
        record.stack_info = scrub(record.stack_info)


def install_log_scrubber() -> None:
    """From now on every log record of this process (files, console) has its credentials replaced,
    and so has the trace of an exception that ends the process."""
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "scrubs_credentials", False):

        def scrubbing_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = factory(*args, **kwargs)
            _scrub_record(record)
            return record

        scrubbing_factory.scrubs_credentials = True  # type: ignore[attr-defined]
        logging.setLogRecordFactory(scrubbing_factory)

    hook = sys.excepthook
    if not getattr(hook, "scrubs_credentials", False):

        def scrubbing_hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
            import traceback

            try:
                sys.stderr.write(scrub("".join(traceback.format_exception(kind, value, tb))))
            except Exception:  # noqa: BLE001 - never lose the trace
                hook(kind, value, tb)

        scrubbing_hook.scrubs_credentials = True  # type: ignore[attr-defined]
        sys.excepthook = scrubbing_hook


# -- the files Hydra writes -----------------------------------------------------------------------


def _select(node: Any, key: str) -> Any:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.select(node, key, default=None, throw_on_missing=False)
    except Exception:  # noqa: BLE001 - an interpolation that cannot be resolved yet
        return None


def _clean_at_exit() -> None:
    for path in sorted(_watched):
        try:
            clean_config_file(path)
        except Exception:  # noqa: BLE001 - the process is ending: clean what can be cleaned
            pass


def watch(paths: Iterable[Path]) -> None:
    """Clean these config files now and once more when the process exits (a crash included)."""
    if not _watched:
        atexit.register(_clean_at_exit)
    for path in paths:
        path = Path(path).absolute()  # the job may change the working directory
        _watched.add(path)
        clean_config_file(path)


def _job_files(hydra: Any, output_dir: Any) -> list[Path]:
    subdir = _select(hydra, "output_subdir")
    if not output_dir or subdir is None:
        return []
    return [Path(str(output_dir)) / str(subdir) / name for name in HYDRA_FILES]


def _sweep_files(hydra: Any) -> list[Path]:
    mode = _select(hydra, "mode")
    if getattr(mode, "name", mode) != "MULTIRUN":
        return []
    sweep_dir = _select(hydra, "sweep.dir")
    return [Path(str(sweep_dir)) / "multirun.yaml"] if sweep_dir else []


def clean_hydra_files(hydra: Any) -> None:
    """Credentials out of what Hydra wrote for this job (`.hydra/`) and its sweep (`multirun.yaml`).

    `hydra` is the `hydra` node of a job's config (a callback's `config.hydra`, or `HydraConfig.get()`).
    """
    remember([*(_select(hydra, "overrides.task") or []), *(_select(hydra, "overrides.hydra") or [])])
    watch([*_job_files(hydra, _select(hydra, "runtime.output_dir")), *_sweep_files(hydra)])


def guard_job() -> None:
    """What a job does first: scrub log records, clean Hydra's files of this job (if Hydra started it)."""
    install_log_scrubber()
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra = HydraConfig.get()
    except (ImportError, ValueError):  # not started by Hydra
        return
    clean_hydra_files(hydra)


class CredentialGuard(Callback):
    """Hydra callback: credentials out of Hydra's files and log lines from the start of a run or sweep.

    Hydra saves `.hydra/*.yaml` just before `on_job_start` and a sweep's `multirun.yaml` just after
    `on_multirun_start`, so both are cleaned when each job starts and ends, when the sweep ends and
    when the process exits. The overrides of a failed job are redacted before Hydra prints them.
    Register it before other callbacks: Hydra calls the `*_end` hooks in reverse order.
    """

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        install_log_scrubber()
        hydra = config.hydra
        remember(_select(hydra, "overrides.task") or [])
        watch(_job_files(hydra, _select(hydra, "run.dir")))  # in case the job fails before it starts

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        install_log_scrubber()
        remember(_select(config.hydra, "overrides.task") or [])
        watch(_sweep_files(config.hydra))

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        install_log_scrubber()
        clean_hydra_files(config.hydra)

    def on_job_end(self, config: Any, job_return: Any = None, **kwargs: Any) -> None:
        clean_hydra_files(config.hydra)
        if job_return is not None and job_return.overrides:  # printed by Hydra when the job failed
            job_return.overrides = [redact_override(str(o)) for o in job_return.overrides]

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        _clean_at_exit()
        sweep_dir = _select(config.hydra, "sweep.dir")
        if sweep_dir and Path(str(sweep_dir)).is_dir():
            clean_sweep_folder(Path(str(sweep_dir)))


def clean_sweep_folder(sweep_dir: Path) -> None:
    """After the last job of a sweep: its top-level files scrubbed, and submitit's exchange files too.

    The submitit launchers hand each job its config (credentials included) and get its result back
    through pickles in `.submitit/`; once the sweep is over they serve nothing, so those that hold a
    credential are removed (the jobs' .out/.err logs stay, scrubbed).
    """
    for path in sweep_dir.iterdir():
        if path.is_file() and path.suffix in (".yaml", ".md", ".csv", ".txt", ".log", ".json"):
            clean_text_file(path)
    exchange = sweep_dir / ".submitit"
    if not exchange.is_dir():
        return
    needles = [s.encode() for s in secret_strings()]
    for path in exchange.rglob("*"):
        if not path.is_file():
            continue
        if path.suffix == ".pkl":
            if any(n in path.read_bytes() for n in needles):
                path.unlink()
        elif path.suffix in (".out", ".err", ".log"):
            clean_text_file(path)
