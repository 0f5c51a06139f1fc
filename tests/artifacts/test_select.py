"""Choosing the files of ``artifacts:`` / ``cache:``: GitLab runner's globs, exclude, untracked,
and the trust boundary (nothing outside the project directory is ever collected)."""

from __future__ import annotations

import pytest

from ci_queue.pipeline.globs import compile_glob, compile_path_glob, expand_braces

# -- doublestar globs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("*.txt", "a.txt", True),
        ("*.txt", "d/a.txt", False),  # `*` stays inside one component
        ("**/*.o", "x.o", True),  # `**/` may be zero directories
        ("**/*.o", "a/b/x.o", True),
        ("**/*.o", "a/b/x.c", False),
        ("a/**", "a", True),  # a trailing `/**` takes the directory itself too
        ("a/**", "a/b/c", True),
        ("a/**", "ab", False),
        ("a**", "abc", True),  # `**` inside a component is `*`
        ("a**", "ab/c", False),
        ("**", "a/b", True),
        ("{a,b}/x", "b/x", True),
        ("{a,b}/x", "c/x", False),
        ("dist/**/*.js", "dist/app.js", True),
        ("dist/**/*.js", "dist/x/y/app.js", True),
        ("?.md", "a.md", True),
        ("?.md", "ab.md", False),
        ("[ab].c", "b.c", True),
        ("[!ab].c", "b.c", False),
        (".*", ".hidden", True),
    ],
)
def test_path_glob_matches_like_doublestar(pattern: str, path: str, expected: bool) -> None:
    assert (compile_path_glob(pattern).match(path) is not None) is expected


def test_changes_globs_keep_their_ruby_semantics() -> None:
    # `changes:` globs are Ruby's: `a**` crosses directories there; the artifact variant is separate
    assert compile_glob("a**").match("ab/c")
    assert not compile_path_glob("a**").match("ab/c")


def test_expand_braces() -> None:
    assert sorted(expand_braces("{a,b{c,d}}/x{1,2}")) == ["a/x1", "a/x2", "bc/x1", "bc/x2", "bd/x1", "bd/x2"]
    assert expand_braces("{a/x") == ["{a/x"]  # unbalanced: literal
    assert sorted(expand_braces("a{,b}")) == ["a", "ab"]
    with pytest.raises(ValueError, match="more than"):
        expand_braces("{a,b}" * 12)
