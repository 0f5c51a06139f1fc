"""What a job gets before its steps and leaves after them: artifacts, reports and caches.

The order is GitLab Runner's: the list of dependencies (with their dotenv variables, which go
into the job's environment), then ``restore_cache``, ``download_artifacts``, the steps, then
``archive_cache`` and ``upload_artifacts``. Everything goes through the web app with the job
token (``workers.transfer``); the files are chosen and packed by ``ci_queue.artifacts.archive``,
which never follows a symlink out of the workspace and refuses hostile archives.

Failures, GitLab's where it has them:

- a dependency whose artifacts expired: ``missing_dependency`` (a dependency that made none is
  not one);
- artifacts over ``CIQ_MAX_ARTIFACT_BYTES``: ``artifacts_too_large``, saying how much was found;
- an invalid dotenv report: ``invalid_report`` (GitLab refuses the upload, and the job fails);
- a hostile archive from a dependency: ``invalid_artifacts``, naming the entry;
- a cache GitLab refuses (an unknown ``policy``): ``invalid_cache``;
- the web app or the store unreachable, a checksum mismatch: ``runner_system_failure``
  (retried on another attempt, on a fresh workspace);
- nothing matched ``artifacts:paths``, a cache miss, a cache that cannot be saved, a JUnit report
  that cannot be read: warnings in the log, not failures.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ci_queue.artifacts.archive import TarWriter, UnsafeArchive, safe_extract
from ci_queue.artifacts.caches import CacheKeyError, CacheSpec, resolve_caches
from ci_queue.artifacts.selection import SelectionTooLarge, UntrackedError, human_bytes, select, untracked
from ci_queue.pipeline.model import Job
from ci_queue.pipeline.variables import expand_text
from ci_queue.settings import Settings
from workers.cache_copies import LocalCaches
from workers.logs import JobLog
from workers.transfer import JobChannel, Rejected, TransferError

RESTORE_CACHE, DOWNLOAD_ARTIFACTS = "restore_cache", "download_artifacts"
ARCHIVE_CACHE, UPLOAD_ARTIFACTS = "archive_cache", "upload_artifacts"
# report kinds the control plane reads; the files of any other kind are kept as plain artifacts
PARSED_REPORTS = ("junit", "dotenv")


class DataFailure(Exception):
    """Ends the job: a failure class and a message for the log."""

    def __init__(self, failure_class: str, message: str) -> None:
        super().__init__(message)
        self.failure_class = failure_class


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _when_matches(when: str, status: str) -> bool:
    """``artifacts:when`` / ``cache:when`` against the job's status (a canceled job keeps nothing)."""
    if status == "canceled":
        return False
    return when == "always" or (when == "on_failure") == (status != "success")


class JobData:
    """Artifacts and caches of one attempt (see the module docstring)."""

    def __init__(self, channel: JobChannel, job: Job, workspace: Path, log: JobLog, settings: Settings,
                 canceled: Callable[[], bool]) -> None:
        self.channel, self.job, self.workspace, self.log = channel, job, workspace, log
        self.settings = settings
        self.canceled = canceled
        self.local = LocalCaches.from_settings(settings)
        self.caches: list[CacheSpec] = []

    def say(self, step: str, text: str) -> None:
        self.log.system(step, text)

    # -- before the steps ----------------------------------------------------------------------------
    def dependencies(self) -> list[dict[str, Any]]:
        """The jobs whose artifacts this job gets; fails the job if one's artifacts expired."""
        try:
            sources = self.channel.dependencies()
        except Rejected as exc:
            raise TransferError(f"could not list the job's dependencies: {exc.reason}") from None
        expired = [s["job"] for s in sources if s["status"] == "expired"]
        if expired:
            names = ", ".join(f"`{name}`" for name in expired)
            raise DataFailure("missing_dependency", f"the artifacts of {names} expired or were removed; this job "
                                                    "depends on them (run the pipeline again to make them anew)")
        return sources

    @staticmethod
    def dotenv(sources: list[dict[str, Any]]) -> dict[str, str]:
        """The dotenv variables of the dependencies, later ones winning."""
        variables: dict[str, str] = {}
        for source in sources:
            variables.update(source.get("dotenv") or {})
        return variables

    def restore_caches(self, env: dict[str, str], protected: bool) -> None:
        """Pull the job's caches (``pull``/``pull-push``), trying the fallback keys in order; a miss
        or an unreachable store is a warning, never a failure."""
        if not self.job.cache:
            return
        try:
            self.caches, warnings = resolve_caches(self.job.cache, env, self.workspace, protected=protected,
                                                   ref_name=env.get("CI_COMMIT_REF_NAME", ""))
        except CacheKeyError as exc:  # GitLab refuses these (an unknown policy fails the job)
            raise DataFailure("invalid_cache", f"cache: {exc}") from None
        for warning in warnings:
            self.say(RESTORE_CACHE, f"WARNING: {warning}")
        for spec in self.caches:
            if spec.policy == "push":
                continue
            try:
                self._restore(spec)
            except (TransferError, UnsafeArchive, OSError) as exc:
                self.say(RESTORE_CACHE, f"WARNING: could not restore cache {spec.key!r}: {exc}; going on without it")

    def _restore(self, spec: CacheSpec) -> None:
        for key in (spec.key, *spec.fallback_keys):
            self.say(RESTORE_CACHE, f"Checking cache for {key}...")
            sha256 = self.channel.cache_checksum(key)
            if sha256 is None:
                continue
            started = time.monotonic()
            local = self.local.find(sha256)
            if local is None:
                local = self._download_cache(key, sha256)
                where = "downloaded"
            else:
                where = "local copy"
            with local.open("rb") as archive:
                entries = safe_extract(archive, self.workspace)
            self.say(RESTORE_CACHE, f"Successfully extracted cache {key} ({len(entries)} entries, "
                                    f"{human_bytes(local.stat().st_size)}, {where}, "
                                    f"{time.monotonic() - started:.1f}s)")
            return
        self.say(RESTORE_CACHE, f"No cache for {spec.key}" + (" or its fallback keys" if spec.fallback_keys else "")
                 + " (a miss is not a failure)")

    def _download_cache(self, key: str, sha256: str) -> Path:
        fd, temp = self.local.new_file()
        try:
            with os.fdopen(fd, "wb") as out, self.channel.cache_archive(key, sha256) as reader:
                while chunk := reader.read(1 << 20):
                    out.write(chunk)
                reader.verify()
            return self.local.keep(temp, sha256)
        except BaseException:
            self.local.discard(temp)
            raise

    def download_artifacts(self, sources: list[dict[str, Any]]) -> None:
        for source in sources:
            if source["status"] != "ok":
                continue
            if self.canceled():
                return
            started = time.monotonic()
            self.say(DOWNLOAD_ARTIFACTS, f"Downloading artifacts for {source['job']} "
                                         f"({human_bytes(int(source.get('size') or 0))})...")
            what = f"the artifacts of `{source['job']}`"
            with self.channel.dependency_archive(int(source["index"]), source.get("sha256", ""), what) as reader:
                try:
                    entries = safe_extract(reader, self.workspace)
                except UnsafeArchive as exc:
                    raise DataFailure("invalid_artifacts", f"refused {what}: {exc}") from None
                reader.verify()
            self.say(DOWNLOAD_ARTIFACTS, f"Downloaded and unpacked {what}: {len(entries)} entries in "
                                         f"{time.monotonic() - started:.1f}s")

    # -- after the steps -----------------------------------------------------------------------------
    def save_caches(self, status: str) -> None:
        for spec in self.caches:
            if spec.policy == "pull" or not _when_matches(spec.when, status):
                continue
            try:
                self._save(spec)
            except (TransferError, Rejected, SelectionTooLarge, UntrackedError, OSError) as exc:
                self.say(ARCHIVE_CACHE, f"WARNING: could not save cache {spec.key!r}: {exc}")

    def _save(self, spec: CacheSpec) -> None:
        self.say(ARCHIVE_CACHE, f"Creating cache {spec.key}...")
        selection = select(self.workspace, list(spec.paths), untracked_files=self._untracked(spec.untracked),
                           limit=self.settings.max_artifact_bytes)
        for warning in selection.warnings:
            self.say(ARCHIVE_CACHE, f"WARNING: {warning}")
        if selection.matched_nothing:
            self.say(ARCHIVE_CACHE, f"WARNING: no files to cache for {spec.key}; nothing saved")
            return
        fd, temp = self.local.new_file()
        os.close(fd)

        def chunks() -> Iterator[bytes]:  # every try writes the local copy afresh
            with temp.open("wb") as copy:
                for chunk in TarWriter(self.workspace, selection.entries).chunks():
                    copy.write(chunk)
                    yield chunk

        try:
            uploaded = self.channel.upload_cache(spec.key, chunks)
            self.local.keep(temp, uploaded.sha256)
        except BaseException:
            self.local.discard(temp)
            raise
        self.say(ARCHIVE_CACHE, f"Created cache {spec.key}: {len(selection.entries)} entries, "
                                f"{human_bytes(uploaded.size)}")

    def upload_artifacts(self, status: str, env: dict[str, str]) -> None:
        """Reports always (GitLab uploads them ``when: always``), the archive when
        ``artifacts:when`` says. Raises DataFailure for the job's own faults."""
        spec = self.job.artifacts or {}
        reports = spec.get("reports") or {}
        if status == "canceled" or not spec:
            return
        if reports.get("junit"):
            self._junit(_strings(reports["junit"]), env)
        if reports.get("dotenv"):
            self._dotenv(_strings(reports["dotenv"]), env)
        if not _when_matches(str(spec.get("when") or "on_success"), status):
            return
        paths = _strings(spec.get("paths"))
        for kind, value in reports.items():
            if kind not in PARSED_REPORTS:
                paths += _strings(value)
        paths = [expand_text(p, env) for p in paths]
        if not paths and not spec.get("untracked"):
            return
        self.say(UPLOAD_ARTIFACTS, f"Uploading artifacts for {'successful' if status == 'success' else 'failed'} "
                                   "job...")
        try:
            selection = select(self.workspace, paths, [expand_text(p, env) for p in _strings(spec.get("exclude"))],
                               untracked_files=self._untracked(bool(spec.get("untracked"))),
                               limit=self.settings.max_artifact_bytes)
        except SelectionTooLarge as exc:
            raise DataFailure("artifacts_too_large", str(exc)) from None
        except UntrackedError as exc:
            raise DataFailure("runner_system_failure", f"could not list the untracked files: {exc}") from None
        for warning in selection.warnings:
            self.say(UPLOAD_ARTIFACTS, f"WARNING: {warning}")
        if selection.matched_nothing:
            self.say(UPLOAD_ARTIFACTS, "WARNING: no files matched `artifacts:paths` ("
                     + ", ".join(paths or ["untracked"]) + "); ensure that the paths are relative to the "
                     "project directory. Nothing uploaded.")
            return
        writers: list[TarWriter] = []

        def chunks() -> Iterable[bytes]:
            writers.append(TarWriter(self.workspace, selection.entries))
            return writers[-1].chunks()

        started = time.monotonic()
        uploaded = self.channel.upload_archive(chunks)
        name = expand_text(str(spec.get("name") or "artifacts"), env) or "artifacts"
        expire_in = spec.get("expire_in")
        try:
            record = self.channel.commit_artifacts(name=name, expire_in=None if expire_in is None else str(expire_in),
                                                   uploaded=uploaded, manifest=writers[-1].manifest_json(),
                                                   files=writers[-1].files)
        except Rejected as exc:
            raise DataFailure("runner_system_failure", f"the artifacts were not accepted: {exc.reason}") from None
        expiry = f", expire at {record.get('expire_at')}" if record.get("expire_at") else ", never expire"
        self.say(UPLOAD_ARTIFACTS, f"Uploaded {record.get('files')} files ({human_bytes(uploaded.size)}, "
                                   f"sha256 {uploaded.sha256[:12]}) in {time.monotonic() - started:.1f}s{expiry}")

    def _untracked(self, wanted: bool) -> list[str]:
        return untracked(self.workspace) if wanted else []

    def _report_files(self, patterns: list[str], env: dict[str, str], kind: str) -> list[str]:
        selection = select(self.workspace, [expand_text(p, env) for p in patterns])
        for warning in selection.warnings:
            self.say(UPLOAD_ARTIFACTS, f"WARNING: reports:{kind}: {warning}")
        files = [p for p in selection.entries if (self.workspace / p).is_file()
                 and not (self.workspace / p).is_symlink()]
        if not files:
            self.say(UPLOAD_ARTIFACTS, f"WARNING: reports:{kind}: no file matched {', '.join(patterns)}")
        return files

    def _junit(self, patterns: list[str], env: dict[str, str]) -> None:
        files = self._report_files(patterns, env, "junit")
        if not files:
            return
        try:
            summary = self.channel.put_report("junit", lambda: TarWriter(self.workspace, files).chunks())
        except (TransferError, Rejected) as exc:
            self.say(UPLOAD_ARTIFACTS, f"WARNING: reports:junit could not be uploaded: {exc}")
            return
        if "error" in summary:
            self.say(UPLOAD_ARTIFACTS, f"WARNING: reports:junit could not be read: {summary['error']}")
        else:
            self.say(UPLOAD_ARTIFACTS, f"Test report: {summary.get('total')} tests, {summary.get('failed')} failed, "
                                       f"{summary.get('errors')} errors, {summary.get('skipped')} skipped")

    def _dotenv(self, patterns: list[str], env: dict[str, str]) -> None:
        files = self._report_files(patterns, env, "dotenv")
        if not files:
            return
        limit = 1 << 20
        data = b""
        for name in files:
            with (self.workspace / name).open("rb") as handle:
                data += handle.read(limit + 1 - len(data))
            if not data.endswith(b"\n"):
                data += b"\n"
        try:
            result = self.channel.put_report("dotenv", lambda: [data])
        except Rejected as exc:
            raise DataFailure("invalid_report", exc.reason) from None
        names = result.get("variables") or []
        self.say(UPLOAD_ARTIFACTS, f"reports:dotenv: {len(names)} variables for later jobs ({', '.join(names)})")
