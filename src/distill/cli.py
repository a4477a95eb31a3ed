"""What the Hydra entry points share: where the configs live and how user errors end a run.

Only light imports here: `--help` and `--cfg job` must answer before torch is loaded.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
# A source checkout keeps `configs/` at the top; an installed wheel carries a copy inside the package.
CONFIG_DIR = str(
    _HERE.parents[1] / "configs" if (_HERE.parents[1] / "configs" / "train.yaml").is_file() else _HERE / "configs"
)
# Your project's config folder, relative to the directory a command starts in: laid out like CONFIG_DIR
# (data/, teacher/, student/, distill/, compress/ ...), its files are options of the same groups.
PROJECT_CONFIG_DIR = "configs"


def extra_config_dirs(cwd: str | None = None) -> list[tuple[str, str]]:
    """(provider, path) of the folders Hydra searches after CONFIG_DIR (hydra_plugins.distill_searchpath).

    `./configs` of `cwd` (the working directory) unless it is CONFIG_DIR itself (a source checkout
    started from its top), then `configs/local/` of CONFIG_DIR; each only when it exists.
    """
    main = os.path.realpath(CONFIG_DIR)
    project = os.path.realpath(os.path.join(cwd or os.getcwd(), PROJECT_CONFIG_DIR))
    local = os.path.join(main, "local")
    found = [("distill-project", project)] if os.path.isdir(project) and project != main else []
    found += [("distill-local", local)] if os.path.isdir(local) else []
    return [(provider, f"file://{path}") for provider, path in found]


def is_distill_search_path(search_path: Any) -> bool:
    """Whether a Hydra search path has distill's configs as its primary ones (and not another application's)."""
    main = os.path.realpath(CONFIG_DIR)
    for entry in search_path.get_path():
        path = entry.path or ""
        if path.startswith("file://"):
            path = path[len("file://") :]
        if path == "pkg://distill.configs" or ("://" not in path and os.path.realpath(path) == main):
            return True
    return False


def make_cwd_importable() -> None:
    """Put the working directory first on `sys.path`, as `python -m` does.

    A `_target_` may then name a module of the folder the command starts in (`my_project.nets.ResMLP`
    for ./my_project/nets.py) without setting PYTHONPATH.
    """
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def import_hint(target: str) -> str:
    """A hint for a `_target_` whose module cannot be imported; "" when its top-level package is importable.

    The commands import modules of the folder they start in (`make_cwd_importable`): the usual
    cause is a command started elsewhere than the folder that holds the user's package.
    """
    import importlib.util

    module = target.rpartition(".")[0] or target
    top = module.split(".")[0]
    try:
        if importlib.util.find_spec(top) is not None:
            return ""
    except (ImportError, ValueError):
        pass
    return (
        f"no module '{top}' here: the command imports modules from the folder it starts in ({os.getcwd()}); "
        f"start it in the folder that holds {top}/ or {top}.py, or add that folder to PYTHONPATH"
    )


def job_id() -> str:
    """What tells this job apart from others started in the same second: its SLURM job (and array task) id, else its pid."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID") or str(os.getpid())


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("job_id", job_id, use_cache=True, replace=True)
    # cached: Hydra reads the help template twice (`_fast_help`), the groups are listed once
    OmegaConf.register_new_resolver("distill_help_groups", lambda: help_groups(), use_cache=True, replace=True)


register_resolvers()  # at import: a SLURM job imports this module before Hydra resolves its run folder


