"""Reads the YAML files and merges them, remembering which file each value came from."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import structlog

from regagent.config.yaml_strict import KeyPath, parse_yaml
from regagent.errors import ConfigError

log = structlog.get_logger(__name__)

DEFAULT_CONFIG_PATH = "/etc/regagent/conf.d"
CONFIG_ENV = "REGAGENT_CONFIG"


# Lists under these top-level keys concatenate across files; any other list is replaced.
CONCATENATED_LISTS = ("services",)
# A configuration file is a few kilobytes; this only stops a wrong file from eating memory.
MAX_FILE_BYTES = 4 * 1024 * 1024


@dataclass
class MergedDocument:
    """The merged raw mapping plus, for each key path, the file that set it."""

    data: Dict[str, Any] = field(default_factory=dict)
    origins: Dict[KeyPath, str] = field(default_factory=dict)
    files: List[str] = field(default_factory=list)

    def origin(self, path: KeyPath) -> str:
        """The file that set `path`, or of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            found = self.origins.get(path[:end])
            if found is not None:
                return found
        return self.files[-1] if self.files else "<defaults>"


def config_files(path: str) -> List[Path]:
    """The files that make up the configuration at `path`, in merge order.

    In a directory only `*.yaml` names not starting with a dot are configuration (editor lock
    files such as `.#10-site.yaml` are dangling symlinks); each of those must be a readable
    regular file, or the configuration is incomplete and that is an error, not a skip.
    """
    target = Path(path)
    try:
        is_dir = stat.S_ISDIR(os.stat(target).st_mode)
    except FileNotFoundError:
        is_dir = False
    except OSError as exc:  # e.g. a parent directory this user may not enter
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    if is_dir:
        try:
            entries = sorted(target.iterdir())
        except OSError as exc:
            raise ConfigError([f"{path}: cannot list directory: {exc.strerror or exc}"]) from None
        files = [p for p in entries if p.name.endswith(".yaml") and not p.name.startswith(".")]
        problems = [problem for problem in map(_not_a_config_file, files) if problem]
        if problems:
            raise ConfigError(problems)
        ignored = [p.name for p in entries if p not in files]
        if ignored:
            log.debug("config_files_ignored", directory=path, names=ignored)
        misnamed = [p.name for p in entries if p.name.endswith(".yml") and p not in files]
        if misnamed:
            log.warning(
                "config_files_not_read", directory=path, names=misnamed, fix="rename to *.yaml"
            )
        if not files:
            log.warning("config_directory_empty", directory=path, using="built-in defaults")
        return files
    if target.is_symlink() or target.exists():
        problem = _not_a_config_file(target)
        if problem:
            raise ConfigError([problem])
        return [target]
    raise ConfigError([f"{path}: no such file or directory"])


def _not_a_config_file(path: Path) -> Optional[str]:
    """Why `path` cannot be read as a configuration file (symlinks followed), or None."""
    try:
        info = os.stat(path)
    except OSError as exc:
        if path.is_symlink():
            target = _link_target(path)
            if exc.errno == errno.ELOOP:
                return f"{path}: symlink loop (via {target}); fix or remove the link"
            return f"{path}: symlink to {target}, which does not exist; fix or remove the link"
        return f"{path}: cannot read: {exc.strerror or exc}"
    if stat.S_ISDIR(info.st_mode):
        return f"{path}: is a directory, not a configuration file; rename or remove it"
    if not stat.S_ISREG(info.st_mode):
        return f"{path}: is not a regular file; remove it or rename it (not *.yaml)"
    return None


def _link_target(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def resolve_config_path(cli_value: Optional[str]) -> str:
    """-c PATH, else $REGAGENT_CONFIG, else the default conf.d."""
    return cli_value or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def _read_bytes(path: Path) -> bytes:
    """The file's bytes; a FIFO or device swapped in after listing must not hang or flood."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise OSError(errno.EFBIG, f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
        chunks: List[bytes] = []
        size = 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_FILE_BYTES:
            raise OSError(errno.EFBIG, f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_yaml(path: Path) -> Any:
    try:
        raw = _read_bytes(path)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([f"{path}: line {line}: not UTF-8 text ({exc.reason})"]) from None
    return parse_yaml(text, str(path))


def _merge(
    target: Dict[str, Any], source: Dict[str, Any], path: KeyPath, src: str, doc: MergedDocument
) -> None:
    for key, value in source.items():
        here = (*path, key)
        current = target.get(key)
        if value is None and (isinstance(current, dict) or here in _list_keys()):
            # `consul:` with every line below it commented out reads as null; it must not
            # throw away what earlier files set (an empty mapping would change nothing either).
            continue
        if isinstance(current, dict) and isinstance(value, dict):
            _merge(current, value, here, src, doc)
            continue
        if isinstance(current, list) and isinstance(value, list) and here in _list_keys():
            offset = len(current)
            current.extend(value)
            for i in range(len(value)):
                doc.origins[here + (offset + i,)] = src  # noqa: RUF005 (mypy rejects *here in a subscript)
            continue
        target[key] = _copy_with_origins(value, here, src, doc)


def _list_keys() -> Tuple[KeyPath, ...]:
    return tuple((key,) for key in CONCATENATED_LISTS)


def _copy_with_origins(value: Any, path: KeyPath, src: str, doc: MergedDocument) -> Any:
    doc.origins[path] = src
    if isinstance(value, dict):
        return {k: _copy_with_origins(v, (*path, k), src, doc) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_with_origins(v, (*path, i), src, doc) for i, v in enumerate(value)]
    return value


def load_documents(path: str) -> MergedDocument:
    """Reads every file, reporting all unreadable or malformed ones together."""
    doc = MergedDocument()
    problems: List[str] = []
    for file in config_files(path):
        try:
            content = _read_yaml(file)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        doc.files.append(str(file))
        if content is None:
            continue
        if not isinstance(content, dict):
            problems.append(f"{file}: top level must be a mapping, got {_type_name(content)}")
            continue
        _merge(doc.data, content, (), str(file), doc)
    if problems:
        raise ConfigError(problems)
    log.debug("config_loaded", path=path, files=doc.files)
    return doc


def _type_name(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )
