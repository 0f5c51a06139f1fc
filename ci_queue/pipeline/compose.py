"""From pipeline files to one configuration mapping: ``include``, ``extends``, ``!reference``.

GitLab builds a pipeline's configuration in this order (``Gitlab::Ci::Config#build_config``),
and so do we, because the order decides what a key means:

1. load the YAML of the main file, and interpolate its ``spec: inputs`` (``inputs``);
2. its includes, recursively, each loaded and interpolated with the ``inputs:`` of its entry:
   ``local`` files of the repository, ``project`` files of other repositories and ``remote``
   URLs (read through ``sources``; a ``local`` include in a project's file is a file of that
   project, as in GitLab); all included files deep-merged in order, then the including file
   deep-merged on top (so the including file wins);
3. ``extends`` of every job, multi-level: parents deep-merged in order, the job on top
   (hashes merge, everything else - lists included - is replaced);
4. ``!reference [job, key, ...]`` tags replaced by the value they point at, after ``extends``.

Marks (file, line, column) travel with every key so later errors still point at the source.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ci_queue.pipeline.errors import Diagnostic, Mark, PipelineError
from ci_queue.pipeline.inputs import InputValues, Interpolation
from ci_queue.pipeline.loader import (
    DEFAULT_MAX_BYTES,
    Reference,
    YList,
    YMap,
    item_mark,
    key_mark,
    load_document,
    node_mark,
    read_file,
    value_mark,
)
from ci_queue.pipeline.schema import GLOBAL_KEYS, INCLUDE_KEYS, did_you_mean
from ci_queue.pipeline.sources import IncludeSourceError, IncludeSources

MAX_INCLUDES = 150  # GitLab's limit of included files per pipeline
MAX_EXTENDS_DEPTH = 11  # GitLab's limit of `extends` nesting
MAX_REFERENCE_DEPTH = 10  # GitLab's limit of nested `!reference`
# Nodes `!reference` may copy in all. Like aliases, references to lists of references multiply:
# a few hundred bytes could otherwise expand without end. Real files copy a few thousand nodes
# (at most about 5,500 in the GitLab corpus of tests/pipeline).
MAX_REFERENCE_NODES = 200_000

# Decides whether an `include:` entry with `rules:` applies: gets the rules and their mark.
IncludeFilter = Callable[[Any, Mark | None], bool]


def new_map(mark: Mark | None = None) -> YMap:
    """An empty mapping carrying ``mark``."""
    result = YMap()
    result.mark = mark
    result.key_marks = {}
    result.value_marks = {}
    return result


def set_item(target: YMap, key: Any, value: Any, source: Any) -> None:
    """``target[key] = value``, taking the key's marks from the mapping it came from."""
    target[key] = value
    if isinstance(source, YMap):
        if key in source.key_marks:
            target.key_marks[key] = source.key_marks[key]
        if key in source.value_marks:
            target.value_marks[key] = source.value_marks[key]


def deep_merge(base: Any, override: Any) -> Any:
    """GitLab's ``deep_merge``: mappings merge key by key, any other value replaces.

    Neither argument is modified; unchanged sub-trees are shared, not copied, which is safe
    because later stages never mutate the configuration in place.
    """
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return override
    merged = new_map(node_mark(override) or node_mark(base))
    for key, value in base.items():
        set_item(merged, key, value, base)
    for key, value in override.items():
        if key in merged and isinstance(merged[key], dict) and isinstance(value, dict):
            merged[key] = deep_merge(merged[key], value)
            set_item(merged, key, merged[key], override)
        else:
            set_item(merged, key, value, override)
    return merged


@dataclass(frozen=True)
class _File:
    """A file of the pipeline: ``name`` is how marks and include loops name it; ``project`` the
    repository its ``local:`` includes are relative to (None: the one being planned)."""

    name: str
    path: str | None = None  # inside its repository (None for a remote file)
    project: str | None = None
    ref: str | None = None
    url: str | None = None
    disk: Path | None = None  # a file of the repository being planned, on disk


