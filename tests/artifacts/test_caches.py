"""Cache keys, fallback keys and policies, as GitLab and its runner make them.

Sources: the config entries (lib/gitlab/ci/config/entry/cache.rb, key.rb, files.rb, KeyValidator),
the key digest (lib/gitlab/ci/pipeline/seed/build/cache.rb, lib/gitlab/ci/build/cache.rb), the
suffixes (Ci::Build#cache in app/models/ci/build.rb) and the runner (shells/abstract.go,
cache/cachekey/cachekey.go, common/spec/spec.go). ``key:files`` is checked on real git repositories.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from ci_queue.artifacts.caches import (
    CacheKeyError,
    CacheSpec,
    cache_object_name,
    check_cache_config,
    go_expand,
    resolve_caches,
    sanitize_key,
)

JOB_VARS = {"CI_JOB_NAME": "rspec", "CI_COMMIT_REF_SLUG": "feature-x", "CI_COMMIT_REF_NAME": "feature/x",
            "CI_DEFAULT_BRANCH": "main"}


def resolve(caches, variables=None, workspace: Path | None = None, **options):
    options.setdefault("protected", False)
    return resolve_caches(caches, {**JOB_VARS, **(variables or {})}, workspace or Path("/nonexistent"), **options)


def one(cache: dict, variables=None, workspace: Path | None = None, **options) -> CacheSpec:
    specs, _ = resolve([{"paths": ["vendor/"], **cache}], variables, workspace, **options)
    assert len(specs) == 1
    return specs[0]


class Git:
    """A repository in a temporary directory: ``commit({path: text or None})`` returns the sha."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        self.env.update(GIT_AUTHOR_NAME="T", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="T",
                        GIT_COMMITTER_EMAIL="t@example.com", GIT_CONFIG_NOSYSTEM="1", HOME=str(path.parent))
        path.mkdir(parents=True, exist_ok=True)
        self("init", "-q", "-b", "main")

    def __call__(self, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=self.path, env=self.env, capture_output=True, text=True,
                              check=True).stdout.strip()

    def commit(self, files: dict[str, str | None], message: str = "change") -> str:
        for name, content in files.items():
            target = self.path / name
            if content is None:
                target.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
        self("add", "-A")
        self("commit", "-q", "--allow-empty", "-m", message)
        return self("rev-parse", "HEAD")

    def blob(self, path: str) -> str:
        return self("rev-parse", f"HEAD:{path}")


@pytest.fixture
def repo(tmp_path: Path) -> Git:
    return Git(tmp_path / "checkout")


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


# -- plain keys and the protection suffix --------------------------------------------------------------


def test_default_key_is_default_with_the_suffix():
    # Entry::Key.default is "default"; Ci::Build#cache adds the suffix
    assert one({}).key == "default-non_protected"
    assert one({}, protected=True).key == "default-protected"
    assert one({"key": None}).key == "default-non_protected"


def test_key_variables_are_expanded_like_the_runner():
    assert one({"key": "$CI_JOB_NAME-${CI_COMMIT_REF_SLUG}"}).key == "rspec-feature-x-non_protected"
    # os.Expand: an undefined variable is empty (the planner keeps "$X" as written; the runner does not)
    assert one({"key": "deps-$UNDEFINED"}).key == "deps--non_protected"


def test_unprotect_keeps_a_suffix_non_protected_everywhere():
    # type_suffix = !entry[:unprotect] && pipeline.protected_ref? ? 'protected' : 'non_protected'
    assert one({"key": "k", "unprotect": True}, protected=True).key == "k-non_protected"
    assert one({"key": "k", "unprotect": True}, protected=False).key == "k-non_protected"
    assert one({"key": "k", "unprotect": False}, protected=True).key == "k-protected"


def test_unprotect_can_be_refused_by_the_operator():
    specs, warnings = resolve([{"key": "k", "paths": ["a"], "unprotect": True}], protected=True,
                              unprotect_allowed=False)
    assert specs[0].key == "k-protected"
    assert any("unprotect" in w for w in warnings)


def test_without_separate_caches_there_is_no_suffix():
    # `return cache unless project.ci_separated_caches` ("Use separate caches for protected branches")
    spec = one({"key": "k", "fallback_keys": ["f"]}, protected=True, separate_caches=False)
    assert (spec.key, spec.fallback_keys) == ("k", ("f",))


def test_cleared_cache_index_comes_before_the_suffix():
    # "Clear runner caches" bumps jobs_cache_index: "#{key}-#{index}", then the suffix
    spec = one({"key": "k", "fallback_keys": ["f"]}, protected=True, cache_index=3)
    assert (spec.key, spec.fallback_keys) == ("k-3-protected", ("f-3-protected",))


def test_paths_untracked_when_and_policy_defaults():
    spec = one({"key": "k"})
    assert (spec.paths, spec.untracked, spec.when, spec.policy) == (("vendor/",), False, "on_success", "pull-push")
    spec = one({"key": "k", "when": "always", "policy": "pull", "untracked": True})
    assert (spec.untracked, spec.when, spec.policy) == (True, "always", "pull")


def test_a_cache_with_nothing_to_cache_is_skipped():
    # the runner: no --path and no --untracked -> nothing to extract or archive
    specs, warnings = resolve([{"key": "nothing"}, {"key": "only-untracked", "untracked": True}])
    assert [s.key for s in specs] == ["only-untracked-non_protected"]
    assert warnings == []


# -- fallback keys ---------------------------------------------------------------------------------------


def test_fallback_keys_in_order_then_cache_fallback_key():
    spec = one({"key": "$CI_COMMIT_REF_SLUG", "fallback_keys": ["$CI_DEFAULT_BRANCH", "generic"]},
               variables={"CACHE_FALLBACK_KEY": "global-$CI_DEFAULT_BRANCH"}, protected=True)
    assert spec.key == "feature-x-protected"
    # cache:fallback_keys get the suffix (Ci::Build#cache); CACHE_FALLBACK_KEY is the runner's own,
    # used as given, without one
    assert spec.fallback_keys == ("main-protected", "generic-protected", "global-main")


def test_cache_fallback_key_may_not_end_in_protected():
    # the runner blocks it (gitlab-org/gitlab#409111): it would read a protected branch's cache
    # the check trims trailing dots and spaces, and looks at the key after expansion
    for value, key in (("main-protected", "main-protected"), ("main-protected. .", "main-protected. ."),
                       ("$BRANCH-protected", "main-protected")):
        specs, warnings = resolve([{"key": "k", "paths": ["a"]}],
                                  variables={"CACHE_FALLBACK_KEY": value, "BRANCH": "main"})
        assert specs[0].fallback_keys == ()
        assert warnings == [f'CACHE_FALLBACK_KEY "{key}" not allowed to end in "-protected"']
    spec = one({"key": "k"}, variables={"CACHE_FALLBACK_KEY": "main-non_protected"})
    assert spec.fallback_keys == ("main-non_protected",)


def test_at_most_five_fallback_keys():
    check_cache_config({"fallback_keys": ["a"] * 5})
    with pytest.raises(CacheKeyError, match=r"has to many entries \(maximum 5\)"):  # sic
        check_cache_config({"fallback_keys": ["a"] * 6})


def test_fallback_key_that_sanitizes_to_nothing_is_dropped_with_a_warning():
    specs, warnings = resolve([{"key": "k", "paths": ["a"], "fallback_keys": ["$DOTS", "ok"]}],
                              variables={"DOTS": ".."}, separate_caches=False)
    assert specs[0].fallback_keys == ("ok",)
    assert 'cache key ".." could not be sanitized' in warnings


# -- invalid keys ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "message"), [
    ("a/b", 'cannot contain the "/" character'),
    ("a%2Fb", 'cannot contain the "/" character'),  # KeyValidator: CGI.unescape first
    ("a%2fb", 'cannot contain the "/" character'),
    (".", 'cannot be "." or ".."'),
    ("..", 'cannot be "." or ".."'),
    ("%2E%2e", 'cannot be "." or ".."'),
    (1234, "should be a hash, a string or a symbol"),
])
def test_keys_gitlab_refuses_when_it_creates_the_pipeline(key, message):
    with pytest.raises(CacheKeyError, match=f"^cache:key config {message}"):
        resolve([{"key": key, "paths": ["a"]}])


def test_key_checks_are_on_the_key_as_written_not_after_expansion():
    # KeyValidator sees "$CI_COMMIT_REF_NAME"; the runner then gets "feature/x": a path, allowed
    assert one({"key": "$CI_COMMIT_REF_NAME"}).key == "feature/x-non_protected"


def test_prefix_is_checked_like_a_key():
    with pytest.raises(CacheKeyError, match=r'^cache:key:prefix config cannot contain the "/" character'):
        check_cache_config({"key": {"files": ["a"], "prefix": "x/y"}})


@pytest.mark.parametrize(("key", "message"), [
    ({"files": ["a"], "files_commits": ["b"]}, "must use exactly one of these keys: files, files_commits"),
    ({"prefix": "p"}, "must use exactly one of these keys: files, files_commits"),
    ({"files": []}, "cache:key:files config requires at least 1 item"),
    ({"files": ["a", "b", "c"]}, r"cache:key:files config has too many items \(maximum is 2\)"),
    ({"files_commits": "a"}, "cache:key:files_commits config should be an array of strings"),
    ({"files": ["a"], "suffix": "x"}, "cache:key config contains unknown keys: suffix"),
])
def test_complex_key_config_errors(key, message):
    with pytest.raises(CacheKeyError, match=message):
        check_cache_config({"key": key})


def test_key_the_runner_cannot_sanitize_skips_the_cache_with_warnings():
    specs, warnings = resolve([{"key": "$DOTS", "paths": ["a"]}, {"key": "ok", "paths": ["b"]}],
                              variables={"DOTS": "a/../.."}, separate_caches=False)
    assert [s.key for s in specs] == ["ok"]
    assert warnings == ['cache key "a/../.." could not be sanitized',
                        "Skipping cache extraction due to empty cache key"]


def test_runner_sanitizes_keys_with_a_warning():
    specs, warnings = resolve([{"key": "$K", "paths": ["a"]}], variables={"K": "a\\b/./c "}, separate_caches=False)
    assert specs[0].key == "a/b/c"
    assert warnings == ['cache key "a\\\\b/./c " sanitized to "a/b/c"']


def test_empty_key_is_job_and_ref_in_the_runner():
    # newCacheConfig: an empty key defaults to path.Join(job name, ref); only reachable without suffixes
    assert one({"key": ""}, separate_caches=False, ref_name="feature/x").key == "rspec/feature/x"
    assert one({"key": ""}).key == "-non_protected"


@pytest.mark.parametrize(("raw", "expected"), [
    # from the runner's cachekey_test.go
    ("fallback_key", "fallback_key"), ("some-job/some-ref", "some-job/some-ref"), (".../....", ".../...."),
    ("fallback_key/", "fallback_key"), ("fallback_key ", "fallback_key"), ("fallback_key\\", "fallback_key"),
    ("fallback_key / \\o", "fallback_key / /o"), ("\t foo bar \t\r", "\t foo bar"), ("foo/ /", "foo"),
    ("something %2F something", "something / something"), ("some%2f../job/some/ref/.", "job/some/ref"),
    ("%2E%2E%2E", "..."), ("%5C", "%5C"), ("foo/blipp/../bar", "foo/bar"), ("../foo/bar", "foo/bar"),
    ("foo/bar/../../../.././blerp", "blerp"), ("\\\\foo\\bar", "foo/bar"), ("a/b/c/../../d", "a/d"),
    ("\\", ""), (" ", ""), (".", ""), ("..", ""), ("//", ""), ("foo/bar/../..", ""), ("%2e.", ""), ("", ""),
])
def test_sanitize_key_matches_the_runner(raw, expected):
    key, error = sanitize_key(raw)
    assert key == expected
    assert (error is not None) == (expected == "" and raw != "")


# -- policy -------------------------------------------------------------------------------------------------


def test_policy_may_be_a_variable():
    assert one({"key": "k", "policy": "$CACHE_POLICY"}, variables={"CACHE_POLICY": "pull"}).policy == "pull"
    assert one({"key": "k", "policy": "${CACHE_POLICY}"}, variables={"CACHE_POLICY": "push"}).policy == "push"
    # the runner: an empty policy (undefined variable) is CachePolicyUndefined, treated as pull-push
    assert one({"key": "k", "policy": "$CACHE_POLICY"}).policy == "pull-push"


def test_unknown_policy_from_a_variable_fails_the_job():
    # CheckPolicy: "unknown cache policy %s", the runner adds " for <key>"
    with pytest.raises(CacheKeyError, match=r"^unknown cache policy pull-only for k-non_protected$"):
        one({"key": "k", "policy": "$CACHE_POLICY"}, variables={"CACHE_POLICY": "pull-only"})


def test_policy_pattern_is_unanchored_in_gitlab():
    # ALLOWED_POLICY = /pull-push|push|pull|\$\w{1,255}*/ has no anchors: "pull-only" passes the
    # config check and fails in the runner; "bogus" fails the config check
    check_cache_config({"policy": "pull-only"})
    with pytest.raises(CacheKeyError, match=r"^unknown cache policy pull-only"):
        one({"key": "k", "policy": "pull-only"})
    with pytest.raises(CacheKeyError, match=r"^cache:policy should be a variable or one of: pull-push, push, pull$"):
        check_cache_config({"policy": "bogus"})


def test_policy_is_not_checked_for_a_skipped_cache():
    # the runner computes the key first and skips the cache before it reads the policy
    specs, _ = resolve([{"key": "$DOTS", "paths": ["a"], "policy": "pull-only"}], variables={"DOTS": ".."},
                       separate_caches=False)
    assert specs == []


def test_when_must_be_known():
    with pytest.raises(CacheKeyError, match=r"^cache:when should be one of: on_success, on_failure, always$"):
        resolve([{"key": "k", "paths": ["a"], "when": "manual"}])


# -- key:files -------------------------------------------------------------------------------------------------


def test_key_files_hashes_the_blobs_of_the_files(repo: Git):
    # GitLab >= 18.4 (gitlab-org/gitlab!203233): sha1 of the sorted blob ids joined by "-"; the
    # default prefix is "<index>_<names before the first dot>" (Build::Cache#cache_prefix, #388374)
    repo.commit({"Gemfile.lock": "gems\n", "package.json": "{}\n"})
    blobs = sorted([repo.blob("Gemfile.lock"), repo.blob("package.json")])
    spec = one({"key": {"files": ["Gemfile.lock", "package.json"]}}, workspace=repo.path)
    assert spec.key == f"0_Gemfile_package-{sha1('-'.join(blobs))}-non_protected"


def test_key_files_is_about_content_not_history(repo: Git):
    repo.commit({"yarn.lock": "v1\n"})
    first = one({"key": {"files": ["yarn.lock"]}}, workspace=repo.path).key
    repo.commit({"README": "unrelated\n"})
    assert one({"key": {"files": ["yarn.lock"]}}, workspace=repo.path).key == first
    repo.commit({"yarn.lock": "v2\n"})
    changed = one({"key": {"files": ["yarn.lock"]}}, workspace=repo.path).key
    assert changed != first
    repo.commit({"yarn.lock": "v1\n"})  # reverted: the content is what counts (the fix of #460235)
    assert one({"key": {"files": ["yarn.lock"]}}, workspace=repo.path).key == first


def test_key_files_reads_the_commit_not_uncommitted_changes(repo: Git):
    repo.commit({"yarn.lock": "v1\n"})
    committed = one({"key": {"files": ["yarn.lock"]}}, workspace=repo.path).key
    (repo.path / "yarn.lock").write_text("changed by the job\n")
    assert one({"key": {"files": ["yarn.lock"]}}, workspace=repo.path).key == committed


def test_key_files_prefix_given_expanded_or_empty(repo: Git):
    repo.commit({"yarn.lock": "v1\n"})
    digest = sha1(repo.blob("yarn.lock"))
    assert one({"key": {"files": ["yarn.lock"], "prefix": "$CI_JOB_NAME"}}, workspace=repo.path).key == (
        f"rspec-{digest}-non_protected")
    # prefix "" is kept by `||=` and then dropped as blank: the digest alone
    assert one({"key": {"files": ["yarn.lock"], "prefix": ""}}, workspace=repo.path).key == f"{digest}-non_protected"


def test_key_files_default_prefix_uses_the_cache_index(repo: Git):
    repo.commit({"yarn.lock": "v1\n", "go.sum": "x\n"})
    specs, _ = resolve([{"key": "plain", "paths": ["a"]}, {"key": {"files": ["/go.sum"]}, "paths": ["b"]},
                        {"key": {"files_commits": ["go.sum"]}, "paths": ["c"]}], workspace=repo.path)
    # a leading "/" is dropped (Entry::Files#value); files_commits keeps the bare index
    assert specs[1].key == f"1_go-{sha1(repo.blob('go.sum'))}-non_protected"
    assert specs[2].key.startswith("2-")


