"""From pipeline files to one configuration mapping: ``include``, ``extends``, ``!reference``.

GitLab builds a pipeline's configuration in this order (``Gitlab::Ci::Config#build_config``),
and so do we, because the order decides what a key means:

1. load the YAML of the main file;
2. ``include: local`` files, recursively; all included files deep-merged in order, then the main
   file deep-merged on top (so the including file wins);
3. ``extends`` of every job, multi-level: parents deep-merged in order, the job on top
   (hashes merge, everything else - lists included - is replaced);
4. ``!reference [job, key, ...]`` tags replaced by the value they point at, after ``extends``.

Marks (file, line, column) travel with every key so later errors still point at the source.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ci_queue.pipeline.errors import Diagnostic, Mark, PipelineError
from ci_queue.pipeline.loader import Reference, YList, YMap, load_file
from ci_queue.pipeline.schema import GLOBAL_KEYS, INCLUDE_KEYS, did_you_mean

MAX_INCLUDES = 150  # GitLab's limit of included files per pipeline
MAX_EXTENDS_DEPTH = 11  # GitLab's limit of `extends` nesting
MAX_REFERENCE_DEPTH = 10  # GitLab's limit of nested `!reference`
# Nodes `!reference` may copy in all. Like aliases, references to lists of references multiply:
# a few hundred bytes could otherwise expand without end. Real files copy a few thousand nodes
# (at most about 5,500 in the GitLab corpus of tests/pipeline).
MAX_REFERENCE_NODES = 200_000

# Decides whether an `include:` entry with `rules:` applies: gets the rules and their mark.
IncludeFilter = Callable[[Any, Mark | None], bool]


def key_mark(mapping: Any, key: Any) -> Mark | None:
    """Where ``key`` is written in ``mapping`` (or the mapping itself, or None)."""
    getter = getattr(mapping, "key_mark", None)
    return getter(key) if getter else None


def value_mark(mapping: Any, key: Any) -> Mark | None:
    """Where the value of ``key`` is written in ``mapping``."""
    getter = getattr(mapping, "value_mark", None)
    return getter(key) if getter else None


def item_mark(items: Any, index: int) -> Mark | None:
    """Where item ``index`` of a list is written."""
    getter = getattr(items, "item_mark", None)
    return getter(index) if getter else None


def node_mark(node: Any) -> Mark | None:
    """Where a mapping or list starts."""
    return getattr(node, "mark", None)


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


class Composer:
    """Builds the configuration of one pipeline from its main file and the repository tree."""

    def __init__(self, repo_dir: str | os.PathLike | None, include_filter: IncludeFilter | None = None,
                 max_bytes: int | None = None) -> None:
        self.repo_dir = Path(repo_dir).resolve() if repo_dir is not None else None
        self.include_filter = include_filter
        self.load_limits = {"max_bytes": max_bytes} if max_bytes else {}
        self.warnings: list[Diagnostic] = []
        self.errors: list[Diagnostic] = []
        self.included: list[str] = []
        self.reference_nodes = 0
        self.reference_mark: Mark | None = None  # the !reference being expanded, for messages

    # -- step 1 and 2: files and includes ------------------------------------------------------
    def compose_file(self, path: str | os.PathLike, display_name: str | None = None) -> YMap:
        """Load ``path`` with its includes and resolve ``extends`` and ``!reference``."""
        path = Path(path)
        display_name = display_name or str(path)
        config = self._load_with_includes(path, display_name, chain=(self._include_name(path, display_name),))
        self._raise_errors()
        config = self._resolve_extends(config)
        self._raise_errors()
        config = self._resolve_references(config)
        self._raise_errors()
        return config

    def _raise_errors(self) -> None:
        if self.errors:
            raise PipelineError(self.errors)

    def _load(self, path: Path, display_name: str) -> YMap:
        data, warnings = load_file(path, display_name, **self.load_limits)
        self.warnings.extend(warnings)
        if data is None:
            return new_map(Mark(display_name, 1, 1))
        if not isinstance(data, dict):
            raise PipelineError([Diagnostic(node_mark(data) or Mark(display_name, 1, 1),
                                            "a pipeline file must be a mapping of keywords and jobs")])
        return data

    def _include_name(self, path: Path, display_name: str) -> str:
        """How ``include: local`` names the file (repository-relative), so that a file including
        the main file is seen as the loop it is."""
        resolved = path.resolve()
        if self.repo_dir is not None and resolved.is_relative_to(self.repo_dir):
            return str(resolved.relative_to(self.repo_dir))
        return display_name

    def _load_with_includes(self, path: Path, display_name: str, chain: tuple[str, ...]) -> YMap:
        """``chain``: the include names of the files being loaded, this one last."""
        config = self._load(path, display_name)
        if "include" not in config:
            return config
        merged: Any = new_map(node_mark(config))
        for include_path, include_name in self._include_paths(config, display_name):
            if include_name in chain:
                self.errors.append(Diagnostic(value_mark(config, "include"),
                                              f"include loop: {' -> '.join((*chain, include_name))}"))
                continue
            if include_name in self.included:
                continue  # GitLab ignores a file included twice
            self.included.append(include_name)
            if len(self.included) > MAX_INCLUDES:
                raise PipelineError([Diagnostic(value_mark(config, "include"),
                                                f"more than {MAX_INCLUDES} included files")])
            included = self._load_with_includes(include_path, include_name, (*chain, include_name))
            merged = deep_merge(merged, included)
        body = new_map(node_mark(config))
        for key, value in config.items():
            if key != "include":
                set_item(body, key, value, config)
        return deep_merge(merged, body)

    def _include_paths(self, config: YMap, display_name: str) -> list[tuple[Path, str]]:
        """The local files an ``include:`` names, in order (wildcards expanded, sorted)."""
        spec = config["include"]
        mark = value_mark(config, "include")
        entries: list[tuple[Any, Mark | None]]
        if isinstance(spec, list):
            entries = [(entry, item_mark(spec, i) or mark) for i, entry in enumerate(spec)]
        else:
            entries = [(spec, mark)]
        paths: list[tuple[Path, str]] = []
        for entry, entry_mark in entries:
            local = self._local_of(entry, entry_mark)
            if local is None:
                continue
            paths.extend(self._expand_local(local, entry_mark, display_name))
        return paths

    def _local_of(self, entry: Any, mark: Mark | None) -> str | None:
        """The local path of one include entry, or None (with an error or when rules exclude it)."""
        if isinstance(entry, str):
            if entry.startswith(("http://", "https://")):
                self.errors.append(Diagnostic(mark, f"include of remote file {entry!r} is not supported here",
                                              "copy the file into the repository and include it with `local:`"))
                return None
            return entry
        if not isinstance(entry, dict):
            self.errors.append(Diagnostic(mark, "include entry must be a path or a mapping with `local:`"))
            return None
        for key in entry:
            if key not in INCLUDE_KEYS:
                self.errors.append(Diagnostic(key_mark(entry, key), f"unknown include key `{key}`",
                                              did_you_mean(key, INCLUDE_KEYS)))
                return None
        if "rules" in entry and self.include_filter is not None:
            try:
                if not self.include_filter(entry["rules"], value_mark(entry, "rules")):
                    return None
            except PipelineError as exc:  # invalid rules: reported with the other errors
                self.errors.extend(exc.errors)
                return None
        if "local" in entry:
            local = entry["local"]
            if not isinstance(local, str) or not local:
                self.errors.append(Diagnostic(value_mark(entry, "local"), "include `local:` must be a path"))
                return None
            return local
        kind = next((k for k in ("project", "file", "remote", "template", "component") if k in entry), None)
        if kind is None:
            self.errors.append(Diagnostic(mark, "include entry needs `local:`"))
            return None
        what = {"file": "project", "project": "project"}.get(kind, kind)
        self.errors.append(Diagnostic(key_mark(entry, kind), f"include `{what}` is not supported here; "
                                      "only `include: local` files of the same repository are",
                                      "copy the file into the repository and include it with `local:`"))
        return None

    def _expand_local(self, local: str, mark: Mark | None, display_name: str) -> list[tuple[Path, str]]:
        """Resolve a ``local:`` path (maybe with ``*`` / ``**``) inside the repository."""
        if self.repo_dir is None:
            self.errors.append(Diagnostic(mark, f"cannot include {local!r}: no repository directory is known"))
            return []
        relative = local.lstrip("/")
        if not relative.endswith((".yml", ".yaml")):
            self.errors.append(Diagnostic(mark, f"included file {local!r} must be a .yml or .yaml file"))
            return []
        if any(part == ".." for part in Path(relative).parts):
            self.errors.append(Diagnostic(mark, f"included file {local!r} must stay inside the repository"))
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
