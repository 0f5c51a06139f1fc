"""The web app's artifact and cache routes, driven over HTTP by the worker's client
(``workers.transfer``) and by the API's users, on both object store backends."""

from __future__ import annotations

import io
import tarfile
import uuid
from pathlib import Path

import pytest
import requests

from ci_queue.artifacts.archive import TarWriter, safe_extract
from ci_queue.artifacts.janitor import ObjectJanitor
from ci_queue.artifacts.selection import select
from ci_queue.objects import open_store
from ci_queue.store.artifacts import ArtifactIndex
from tests.artifacts.conftest import LiveApp, RunningJob, live_app
from workers.transfer import AttemptGone, ChecksumMismatch, Rejected

PIPELINE = """
stages: [build, test]
build:
  stage: build
  script: [make]
  artifacts: {paths: [dist/], reports: {dotenv: build.env, junit: report.xml}}
gen:
  stage: build
  script: [gen]
test:
  stage: test
  script: [test]
lint:
  stage: test
  dependencies: []
  script: [lint]
"""


def tree(root: Path) -> Path:
    (root / "dist" / "sub").mkdir(parents=True)
    (root / "dist" / "app").write_bytes(b"#!/bin/sh\necho app\n")
    (root / "dist" / "app").chmod(0o755)
    (root / "dist" / "sub" / "data.json").write_text('{"a": 1}')
    (root / "dist" / "link").symlink_to("app")
    return root


def upload(live: LiveApp, job: RunningJob, root: Path, paths: list[str], expire_in: str | None = None) -> dict:
    selection = select(root, paths)
    writers: list[TarWriter] = []

    def chunks():
        writers.append(TarWriter(root, selection.entries))
        return writers[-1].chunks()

    with live.channel(job) as channel:
        uploaded = channel.upload_archive(chunks)
        return channel.commit_artifacts(name="dist-files", expire_in=expire_in, uploaded=uploaded,
                                        manifest=writers[-1].manifest_json(), files=writers[-1].files)


def next_job(live: LiveApp, build: RunningJob, name: str) -> RunningJob:
    """End the build stage (``build`` and ``gen``) and start ``name`` of the test stage."""
    live.finish(build.run_id, build.index)
    gen = build.indexes["gen"]
    live.begin(build.run_id, gen)
    live.finish(build.run_id, gen)
    index = build.indexes[name]
    return RunningJob(build.run_id, index, 1, live.begin(build.run_id, index), build.indexes)


def api(live: LiveApp, path: str, **kwargs) -> requests.Response:
    return requests.get(live.url + path, headers=live.auth, timeout=30, **kwargs)


def test_only_the_running_attempt_holds_a_job_token(live: LiveApp):
    job = live.running(PIPELINE, "build")
    base = f"{live.url}/api/v1/jobs/{job.run_id}/{job.index}/{job.attempt}/dependencies"
    missing = requests.get(base, timeout=10)
    assert missing.status_code == 401 and "Job-Token" in missing.json()["error"]
    assert requests.get(base, headers={"Job-Token": "not-it"}, timeout=10).status_code == 403
    assert requests.get(base, headers={"Authorization": f"Bearer {live.auth}"}, timeout=10).status_code == 401
    assert requests.get(base, headers={"Job-Token": job.token}, timeout=10).status_code == 200
    other_attempt = base.replace(f"/{job.attempt}/dependencies", "/2/dependencies")
    assert requests.get(other_attempt, headers={"Job-Token": job.token}, timeout=10).status_code == 403
    live.finish(job.run_id, job.index)
    answer = requests.get(base, headers={"Job-Token": job.token}, timeout=10)
    assert answer.status_code == 403 and "ended or was taken over" in answer.json()["error"]


def test_artifacts_go_up_and_come_back_byte_for_byte(live: LiveApp, tmp_path: Path):
    build = live.running(PIPELINE, "build")
    root = tree(tmp_path / "build-ws")
    record = upload(live, build, root, ["dist/"], expire_in="1 week")
    assert record["files"] == 2 and record["attempt"] == 1 and not record["expired"]
    assert record["expires"] - live.store.now() == pytest.approx(7 * 86400, abs=60)

    job = api(live, f"/api/v1/runs/{build.run_id}/jobs/build").json()
    assert job["artifacts"]["name"] == "dist-files" and job["artifacts"]["files"] == 2
    assert job["artifacts"]["size"] == record["size"]
    run = api(live, f"/api/v1/runs/{build.run_id}").json()
    assert next(j for j in run["jobs"] if j["name"] == "build")["artifacts"]["size"] == record["size"]

    listing = api(live, f"/api/v1/runs/{build.run_id}/jobs/build/artifacts.json").json()
    files = {f["path"]: f for f in listing["files"]}
    assert files["dist/app"]["size"] == len(b"#!/bin/sh\necho app\n")
    assert files["dist/link"]["type"] == "symlink" and files["dist/link"]["target"] == "app"

    one = api(live, f"/api/v1/runs/{build.run_id}/jobs/build/artifacts/dist/sub/data.json")
    assert one.status_code == 200 and one.content == b'{"a": 1}'
    assert one.headers["Content-Type"].startswith("application/json")
    assert one.headers["X-Content-Type-Options"] == "nosniff" and "attachment" in one.headers["Content-Disposition"]
    assert api(live, f"/api/v1/runs/{build.run_id}/jobs/build/artifacts/dist/nope").status_code == 404
    assert api(live, f"/api/v1/runs/{build.run_id}/jobs/build/artifacts/dist/link").status_code == 404

    whole = api(live, f"/api/v1/runs/{build.run_id}/jobs/build/artifacts", allow_redirects=True)
    assert whole.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(whole.content)) as tar:
        assert tar.extractfile("dist/app").read() == b"#!/bin/sh\necho app\n"

    # a later job of the run gets them through its own token
    test = next_job(live, build, "test")
    with live.channel(test) as channel:
        sources = {s["job"]: s for s in channel.dependencies()}
        assert sources["build"]["status"] == "ok" and sources["gen"]["status"] == "none"
        target = tmp_path / "test-ws"
        target.mkdir()
        with channel.dependency_archive(sources["build"]["index"], sources["build"]["sha256"], "build") as reader:
            safe_extract(reader, target)
            reader.verify()
    assert (target / "dist" / "app").read_bytes() == (root / "dist" / "app").read_bytes()
    assert (target / "dist" / "app").stat().st_mode & 0o777 == 0o755
    assert (target / "dist" / "link").readlink() == Path("app")


@pytest.mark.parametrize(("listing", "reason"), [
    (b"not json", "not JSON"),
    (b'[{"path": "../etc/passwd", "type": "file", "size": 1, "offset": 0}]', "damaged"),
    (b'[{"path": "dist/app", "type": "file", "size": 4096, "offset": 1048576}]', "past the end"),
])
def test_a_forged_file_list_is_refused_where_it_is_read(live: LiveApp, tmp_path: Path, listing: bytes, reason: str):
    """The worker stores the file list as it sends it; the web app checks it when it is used, so
    a job that forged it can read nothing outside its own archive, and says why."""
    build = live.running(PIPELINE, "build")
    upload(live, build, tree(tmp_path / "ws"), ["dist/"])
    live.objects.put(ArtifactIndex(live.store).artifacts(build.run_id, build.index)["manifest"], io.BytesIO(listing))
    for suffix in ("artifacts.json", "artifacts/dist/app"):
        answer = api(live, f"/api/v1/runs/{build.run_id}/jobs/build/{suffix}")
        assert answer.status_code == 500 and reason in answer.json()["error"], answer.text


def test_a_commit_without_its_file_list_is_409(live: LiveApp, tmp_path: Path):
    build = live.running(PIPELINE, "build")
    with live.channel(build) as channel:
        uploaded = channel.upload_archive(lambda: [bytes(1024)])
        body = {"name": "x", "expire_in": None, "sha256": uploaded.sha256, "size": uploaded.size, "files": 0,
                "manifest_size": 2}
        with pytest.raises(Rejected, match="no file list of 2 bytes was uploaded"):
            channel._request("POST", "/artifacts", json=body)


def test_lint_with_no_dependencies_is_told_of_none(live: LiveApp, tmp_path: Path):
    build = live.running(PIPELINE, "build")
    upload(live, build, tree(tmp_path / "ws"), ["dist/"])
    lint = next_job(live, build, "lint")
    with live.channel(lint) as channel:
        assert channel.dependencies() == []