def test_key_files_without_any_existing_file_is_default(repo: Git):
    repo.commit({"README": "x\n"})
    assert one({"key": {"files": ["missing.lock"]}}, workspace=repo.path).key == "0_missing-default-non_protected"
    assert one({"key": {"files": ["missing.lock"], "prefix": "deps"}}, workspace=repo.path).key == (
        "deps-default-non_protected")


def test_key_files_ignores_a_missing_one_of_two(repo: Git):
    repo.commit({"yarn.lock": "v1\n"})
    spec = one({"key": {"files": ["yarn.lock", "missing.lock"]}}, workspace=repo.path)
    assert spec.key == f"0_yarn_missing-{sha1(repo.blob('yarn.lock'))}-non_protected"


def test_key_files_same_content_in_two_files_counts_once(repo: Git):
    repo.commit({"a.lock": "same\n", "b.lock": "same\n"})
    spec = one({"key": {"files": ["a.lock", "b.lock"], "prefix": "p"}}, workspace=repo.path)
    assert spec.key == f"p-{sha1(repo.blob('a.lock'))}-non_protected"  # ids.compact.sort.uniq


def test_key_files_wildcards(repo: Git):
    # Repository#search_files_by_wildcard_path: "**/" any directories or none, "*" no slash
    repo.commit({"Cargo.lock": "root\n", "crates/a/Cargo.lock": "a\n", "crates/b/c/Cargo.lock": "c\n",
                 "other.txt": "x\n"})
    everywhere = {repo.blob(p) for p in ("Cargo.lock", "crates/a/Cargo.lock", "crates/b/c/Cargo.lock")}
    spec = one({"key": {"files": ["**/Cargo.lock"], "prefix": "p"}}, workspace=repo.path)
    assert spec.key == f"p-{sha1('-'.join(sorted(everywhere)))}-non_protected"
    spec = one({"key": {"files": ["crates/*/Cargo.lock"], "prefix": "p"}}, workspace=repo.path)
    assert spec.key == f"p-{sha1(repo.blob('crates/a/Cargo.lock'))}-non_protected"
    spec = one({"key": {"files": ["*.lock"], "prefix": "p"}}, workspace=repo.path)
    assert spec.key == f"p-{sha1(repo.blob('Cargo.lock'))}-non_protected"
    assert one({"key": {"files": ["*.nothing"], "prefix": "p"}}, workspace=repo.path).key == "p-default-non_protected"


def test_key_files_directories_and_submodule_paths_are_not_blobs(repo: Git):
    repo.commit({"deps/x.lock": "x\n"})
    assert one({"key": {"files": ["deps"], "prefix": "p"}}, workspace=repo.path).key == "p-default-non_protected"


def test_key_files_symlink_is_the_blob_of_its_target_text(repo: Git):
    repo.commit({"real.lock": "x\n"})
    (repo.path / "link.lock").symlink_to("real.lock")
    repo.commit({})
    spec = one({"key": {"files": ["link.lock"], "prefix": "p"}}, workspace=repo.path)
    assert spec.key == f"p-{sha1(repo.blob('link.lock'))}-non_protected"
    assert repo.blob("link.lock") != repo.blob("real.lock")


def test_key_files_outside_git_hashes_contents_as_git_would(tmp_path: Path, repo: Git):
    repo.commit({"yarn.lock": "v1\n", "sub/go.sum": "g\n"})
    in_git = one({"key": {"files": ["yarn.lock", "**/go.sum"], "prefix": "p"}}, workspace=repo.path).key
    plain = tmp_path / "plain"
    (plain / "sub").mkdir(parents=True)
    (plain / "yarn.lock").write_text("v1\n")
    (plain / "sub" / "go.sum").write_text("g\n")
    specs, warnings = resolve([{"key": {"files": ["yarn.lock", "**/go.sum"], "prefix": "p"}, "paths": ["a"]}],
                              workspace=plain)
    assert specs[0].key == in_git
    assert any("not a git checkout" in w for w in warnings)