# Hydra's command-line flags that take a value (`--info` takes one of its choices, or none).
_VALUE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--cfg", "-c", "--package", "-p"}
_VALUE_FLAGS |= {"--experimental-rerun"}
_INFO_FLAGS, _INFO_CHOICES = {"--info", "-i"}, {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def split_hydra_args(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Hydra's flags with a value ({"-cd": "conf"}, long names shortened as `-cd`, `-cn`, `-cp`) and the overrides."""
    short = {"--config-path": "-cp", "--config-name": "-cn", "--config-dir": "-cd", "--cfg": "-c", "--package": "-p"}
    flags: dict[str, str] = {}
    overrides: list[str] = []
    after_info = False
    args = iter(argv)
    for arg in args:
        name, sep, value = arg.partition("=")
        if arg.startswith("-") and name in _VALUE_FLAGS:
            flags[short.get(name, name)] = value if sep else next(args, "")
        elif not arg.startswith("-") and not (after_info and arg in _INFO_CHOICES):
            overrides.append(arg)
        after_info = arg in _INFO_FLAGS
    return flags, overrides


def config_repository(argv: list[str], config_dir: str = CONFIG_DIR, config_name: str | None = None) -> Any:
    """The config repository Hydra composes from for `argv`, or a one-line complaint (str).

    Hydra's own search path: `config_dir`, the SearchPathPlugins' folders (./configs, configs/local),
    `--config-dir`, and `hydra.searchpath` from the command line or the primary config (`-cn`, else
    `config_name`). None when `--config-path` replaces the primary folder: Hydra checks that itself.
    """
    import warnings

    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    flags, overrides = split_hydra_args(argv)
    if "-cp" in flags:
        return None
    search_path = create_config_search_path(f"file://{config_dir}")
    if "-cd" in flags:
        extra = os.path.abspath(os.path.expanduser(flags["-cd"]))
        if not os.path.isdir(extra):
            return f"config directory not found: {extra} (--config-dir)"
        search_path.prepend(provider="command-line", path=f"file://{extra}", anchor=SearchPathQuery(provider="schema"))
    parser = OverridesParser.create()
    searchpath = []
    for arg in overrides:
        try:
            if parser.parse_override(arg).get_key_element() == "hydra.searchpath":
                searchpath.append(arg)
        except HydraException:
            continue  # Hydra refuses it later, in its own words
    loader = ConfigLoaderImpl(config_search_path=search_path)
    try:
        with warnings.catch_warnings():  # Hydra warns about a missing hydra.searchpath folder itself
            warnings.simplefilter("ignore")
            # Hydra's own step that reads hydra.searchpath (command line, else the primary config)
            _, repo = loader._parse_overrides_and_create_caching_repo(flags.get("-cn", config_name), searchpath)
    except HydraException:
        return None  # a malformed hydra.searchpath or primary config: Hydra says what is wrong
    return repo


def searched_folders(repo: Any) -> list[str]:
    """The entries of a repository's search path that can hold the application's options, as the user wrote them.

    Hydra's own packages (hydra.conf, the plugins' hydra/ groups) and its structured configs are left out.
    """
    shown = []
    for source in repo.get_sources():
        scheme = source.scheme()
        if source.provider in ("hydra", "schema") or (scheme == "pkg" and source.path.startswith("hydra_plugins.")):
            continue
        where = source.path if scheme == "file" else f"{scheme}://{source.path}"
        shown.append(where if source.available() else f"{where} (not found)")
    return shown


def _choices(override: Any) -> list[str]:
    """The option names an override selects: one, a list (`[a,b]`), a sweep (`a,b`, `[a],[b]`); not globs or ranges."""
    from hydra.core.override_parser.types import ChoiceSweep

    value = override.value()
    items = list(value.list) if isinstance(value, ChoiceSweep) else [value]
    names: list[str] = []
    for item in items:
        names += [x for x in (item if isinstance(item, list) else [item]) if isinstance(x, str)]
    return names


def check_group_choices(argv: list[str], config_dir: str = CONFIG_DIR, config_name: str | None = None) -> str | None:
    """A one-line complaint about the first `group=option` naming no config of a config group, or None.

    The options are those of every folder and package on Hydra's search path (`config_repository`:
    ./configs, configs/local, --config-dir, hydra.searchpath ...), and the complaint names them.
    Hydra reports the same, but over a dozen lines; this also covers multi-select (`teacher=[a,b]`)
    and sweep (`student=a,b`) values.
    """
    from hydra.core.object_type import ObjectType
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    picks = []
    for arg in split_hydra_args(argv)[1]:
        try:
            override = parser.parse_override(arg)
        except HydraException:
            continue  # Hydra refuses it later, in its own words
        group = override.key_or_group
        if override.is_delete() or "." in group or group == "hydra" or group.startswith("hydra/"):
            continue
        picks.append((group, _choices(override)))
    if not picks:
        return None
    repo = config_repository(argv, config_dir, config_name)
    if repo is None or isinstance(repo, str):
        return repo
    for group, choices in picks:
        valid = sorted(set(repo.get_group_options(group, ObjectType.CONFIG)))
        if not valid:
            continue  # not a config group: a config key
        for choice in choices:
            if choice != "null" and choice not in valid:
                return (
                    f"unknown {group} option '{choice}'; valid options: {', '.join(valid)} "
                    f"(searched {', '.join(searched_folders(repo))})"
                )
    return None


def help_groups(width: int = 100) -> str:
    """`--help`'s config groups: those the primary config's defaults list names, in its order, with their options.

    A resolver of the help template (configs/hydra/default.yaml): each entry point lists its own
    groups (`distill-train` not those of `distill-lm`), with the options of every folder of the
    run's search path (./configs, configs/local, --config-dir, hydra.searchpath), base files left
    out (`base_options`). A group with no option file (`local` without configs/local/default.yaml)
    is left out; a line longer than `width` goes on, indented, on the next ones.
    """
    import textwrap

    from hydra._internal.config_repository import ConfigRepository
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
    from hydra.core.default_element import ConfigDefault, GroupDefault
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.object_type import ObjectType

    if not HydraConfig.initialized():
        return ""
    hydra_cfg = HydraConfig.get()
    search_path = ConfigSearchPathImpl()
    for source in hydra_cfg.runtime.config_sources:
        search_path.append(source.provider, f"{source.schema}://{source.path}")
    repo = ConfigRepository(search_path)
    groups: list[str] = []

    def collect(config_name: str, seen: set[str]) -> None:
        loaded = repo.load_config(config_name) if config_name not in seen else None
        seen.add(config_name)
        for element in (loaded.defaults_list or []) if loaded is not None else []:
            if isinstance(element, GroupDefault):
                group = element.group.lstrip("/")
                if group and group != "hydra" and not group.startswith("hydra/") and group not in groups:
                    groups.append(group)
            elif isinstance(element, ConfigDefault) and element.path and element.path != "_self_":
                collect(element.path.lstrip("/"), seen)  # a primary config that extends a shipped one

    collect(hydra_cfg.job.config_name, set())
    lines = []
    for group in groups:
        options = set(repo.get_group_options(group, ObjectType.CONFIG))
        shown = sorted(options - base_options(repo, group, options))
        if shown:
            line = f"{group}: {', '.join(shown)}"
            lines += textwrap.wrap(
                line, width, subsequent_indent="    ", break_long_words=False, break_on_hyphens=False
            )
    return "\n".join(lines)


# Option names that, when other options of their group extend them, hold what those share (base files).
_BASE_NAMES = ("default", "base")


def base_options(repo: Any, group: str, options: set[str]) -> set[str]:
    """The base files among a group's options, which `--help` leaves out (they can still be chosen).

    A base file is an option named `*_base` (experiment/cifar100_base.yaml, which the cifar100_*
    experiments extend), or one named `default` or `base` that another option of the group extends
    through its defaults list (trainer/default.yaml, which cpu, gpu, ddp ... extend). An option that
    others extend under another name stays: student/mlp.yaml (mlp_small extends it) and
    logger/csv.yaml (many extends it) are options of their own.
    """
    from hydra.core.default_element import ConfigDefault

    bases = {name for name in options if name.endswith("_base")}
    candidates = (set(_BASE_NAMES) & options) - bases
    for name in sorted(options - candidates) if candidates else []:
        loaded = repo.load_config(f"{group}/{name}")
        for element in (loaded.defaults_list or []) if loaded is not None else []:
            if isinstance(element, ConfigDefault) and element.path:
                path = element.path
                extended = path[len(group) + 2 :] if path.startswith(f"/{group}/") else path
                if extended in candidates:
                    bases.add(extended)
    return bases


def _fast_help() -> None:
    """Let Hydra's `--help` skip the lists of every config group that the help template does not show.

    Hydra fills $APP_CONFIG_GROUPS and $HYDRA_CONFIG_GROUPS before it reads the template, each by
    listing every group of the search path (some 160 copies of the config repository: ~0.8 s); the
    project's template shows its own list (`help_groups`) instead. A template that names either
    field (`hydra.help.template=...`, `--hydra-help`) still gets it.
    """
    try:
        from hydra._internal.hydra import Hydra
    except ImportError:
        return
    original = getattr(Hydra, "get_help", None)
    if original is None or getattr(original, "_distill_fast", False):
        return

    def get_help(self: Any, help_cfg: Any, *args: Any, **kwargs: Any) -> str:
        if "CONFIG_GROUPS" in str(help_cfg.template):
            return original(self, help_cfg, *args, **kwargs)
        self.format_config_groups = lambda *_, **__: ""  # shadows the method for this call only
        try:
            return original(self, help_cfg, *args, **kwargs)
        finally:
            del self.format_config_groups

    get_help._distill_fast = True  # type: ignore[attr-defined]
    Hydra.get_help = get_help  # type: ignore[method-assign]


def check_strategy_overrides(argv: list[str]) -> str | None:
    """A one-line refusal of a trainer strategy that restarts the processes at every fit, however it is spelt."""
    from distill.validate import SPAWNING_STRATEGIES

    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") == "trainer.strategy":
            for choice in value.replace("[", ",").replace("]", ",").replace(" ", "").split(","):
                if any(s in choice for s in SPAWNING_STRATEGIES):
                    return (
                        f"trainer.strategy={choice} starts fresh processes for every fit, and the job fits several "
                        "models: use strategy=ddp (trainer=ddp or trainer=ddp_cpu), which starts them once"
                    )
    return None


# Errors of the environment rather than of the code: a full disk, a read-only or forbidden folder.
_IO_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EDQUOT, errno.ENOTDIR}


def _one_line(text: str) -> str:
    return "; ".join(line.strip().rstrip(".") for line in str(text).strip().splitlines() if line.strip())


def _argv_value(argv: list[str], key: str) -> str | None:
    for arg in argv:
        k, sep, value = arg.partition("=")
        if sep and k.lstrip("+~") == key:
            return value
    return None


def _closest(key: str, candidates: list[str], prefix: str = "") -> str:
    import difflib

    close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.5)
    shown = close or sorted(candidates)[:8]
    label = "closest valid keys" if close else "valid keys include"
    return f"{label}: {', '.join(prefix + k for k in shown)}" if shown else "the node has no keys"


