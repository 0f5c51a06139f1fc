"""GitLab Runner's Git variables, as a job sets them: how its project directory is prepared.

=========================  ==========  ==========================================================
variable                   default     meaning (GitLab Runner's)
=========================  ==========  ==========================================================
``GIT_STRATEGY``           ``fetch``   ``clone``: a fresh clone for the job; ``fetch``: reuse a
                                       project directory an earlier job of the same repository and
                                       trust left on this host, bring it to the commit and clean it
                                       (a fresh clone when there is none); ``none``: no Git at
                                       all, the reused directory as it is (empty when there is none)
``GIT_CHECKOUT``           ``true``    ``false``: fetch but do not check out the commit (nor clean)
``GIT_CLEAN_FLAGS``        ``-ffdx``   the flags of ``git clean`` after the checkout; ``none``: no
                                       clean
``GIT_DEPTH``              (full)      a shallow history of that many commits; ``0``: full
``GIT_SUBMODULE_STRATEGY`` ``none``    ``normal``: the top-level submodules; ``recursive``: all
=========================  ==========  ==========================================================

``fetch`` is GitLab's default for new projects (its runner's default is the project's setting);
``GIT_DEPTH`` has none in the runner itself (GitLab's server default of 20 is a project setting
ci-queue does not have), so the history is complete unless a job asks. A value GitLab would not
accept is an error of the job, said in one line (``ValueError``), never a silent default.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass

STRATEGIES = ("clone", "fetch", "none")
SUBMODULE_STRATEGIES = ("none", "normal", "recursive")
DEFAULT_CLEAN_FLAGS = ("-ffdx",)
MAX_DEPTH = 1 << 30


@dataclass(frozen=True)
class GitOptions:
    """How a job's project directory is prepared (see the module's table)."""

    strategy: str = "fetch"
    checkout: bool = True
    clean_flags: tuple[str, ...] = DEFAULT_CLEAN_FLAGS  # () : no clean
    depth: int = 0  # 0: the whole history
    submodules: str = "none"

    @classmethod
    def from_variables(cls, variables: Mapping[str, str]) -> GitOptions:
        """The options a job's variables ask for; ``ValueError`` naming the variable otherwise.
        An empty value is the default (as an unset one)."""
        def get(name: str) -> str:
            return str(variables.get(name) or "").strip()

        strategy = get("GIT_STRATEGY").lower() or cls.strategy
        if strategy not in STRATEGIES:
            raise ValueError(f"GIT_STRATEGY {strategy!r} is not one of {', '.join(STRATEGIES)}")
        checkout = _boolean("GIT_CHECKOUT", get("GIT_CHECKOUT"), default=True)
        flags = get("GIT_CLEAN_FLAGS")
        try:
            clean = () if flags.lower() == "none" else tuple(shlex.split(flags)) if flags else DEFAULT_CLEAN_FLAGS
        except ValueError as exc:
            raise ValueError(f"GIT_CLEAN_FLAGS {flags!r}: {exc}") from None
        depth_text = get("GIT_DEPTH") or "0"
        if not depth_text.isdigit() or int(depth_text) > MAX_DEPTH:
            raise ValueError(f"GIT_DEPTH {depth_text!r} is not a number of commits (0: the whole history)")
        submodules = get("GIT_SUBMODULE_STRATEGY").lower() or cls.submodules
        if submodules not in SUBMODULE_STRATEGIES:
            raise ValueError(f"GIT_SUBMODULE_STRATEGY {submodules!r} is not one of {', '.join(SUBMODULE_STRATEGIES)}")
        return cls(strategy=strategy, checkout=checkout, clean_flags=clean, depth=int(depth_text),
                   submodules=submodules)

    @property
    def reuses(self) -> bool:
        """Whether the job takes a project directory another job left (``fetch``, ``none``)."""
        return self.strategy != "clone"


def _boolean(name: str, value: str, *, default: bool) -> bool:
    if not value:
        return default
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(f"{name} {value!r} is not true or false")