def test_a_damaged_download_is_a_checksum_mismatch(live: LiveApp, tmp_path: Path):
    build = live.running(PIPELINE, "build")
    record = upload(live, build, tree(tmp_path / "ws"), ["dist/"])
    key = ArtifactIndex(live.store).artifacts(build.run_id, build.index)["key"]
    with live.objects.open(key) as reader:
        good = b"".join(reader.iter_chunks(1 << 20))
    live.objects.put(key, io.BytesIO(good[:-1] + bytes([good[-1] ^ 1])))  # one bit flipped, same size
    test = next_job(live, build, "test")
    with live.channel(test) as channel, channel.dependency_archive(build.index, record["sha256"], "build") as reader:
        safe_extract(reader, tmp_path)
        with pytest.raises(ChecksumMismatch, match="checksum mismatch downloading build"):
            reader.verify()


def test_dotenv_and_junit_reports_are_read_on_the_control_plane(live: LiveApp):
    build = live.running(PIPELINE, "build")
    junit = (b'<testsuite name="s" tests="3"><testcase classname="c" name="ok"/>'
             b'<testcase classname="c" name="bad"><failure message="boom">x</failure></testcase>'
             b'<testcase classname="c" name="later"><skipped/></testcase></testsuite>')
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("report.xml")
        info.size = len(junit)
        tar.addfile(info, io.BytesIO(junit))
    with live.channel(build) as channel:
        summary = channel.put_report("junit", lambda: [buffer.getvalue()])
        assert (summary["total"], summary["failed"], summary["skipped"]) == (3, 1, 1)
        with pytest.raises(Rejected) as refused:
            channel.put_report("dotenv", lambda: [b"GOOD=1\nnot a line\n"])
        assert refused.value.status == 400 and "dotenv" in refused.value.reason
        assert channel.put_report("dotenv", lambda: [b"VERSION=1.2.3\nNAME=app\n"])["variables"] == ["NAME",
                                                                                                      "VERSION"]
    shown = api(live, f"/api/v1/runs/{build.run_id}/jobs/build").json()["test_summary"]
    assert shown["failed"] == 1 and shown["failing"][0]["name"] == "bad"
    test = next_job(live, build, "test")
    with live.channel(test) as channel:
        build_source = next(s for s in channel.dependencies() if s["job"] == "build")
    # no archive, but its dotenv variables still reach the jobs that fetch its artifacts
    assert build_source["status"] == "none" and build_source["dotenv"] == {"VERSION": "1.2.3", "NAME": "app"}


def test_expired_artifacts_are_removed_and_dependents_are_told(live: LiveApp, tmp_path: Path):
    build = live.running(PIPELINE, "build")
    record = upload(live, build, tree(tmp_path / "ws"), ["dist/"], expire_in="1 hour")
    test = next_job(live, build, "test")
    janitor = ObjectJanitor(live.store, live.objects, live.settings)
    assert janitor.sweep()["artifacts"] == 0
    assert live.objects.stat(record["key"]) is not None
    assert janitor.sweep(now=live.store.now() + 3601)["artifacts"] == 1
    assert live.objects.stat(record["key"]) is None
    answer = api(live, f"/api/v1/runs/{build.run_id}/jobs/build/artifacts")
    assert answer.status_code == 404 and "expired" in answer.json()["error"]
    assert api(live, f"/api/v1/runs/{build.run_id}/jobs/build").json()["artifacts"]["expired"] is True
    with live.channel(test) as channel:
        assert next(s for s in channel.dependencies() if s["job"] == "build")["status"] == "expired"


def test_a_runs_objects_go_when_its_retention_ended(live: LiveApp, tmp_path: Path):
    build = live.running(PIPELINE, "build")
    record = upload(live, build, tree(tmp_path / "ws"), ["dist/"], expire_in="never")
    assert record["expire_at"] is None
    janitor = ObjectJanitor(live.store, live.objects, live.settings)
    later = live.store.now() + live.store.retention + 1
    assert janitor.sweep(now=later)["runs"] == 0  # the run is still there: looked at again later
    assert live.objects.stat(record["key"]) is not None
    live.store.r.delete(*live.store._keys(build.run_id), live.store._names(build.run_id))  # retention ended
    assert janitor.sweep(now=later + live.store.retention + 1)["runs"] == 1
    assert live.objects.stat(record["key"]) is None and live.objects.stat(record["manifest"]) is None