def describe_config_error(err: BaseException, argv: list[str]) -> str:
    """One line for a Hydra composition error or an OmegaConf error: the key, the value, the closest valid keys."""
    import difflib

    from hydra.errors import OverrideParseException
    from omegaconf import DictConfig
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        InterpolationResolutionError,
        MissingMandatoryValue,
    )

    unknown_key = ConfigKeyError | ConfigAttributeError
    cause = err if isinstance(err, unknown_key | MissingMandatoryValue) else err.__cause__
    if isinstance(cause, MissingMandatoryValue):
        key = getattr(cause, "full_key", None) or "a value"
        return f"missing mandatory value {key} (the config has ???): set it on the command line, e.g. {key}=..."
    if isinstance(cause, unknown_key) and getattr(cause, "full_key", None):
        full_key, key = str(cause.full_key), str(cause.key)
        parent = cause.parent_node
        parent_path = full_key[: -len(key)] if full_key.endswith(key) else ""
        value = _argv_value(argv, full_key)
        shown = f"{full_key}={value}" if value is not None else full_key
        keys = [str(k) for k in parent.keys() if k != "_target_"] if isinstance(parent, DictConfig) else []
        close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
        if not close and isinstance(parent, DictConfig) and "_target_" in parent:
            return (
                f"unknown config key in '{shown}': {parent_path.rstrip('.') or 'the config'} has no key '{key}'; "
                f"to pass it to {parent._target_} as a new argument, add it with +{shown}"
            )
        return f"unknown config key in '{shown}'; {_closest(key, keys, parent_path)}"
    if isinstance(err, OverrideParseException):
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parser = OverridesParser.create()
        for arg in argv:
            if arg.startswith("-") and not arg.startswith("--"):
                continue
            try:
                parser.parse_overrides([arg])
            except OverrideParseException:
                return f"cannot parse the override '{arg}': {_one_line(err.message).split('; See ')[0]}"
        return f"cannot parse the overrides: {_one_line(err.message)}"
    if isinstance(err, InterpolationResolutionError) or isinstance(cause, InterpolationResolutionError):
        return f"cannot resolve the config: {_one_line(cause or err)}"
    return _one_line(err)