def test_key_files_outside_git_finds_only_what_a_git_tree_could_hold(tmp_path: Path):
    outside = tmp_path / "outside.lock"
    outside.write_text("secret\n")
    work = tmp_path / "work"
    (work / "real").mkdir(parents=True)
    (work / "real" / "a.lock").write_text("a\n")
    (work / "via").symlink_to(tmp_path)  # a link to a directory: git stores the link, not a path through it
    (work / "link.lock").symlink_to(outside)
    for path in ("../outside.lock", "via/outside.lock", "./real/a.lock", "real//a.lock", "real"):
        spec = one({"key": {"files": [path], "prefix": "p"}}, workspace=work)
        assert spec.key == "p-default-non_protected", path
    link = one({"key": {"files": ["link.lock"], "prefix": "p"}}, workspace=work).key
    text = str(outside).encode()
    link_blob = hashlib.sha1(b"blob %d" % len(text) + bytes(1) + text).hexdigest()  # a link's blob: its target
    assert link == f"p-{sha1(link_blob)}-non_protected"
    assert one({"key": {"files": ["real/a.lock"], "prefix": "p"}}, workspace=work).key != "p-default-non_protected"


def test_a_directory_inside_some_other_repository_is_no_checkout(repo: Git):
    repo.commit({"inner/yarn.lock": "v1\n", "yarn.lock": "outer\n"})
    specs, warnings = resolve([{"key": {"files": ["yarn.lock"], "prefix": "p"}, "paths": ["a"]}],
                              workspace=repo.path / "inner")
    assert specs[0].key == f"p-{sha1(repo.blob('inner/yarn.lock'))}-non_protected"
    assert any("not a git checkout" in w for w in warnings)


def test_key_files_commits_hashes_the_last_commits(repo: Git):
    first = repo.commit({"yarn.lock": "v1\n"})
    spec = one({"key": {"files_commits": ["yarn.lock"], "prefix": "p"}}, workspace=repo.path)
    assert spec.key == f"p-{sha1(first)}-non_protected"
    repo.commit({"README": "unrelated\n"})
    assert one({"key": {"files_commits": ["yarn.lock"], "prefix": "p"}}, workspace=repo.path).key == spec.key
    second = repo.commit({"yarn.lock": "v2\n", "go.sum": "g\n"})
    repo.commit({"yarn.lock": "v1\n"})  # reverted content, but a new commit: a new key
    third = repo("rev-parse", "HEAD")
    spec = one({"key": {"files_commits": ["yarn.lock", "go.sum"], "prefix": "p"}}, workspace=repo.path)
    assert spec.key == f"p-{sha1('-'.join(sorted([third, second])))}-non_protected"


def test_key_files_commits_needs_git(tmp_path: Path):
    (tmp_path / "yarn.lock").write_text("v1\n")
    specs, warnings = resolve([{"key": {"files_commits": ["yarn.lock"]}, "paths": ["a"]}], workspace=tmp_path)
    assert specs[0].key == "0-default-non_protected"
    assert any("files_commits needs a git checkout" in w for w in warnings)


# -- expansion, object names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expanded"), [
    ("$A-protected", "x-protected"), ("${A}b", "xb"), ("$Ab", ""), ("$UNDEFINED", ""), ("a$", "a$"),
    ("$$", ""), ("$1x", "x"), ("${}z", "z"), ("${A", "A"), ("$ z", "$ z"), ("$\u00e9", "$\u00e9"),
    ("no dollars", "no dollars"), ("$A$A", "xx"),
])
def test_go_expand_is_os_expand(text, expanded):
    assert go_expand(text, {"A": "x"}) == expanded


def test_cache_object_name_hashes_the_key_and_keeps_repositories_apart():
    name = cache_object_name("group/project", "../../etc/passwd-protected")
    digest = hashlib.sha256(b"../../etc/passwd-protected").hexdigest()
    assert name.startswith("caches/group-project-") and name.endswith(f"/{digest}.tar")
    assert name.count("/") == 2 and ".." not in name
    assert cache_object_name("group/project", "k") == cache_object_name("group/project", "k")
    assert cache_object_name("group/project", "k") != cache_object_name("group/project", "k2")
    # one slug ("a-b-c"), two repositories
    assert cache_object_name("a/b-c", "k") != cache_object_name("a-b/c", "k")