def test_an_attempt_that_was_taken_over_records_nothing(live: LiveApp, tmp_path: Path):
    build = live.running(PIPELINE, "build")
    root = tree(tmp_path / "ws")
    selection = select(root, ["dist/"])
    writer = TarWriter(root, selection.entries)
    with live.channel(build) as channel:
        uploaded = channel.upload_archive(lambda: TarWriter(root, selection.entries).chunks())
        list(writer.chunks())
        assert live.store.requeue_job(build.run_id, build.index, 1, {"attempt": 1, "status": "failed"}) == 2
        with pytest.raises(AttemptGone):
            channel.commit_artifacts(name="x", expire_in=None, uploaded=uploaded, manifest=writer.manifest_json(),
                                     files=writer.files)
    assert ArtifactIndex(live.store).artifacts(build.run_id, build.index) is None


def test_caches_are_per_repository_and_expire_unused(live: LiveApp, tmp_path: Path):
    root = tmp_path / "ws"
    (root / "vendor").mkdir(parents=True)
    (root / "vendor" / "lib").write_text("lib v1")
    build = live.running(PIPELINE, "build")
    with live.channel(build) as channel:
        assert channel.cache_checksum("deps-protected") is None
        stored = channel.upload_cache("deps-protected", lambda: TarWriter(root, ["vendor", "vendor/lib"]).chunks())
        assert channel.cache_checksum("deps-protected") == stored.sha256
        with channel.cache_archive("deps-protected", stored.sha256) as reader:
            target = tmp_path / "restored"
            target.mkdir()
            safe_extract(reader, target)
            reader.verify()
    assert (target / "vendor" / "lib").read_text() == "lib v1"
    other = live.running(PIPELINE, "build", repo="someone/else")
    with live.channel(other) as channel:
        assert channel.cache_checksum("deps-protected") is None  # another repository's caches are not seen
    janitor = ObjectJanitor(live.store, live.objects, live.settings)
    assert janitor.sweep()["caches"] == 0
    assert janitor.sweep(now=live.store.now() + 15 * 86400)["caches"] == 1
    with live.channel(build) as channel:
        assert channel.cache_checksum("deps-protected") is None


@pytest.mark.parametrize("backend", ["directory"])
def test_an_archive_over_the_limit_is_refused_with_413(store, broker_url, tmp_path: Path, backend):
    objects = open_store((tmp_path / "objects").as_uri())
    app, server = live_app(store, broker_url, tmp_path, objects, max_artifact_bytes=1024)
    try:
        job = app.running(PIPELINE, "build")
        limit = 1024 + 1024 // 8 + 64 * 1024 * 1024
        with app.channel(job) as channel, pytest.raises(Rejected) as refused:
            channel.upload_archive(lambda: (b"\0" * (1 << 20) for _ in range(limit // (1 << 20) + 2)))
        assert refused.value.status == 413 and "the artifacts archive is over" in refused.value.reason
        assert objects.stat(f"runs/{job.run_id}/jobs/{job.index}/a1/artifacts.tar") is None
    finally:
        server.shutdown()


@pytest.mark.parametrize("backend", ["s3"])
def test_an_unreachable_store_is_503_with_retry_after(store, broker_url, tmp_path: Path, backend, monkeypatch):
    from ci_queue.standalone import free_port

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    down = open_store(f"s3://nowhere-{uuid.uuid4().hex[:6]}", s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
                      s3_region="us-east-1")
    app, server = live_app(store, broker_url, tmp_path, down)
    try:
        job = app.running(PIPELINE, "build")
        answer = requests.put(f"{app.url}/api/v1/jobs/{job.run_id}/{job.index}/1/artifacts.tar", data=b"x" * 10,
                              headers={"Job-Token": job.token}, timeout=60)
        assert answer.status_code == 503 and answer.headers["Retry-After"]
        assert "artifact store" in answer.json()["error"]
    finally:
        server.shutdown()
