"""How long the names and values that come from outside may be, and how large a job's
environment can be: one place, shared by the API, the webhook events and the workers.

Why these numbers:

- **Refs**: a branch or tag name is at most 255 bytes (GitLab's limit for branch names; git
  stores a loose ref as a file, and one path component is at most NAME_MAX = 255 bytes on the
  usual file systems). For ``refs/heads/<name>`` and ``refs/tags/<name>`` the limit applies to
  ``<name>``; any other full ref (``refs/pull/1/head``) is at most 255 bytes whole.
- **Repository names** at most 512 characters, every path segment at most 255 (GitHub: 39 + 100;
  GitLab: 255 per path, groups nested up to 20 deep). **Clone URLs** at most 4096 characters
  (PATH_MAX; ``workers.checkout`` refuses longer ones anyway). **Pipeline paths** at most 255
  bytes (GitLab's ``ci_config_path``). **Variable names** at most 255 bytes (GitLab). **Commit
  messages** at most 64 KiB (they become ``CI_COMMIT_MESSAGE``; webhook messages are cut there).
- **Variables** reach a job as its environment, and the kernel refuses an ``execve`` (E2BIG)
  when one ``NAME=value`` string, NUL included, is longer than MAX_ARG_STRLEN (32 pages,
  128 KiB), or when all strings and their pointers exceed ARG_MAX (a quarter of the stack limit,
  2 MiB by default). Such a job can never start, so: the trigger refuses one variable over
  MAX_ARG_STRLEN and variables over ``MAX_TRIGGER_VARIABLES_BYTES`` together (a quarter of the
  usual ARG_MAX: the rest is for the predefined variables, the pipeline's and the job's), and a worker
  fails a job whose environment is still too large (set by the pipeline file) at once, as
  ``environment_too_large``, never as an infrastructure failure to retry.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

MAX_REF_BYTES = 255
MAX_REPO_NAME_LENGTH = 512
MAX_REPO_SEGMENT_LENGTH = 255
MAX_CLONE_URL_LENGTH = 4096
MAX_PIPELINE_PATH_BYTES = 255
MAX_VARIABLE_NAME_BYTES = 255
MAX_MESSAGE_BYTES = 64 * 1024  # a commit message (CI_COMMIT_MESSAGE): well under MAX_ARG_STRLEN
MAX_ARG_STRLEN = 32 * 4096  # Linux: one argument or environment string, its NUL included
DEFAULT_ARG_MAX = 2 * 1024 * 1024  # Linux with the default 8 MiB stack limit
MAX_TRIGGER_VARIABLES_BYTES = DEFAULT_ARG_MAX // 4  # 512 KiB
MAX_TRIGGER_INPUTS = 50  # `spec:inputs` values of a trigger (GitLab caps a file's inputs the same way)
MAX_TRIGGER_INPUTS_BYTES = 64 * 1024  # together, as JSON
POINTER_BYTES = 8  # each string also costs its pointer in envp
_SHORT_REF_PREFIXES = ("refs/heads/", "refs/tags/")


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def ref_bytes(ref: str) -> int:
    """The length that counts against ``MAX_REF_BYTES``: the branch or tag name of a full
    ``refs/heads/`` / ``refs/tags/`` ref, else the whole ref."""
    for prefix in _SHORT_REF_PREFIXES:
        if ref.startswith(prefix):
            return utf8_len(ref[len(prefix):])
    return utf8_len(ref)


def shown(value: object, limit: int = 40) -> str:
    """``value`` for an error message: its first ``limit`` characters, quoted, and how long it
    was when cut. An error never echoes a huge value whole."""
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def env_string_bytes(name: str, value: str) -> int:
    """What ``NAME=value`` costs as one environment string (its NUL included)."""
    return utf8_len(name) + 1 + utf8_len(value) + 1


def environment_bytes(env: Mapping[str, str]) -> int:
    """What an environment costs against ARG_MAX: every string and its pointer."""
    return sum(env_string_bytes(k, v) + POINTER_BYTES for k, v in env.items())


def arg_max() -> int:
    """This host's ARG_MAX (glibc derives it from the stack limit), or Linux's default."""
    try:
        value = os.sysconf("SC_ARG_MAX")
    except (ValueError, OSError):
        return DEFAULT_ARG_MAX
    return value if value > 0 else DEFAULT_ARG_MAX


def environment_problem(env: Mapping[str, str], budget: int) -> str | None:
    """Why ``env`` cannot be passed to a process (one line, names and sizes, never a value), or None.

    ``budget``: the bytes the environment may take (ARG_MAX less what the command line needs).
    """
    for name, value in env.items():
        size = env_string_bytes(name, value)
        if size > MAX_ARG_STRLEN:
            return (f"variable {shown(name, 60)} is {size} bytes as NAME=value; the kernel refuses an "
                    f"environment string over {MAX_ARG_STRLEN} bytes (MAX_ARG_STRLEN)")
    total = environment_bytes(env)
    if total > budget:
        largest = sorted(env, key=lambda k: env_string_bytes(k, env[k]), reverse=True)[:3]
        names = ", ".join(shown(name, 40) for name in largest)
        return (f"the environment is {total} bytes ({len(env)} variables; largest: {names}); "
                f"the kernel refuses more than {budget} bytes (ARG_MAX) for a process")
    return None