# Optional keys the code reads where present (`fit.get("gradient_clip_val")`): they may be added with `+`.
OPTIONAL_KEYS = (
    "gradient_clip_val", "train_fraction", "restore_best", "early_stopping", "scheduler", "batch_size", "ckpt_path",
)  # fmt: skip


def check_added_keys(cfg: Any, overrides: list[str] | None = None) -> None:
    """Refuse a `+key=value` that nothing reads: a new key outside every node that passes its keys on.

    A key added under a node with a `_target_` (`+trainer.max_time=...`, `+student.net.dropout=0.1`)
    goes to that class as an argument, which accepts or refuses it; Hydra's own settings (`hydra.*`)
    and config groups (`+experiment=...`) are Hydra's. Anywhere else (`+unknown=1`, `+student.fit.lr=1`)
    the value would be silently ignored.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import DictConfig, OmegaConf

    from distill.errors import DistillError

    if overrides is None:
        if not HydraConfig.initialized():
            return
        hydra_cfg = HydraConfig.get()
        overrides = list(hydra_cfg.overrides.task)
        groups = set(hydra_cfg.runtime.choices.keys())
        folders = [str(src.path) for src in hydra_cfg.runtime.config_sources if src.schema == "file"]
    else:
        groups, folders = set(), []
    for override in OverridesParser.create().parse_overrides(overrides):
        if not (override.is_add() or override.is_force_add()) or override.package is not None:
            continue
        key = override.key_or_group
        is_group = key in groups or any(Path(folder, key).is_dir() for folder in [CONFIG_DIR, *folders])
        if key.startswith("hydra.") or key == "hydra" or is_group:
            continue
        parent_path, _, name = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_path, throw_on_missing=False) if parent_path else cfg
        if (isinstance(parent, DictConfig) and "_target_" in parent) or (parent_path and name in OPTIONAL_KEYS):
            continue
        keys = [str(k) for k in parent.keys() if str(k) != name] if isinstance(parent, DictConfig) else []
        raise DistillError(
            f"unknown config key '{key}' ({override.input_line}): nothing reads it; "
            + _closest(name, keys, f"{parent_path}." if parent_path else "")
        )


def _primary_config_name(hydra_main: Callable[[], Any]) -> str | None:
    """The `config_name` given to `@hydra.main` (kept in the closure of the function it returns), else None."""
    import inspect

    try:
        name = inspect.getclosurevars(hydra_main).nonlocals.get("config_name")
    except TypeError:
        return None
    return name if isinstance(name, str) else None


def guarded(hydra_main: Callable[[], Any]) -> None:
    """Entry point: refuse bad overrides in one line, then let Hydra run.

    Hydra's own errors (a misspelt key, an override it cannot parse or append) and errors of the
    environment (a read-only or full disk) end the run with one `error:` line and exit status 2,
    as user errors inside the job do (`run_task`).
    """
    from hydra.errors import CompactHydraException
    from omegaconf.errors import OmegaConfBaseException

    from distill.secrets import scrub

    argv = sys.argv[1:]
    make_cwd_importable()
    if "--help" in argv or "-h" in argv:
        _fast_help()  # the project's help, without Hydra's lists of every group
    problem = check_group_choices(argv, config_name=_primary_config_name(hydra_main)) or check_strategy_overrides(argv)
    if problem:
        print(f"error: {scrub(problem)}", file=sys.stderr)
        sys.exit(2)
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"  # the user asked for Hydra's full traces
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises, and the errors below become one line
    try:
        hydra_main()
    except (CompactHydraException, OmegaConfBaseException) as err:
        if full_error:
            raise
        print(f"error: {scrub(describe_config_error(err, argv))}", file=sys.stderr, flush=True)
        sys.exit(2)
    except OSError as err:
        if full_error or err.errno not in _IO_ERRNOS:
            raise
        where = f" {err.filename}" if err.filename else ""
        print(f"error: cannot write{scrub(where)}: {err.strerror or err}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        if not full_error:
            os.environ.pop("HYDRA_FULL_ERROR", None)


def run_task(task: Callable[[Any], Any], cfg: Any) -> Any:
    """Run `task(cfg)`; a `DistillError` becomes one line on stderr and exit status 2.

    First, credentials leave Hydra's saved configs and every later log line (also where the
    config's Hydra callbacks were changed).
    """
    from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

    from distill.errors import DistillError
    from distill.secrets import guard_job, scrub

    guard_job()
    try:
        check_added_keys(cfg)
        return task(cfg)
    except DistillError as err:
        logging.getLogger("distill").debug("user error", exc_info=True)
        print(f"error: {scrub(str(err))}", file=sys.stderr, flush=True)
        sys.exit(2)
    except (MissingMandatoryValue, InterpolationResolutionError) as err:  # a ??? left unset, a ${...} that fails
        print(f"error: {scrub(describe_config_error(err, sys.argv[1:]))}", file=sys.stderr, flush=True)
        sys.exit(2)