class Composer:
    """Builds the configuration of one pipeline from its main file, the repository tree, and the
    ``sources`` of includes from elsewhere (other projects, URLs)."""

    def __init__(self, repo_dir: str | os.PathLike | None, include_filter: IncludeFilter | None = None,
                 max_bytes: int | None = None, sources: IncludeSources | None = None,
                 variables: Mapping[str, str] | None = None) -> None:
        self.repo_dir = Path(repo_dir).resolve() if repo_dir is not None else None
        self.include_filter = include_filter
        self.max_bytes = max_bytes or DEFAULT_MAX_BYTES
        self.sources = sources or IncludeSources()
        self.variables = variables or {}  # what `expand_vars` of an input may expand
        self.warnings: list[Diagnostic] = []
        self.errors: list[Diagnostic] = []
        self.included: list[tuple[str, str]] = []  # (file name, its inputs): each loaded once
        self.reference_nodes = 0
        self.reference_mark: Mark | None = None  # the !reference being expanded, for messages

    # -- step 1 and 2: files and includes ------------------------------------------------------
    def compose_file(self, path: str | os.PathLike, display_name: str | None = None,
                     inputs: InputValues | None = None) -> YMap:
        """Load ``path`` (interpolated with ``inputs``) with its includes and resolve ``extends``
        and ``!reference``."""
        path = Path(path)
        display_name = display_name or str(path)
        main = _File(self._include_name(path, display_name), disk=path)
        config = self._load_with_includes(main, (main.name,), inputs, display_name)
        self._raise_errors()
        config = self._resolve_extends(config)
        self._raise_errors()
        config = self._resolve_references(config)
        self._raise_errors()
        return config

    def _raise_errors(self) -> None:
        if self.errors:
            raise PipelineError(self.errors)

    def _read(self, file: _File, name: str) -> bytes:
        """The bytes of ``file`` (``name`` in messages); raises PipelineError or IncludeSourceError."""
        if file.disk is not None:
            return read_file(file.disk, name, self.max_bytes)
        if file.url is not None:
            if self.sources.remote is None:
                raise IncludeSourceError("include `remote:` is not available here",
                                         "copy the file into the repository and include it with `local:`")
            return self.sources.remote(file.url)
        if self.sources.project is None:
            raise IncludeSourceError(f"cannot include {file.path!r} of project {file.project!r}: no other "
                                     "repository can be read here",
                                     "offline (`plan`, `validate`), give `--project-dir NAME=PATH`")
        return self.sources.project(file.project or "", file.ref, file.path or "")

    def _load(self, file: _File, inputs: InputValues | None, display_name: str | None = None) -> YMap | None:
        """One file, interpolated with its inputs; None (with errors noted) when it cannot be used."""
        name = display_name or file.name
        header, data, warnings = load_document(self._read(file, name), name, max_bytes=self.max_bytes)
        self.warnings.extend(warnings)
        interpolation = Interpolation(Mark(name, 1, 1), self.variables)
        data = interpolation.apply(header, data, inputs)
        if interpolation.errors:
            self.errors.extend(interpolation.errors)
            return None
        if data is None:
            return new_map(Mark(name, 1, 1))
        if not isinstance(data, dict):
            raise PipelineError([Diagnostic(node_mark(data) or Mark(name, 1, 1),
                                            "a pipeline file must be a mapping of keywords and jobs")])
        return data

    def _include_name(self, path: Path, display_name: str) -> str:
        """How ``include: local`` names the file (repository-relative), so that a file including
        the main file is seen as the loop it is."""
        resolved = path.resolve()
        if self.repo_dir is not None and resolved.is_relative_to(self.repo_dir):
            return str(resolved.relative_to(self.repo_dir))
        return display_name

    def _load_with_includes(self, file: _File, chain: tuple[str, ...], inputs: InputValues | None,
                            display_name: str | None = None) -> YMap:
        """``chain``: the names of the files being loaded, this one last."""
        config = self._load(file, inputs, display_name)
        if config is None:
            return new_map(None)
        if "include" not in config:
            return config
        merged: Any = new_map(node_mark(config))
        for included, included_inputs, mark in self._includes(config, file):
            if included.name in chain:
                self.errors.append(Diagnostic(mark, f"include loop: {' -> '.join((*chain, included.name))}"))
                continue
            key = (included.name, included_inputs.key())
            if key in self.included:
                continue  # GitLab ignores a file included twice (with the same inputs)
            self.included.append(key)
            if len(self.included) > MAX_INCLUDES:
                raise PipelineError([*self.errors, Diagnostic(
                    mark, f"more than {MAX_INCLUDES} included files (GitLab's limit)")])
            try:
                loaded = self._load_with_includes(included, (*chain, included.name), included_inputs)
            except IncludeSourceError as exc:
                self.errors.append(Diagnostic(mark, exc.message, exc.hint))
                continue
            merged = deep_merge(merged, loaded)
        body = new_map(node_mark(config))
        for key, value in config.items():
            if key != "include":
                set_item(body, key, value, config)
        return deep_merge(merged, body)

    def _includes(self, config: YMap, current: _File) -> list[tuple[_File, InputValues, Mark | None]]:
        """The files an ``include:`` names, in order (wildcards expanded, sorted), each with its
        inputs and the mark of its entry."""
        spec = config["include"]
        mark = value_mark(config, "include")
        entries: list[tuple[Any, Mark | None]]
        if isinstance(spec, list):
            entries = [(entry, item_mark(spec, i) or mark) for i, entry in enumerate(spec)]
        else:
            entries = [(spec, mark)]
        files: list[tuple[_File, InputValues, Mark | None]] = []
        for entry, entry_mark in entries:
            if not self._applies(entry, entry_mark):
                continue
            inputs = self._inputs_of(entry, entry_mark)
            files.extend((file, inputs, entry_mark) for file in self._files_of(entry, entry_mark, current))
        return files

    def _applies(self, entry: Any, mark: Mark | None) -> bool:
        """Whether an entry is well-formed and its ``rules:`` (if any) take it for this event."""
        if isinstance(entry, str):
            return True
        if not isinstance(entry, dict):
            self.errors.append(Diagnostic(mark, "include entry must be a path or a mapping "
                                                "(`local:`, `project:`, `remote:`)"))
            return False
        for key in entry:
            if key not in INCLUDE_KEYS:
                self.errors.append(Diagnostic(key_mark(entry, key), f"unknown include key `{key}`",
                                              did_you_mean(key, INCLUDE_KEYS)))
                return False
        if "rules" in entry and self.include_filter is not None:
            try:
                return self.include_filter(entry["rules"], value_mark(entry, "rules"))
            except PipelineError as exc:  # invalid rules: reported with the other errors
                self.errors.extend(exc.errors)
                return False
        return True

    def _inputs_of(self, entry: Any, entry_mark: Mark | None) -> InputValues:
        """The ``inputs:`` of an include entry, with their marks (none: at the entry)."""
        if not isinstance(entry, dict) or "inputs" not in entry:
            return InputValues({}, entry_mark)
        given = entry["inputs"]
        mark = value_mark(entry, "inputs")
        if not isinstance(given, dict):
            self.errors.append(Diagnostic(mark, "include `inputs:` must be a mapping of input names to values"))
            return InputValues({}, mark)
        return InputValues({str(k): v for k, v in given.items()}, mark,
                           {str(k): value_mark(given, k) or mark for k in given})

    def _files_of(self, entry: Any, mark: Mark | None, current: _File) -> list[_File]:
        """The files of one (applying) include entry; [] with an error when it names none."""
        if isinstance(entry, str):
            if entry.startswith(("http://", "https://")):
                return [_File(entry, url=entry)]
            return self._local(entry, mark, current)
        if "local" in entry:
            local = entry["local"]
            if not isinstance(local, str) or not local:
                self.errors.append(Diagnostic(value_mark(entry, "local"), "include `local:` must be a path"))
                return []
            return self._local(local, mark, current)
        if "project" in entry:
            return self._project(entry, mark)
        if "remote" in entry:
            url = entry["remote"]
            if not isinstance(url, str) or not url.startswith(("https://", "http://")):
                self.errors.append(Diagnostic(value_mark(entry, "remote"), "include `remote:` must be an https URL"))
                return []
            return [_File(url, url=url)]
        if "file" in entry:
            self.errors.append(Diagnostic(key_mark(entry, "file"), "include `file:` needs `project:`",
                                          "write `project: group/name` with `file:` (and `ref:`)"))
            return []
        kind = next((k for k in ("template", "component") if k in entry), None)
        if kind is None:
            self.errors.append(Diagnostic(mark, "include entry needs `local:`, `project:` or `remote:`"))
            return []
        self.errors.append(Diagnostic(key_mark(entry, kind), f"include `{kind}` is not supported here",
                                      f"put the {kind}'s file in a registered repository and include it with "
                                      "`project:` (`file:`, `ref:`), or copy it into this one and use `local:`"))
        return []

    def _project(self, entry: Any, mark: Mark | None) -> list[_File]:
        """``project: group/name``, ``file:`` (one or a list), ``ref:`` (default: its default branch)."""
        project, ref, paths = entry["project"], entry.get("ref"), entry.get("file")
        if not isinstance(project, str) or not project.strip("/"):
            self.errors.append(Diagnostic(value_mark(entry, "project"), "include `project:` must be a project path"))
            return []
        if ref is not None and (not isinstance(ref, str | int | float) or isinstance(ref, bool) or ref == ""):
            self.errors.append(Diagnostic(value_mark(entry, "ref"), "include `ref:` must be a branch, tag or commit"))
            return []
        if isinstance(paths, str):
            paths = [paths]
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
            self.errors.append(Diagnostic(value_mark(entry, "file") if "file" in entry else key_mark(entry, "project"),
                                          "include `project:` needs `file:`, a path or a list of paths"))
            return []
        project = project.strip("/")
        files = []
        for path in paths:
            if self._path_error(path, value_mark(entry, "file") or mark, f"project {project!r}"):
                continue
            files.append(self._project_file(project, None if ref is None else str(ref), path.lstrip("/")))
        return files

    @staticmethod
    def _project_file(project: str, ref: str | None, path: str) -> _File:
        return _File(f"{project}{'@' + ref if ref else ''}:{path}", path=path, project=project, ref=ref)

    def _path_error(self, path: str, mark: Mark | None, where: str) -> bool:
        """Whether ``path`` cannot be an included file (noted as an error)."""
        if not path.endswith((".yml", ".yaml")):
            self.errors.append(Diagnostic(mark, f"included file {path!r} must be a .yml or .yaml file"))
            return True
        if any(part == ".." for part in Path(path.lstrip("/")).parts):
            self.errors.append(Diagnostic(mark, f"included file {path!r} must stay inside {where}"))
            return True
        return False

    def _local(self, local: str, mark: Mark | None, current: _File) -> list[_File]:
        """A ``local:`` path: in the repository being planned, or in the project ``current`` came from."""
        if current.project is not None:
            if "*" in local:
                self.errors.append(Diagnostic(mark, f"wildcard local include {local!r} in a file of project "
                                                    f"{current.project!r} is not supported",
                                              "name the files one by one"))
                return []
            if self._path_error(local, mark, f"project {current.project!r}"):
                return []
            return [self._project_file(current.project, current.ref, local.lstrip("/"))]
        return [_File(name, path=name, disk=path) for path, name in self._expand_local(local, mark)]

    def _expand_local(self, local: str, mark: Mark | None) -> list[tuple[Path, str]]:
        """Resolve a ``local:`` path (maybe with ``*`` / ``**``) inside the repository."""
        if self.repo_dir is None:
            self.errors.append(Diagnostic(mark, f"cannot include {local!r}: no repository directory is known"))
            return []
        relative = local.lstrip("/")
        if self._path_error(local, mark, "the repository"):
            return []
        if "*" in relative:
            pattern = str(self.repo_dir / relative.replace("**", "**/*"))
            found = sorted(glob.glob(pattern, recursive=True))
            candidates = [Path(p) for p in found if Path(p).is_file()]
        else:
            candidates = [self.repo_dir / relative]
        results = []
        for candidate in candidates:
            resolved = candidate.resolve()
            if not resolved.is_relative_to(self.repo_dir):
                self.errors.append(Diagnostic(mark, f"included file {local!r} must stay inside the repository"))
                continue
            if not resolved.is_file():
                self.errors.append(Diagnostic(mark, f"local file {local!r} does not exist"))
                continue
            results.append((resolved, str(resolved.relative_to(self.repo_dir))))
        return results

    # -- step 3: extends -----------------------------------------------------------------------
    def _resolve_extends(self, config: YMap) -> YMap:
        resolved: dict[str, Any] = {}
        result = new_map(node_mark(config))
        for key, value in config.items():
            if key not in GLOBAL_KEYS and isinstance(value, dict) and "extends" in value:
                value = self._extended(config, key, resolved, ())
            set_item(result, key, value, config)
        return result

    def _extended(self, config: YMap, name: str, resolved: dict[str, Any], chain: tuple[str, ...]) -> Any:
        """The job ``name`` with its ``extends`` parents merged under it (memoized)."""
        if name in resolved:
            return resolved[name]
        job = config[name]
        if not isinstance(job, dict) or "extends" not in job:
            return job
        mark = value_mark(job, "extends")
        if len(chain) >= MAX_EXTENDS_DEPTH:
            self.errors.append(Diagnostic(mark, f"`extends` nested too deeply ({' -> '.join(chain)}); "
                                                f"the limit is {MAX_EXTENDS_DEPTH} levels"))
            return job
        parents = job["extends"]
        if isinstance(parents, str):
            parents = [parents]
        if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
            self.errors.append(Diagnostic(mark, "`extends` must be a job name or a list of job names"))
            return job
        merged: Any = new_map(node_mark(job))
        for parent in parents:
            if parent in chain or parent == name:
                self.errors.append(Diagnostic(mark, f"circular `extends`: {' -> '.join((*chain, name, parent))}"))
                continue
            if parent not in config or parent in GLOBAL_KEYS:
                hint = did_you_mean(parent, [k for k in config if isinstance(k, str) and k not in GLOBAL_KEYS])
                self.errors.append(Diagnostic(mark, f"job `{name}` extends `{parent}`, which is not defined", hint))
                continue
            base = self._extended(config, parent, resolved, (*chain, name))
            if not isinstance(base, dict):
                self.errors.append(Diagnostic(mark, f"`{parent}` is not a mapping and cannot be extended"))
                continue
            merged = deep_merge(merged, base)
        own = new_map(node_mark(job))
        for key, value in job.items():
            if key != "extends":
                set_item(own, key, value, job)
        result = deep_merge(merged, own)
        result.pop("extends", None)
        resolved[name] = result
        return result

    # -- step 4: !reference --------------------------------------------------------------------
    def _resolve_references(self, config: YMap) -> YMap:
        return self._walk(config, config, depth=0)

    def _walk(self, node: Any, config: YMap, depth: int) -> Any:
        """A copy of ``node`` with every ``!reference`` replaced; ``depth``: references followed."""
        if isinstance(node, Reference):
            self.reference_mark = node.mark
            return self._walk(self._deref(node, config, depth), config, depth + 1)
        if depth:
            self.reference_nodes += 1
            if self.reference_nodes > MAX_REFERENCE_NODES:
                raise PipelineError([*self.errors, Diagnostic(
                    self.reference_mark, f"!reference expands to more than {MAX_REFERENCE_NODES} nodes",
                    "every !reference counts as a full copy of what it points at")])
        if isinstance(node, dict):
            result = new_map(node_mark(node))
            for key, value in node.items():
                set_item(result, key, self._walk(value, config, depth), node)
            return result
        if isinstance(node, list):
            result_list = YList(self._walk(item, config, depth) for item in node)
            result_list.mark = node_mark(node)
            result_list.item_marks = list(getattr(node, "item_marks", []))
            return result_list
        return node

    def _deref(self, ref: Reference, config: YMap, depth: int) -> Any:
        """What ``ref`` points at; None, with an error, when it points nowhere (so that every
        bad reference of a file is reported, not just the first)."""
        if depth >= MAX_REFERENCE_DEPTH:
            loop = Diagnostic(ref.mark, f"!reference nested more than {MAX_REFERENCE_DEPTH} levels deep "
                                        "(or a reference loop)")
            if loop not in self.errors:  # a loop is met again from every place that refers into it
                self.errors.append(loop)
            return None
        node: Any = config
        for i, part in enumerate(ref.path):
            if not isinstance(node, dict) or part not in node:
                where = " > ".join(ref.path[: i + 1])
                hint = did_you_mean(part, [str(k) for k in node]) if isinstance(node, dict) else None
                self.errors.append(Diagnostic(ref.mark, f"!reference [{', '.join(ref.path)}]: `{where}` not found",
                                              hint))
                return None
            node = node[part]
        return node
