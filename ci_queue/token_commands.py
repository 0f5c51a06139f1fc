"""``ci-queue token create | revoke``: scoped API tokens in the tokens file (``CIQ_TOKENS_FILE``).

They work on the file directly (run them where the file is, as its owner); the web app picks a
change up at its next request. ``create`` prints the new token once, on stdout alone (so
``TOKEN=$(ci-queue token create ...)`` works); the file keeps only its SHA-256
(``ci_queue.tokens``).
"""

from __future__ import annotations

from pathlib import Path

import click

from ci_queue.tokens import SCOPES, TokenFileError, create_token, parse_scopes, revoke_token


def _fail(message: str) -> click.ClickException:
    """One line on stderr, exit 1, as every ci-queue command fails."""
    from ci_queue.cli import CommandError

    return CommandError(message)


def _file(path: str | None) -> Path:
    """``--file``, else ``CIQ_TOKENS_FILE``; a usage error when neither says where."""
    if path:
        return Path(path)
    from ci_queue.settings import SettingsError, get_settings

    try:
        configured = get_settings().tokens_file
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    if not configured:
        raise click.UsageError("no tokens file: give --file PATH or set CIQ_TOKENS_FILE (the web app reads the same)")
    return Path(configured)


_FILE_OPTION = click.option("--file", "path", metavar="PATH", default=None,
                            help="The tokens file (default: CIQ_TOKENS_FILE); YAML, or JSON when it ends in .json.")


@click.group("token")
def token_group() -> None:
    """Scoped API tokens: create them, revoke them (the tokens file, CIQ_TOKENS_FILE)."""


@token_group.command("create")
@click.argument("name")
@click.option("--scopes", required=True, metavar="LIST",
              help=f"Comma-separated, some of: {', '.join(SCOPES)} (admin has every scope).")
@click.option("--repos", "repos", multiple=True, metavar="GLOBS",
              help="Limit the token to these repositories: comma-separated globs, e.g. 'octo/*' (repeatable).")
@_FILE_OPTION
def create_command(name: str, scopes: str, repos: tuple[str, ...], path: str | None) -> None:
    """Make a new random token NAME, print it once, and write its SHA-256 to the tokens file."""
    target = _file(path)
    globs = tuple(glob.strip() for text in repos for glob in text.split(",") if glob.strip())
    try:
        token = create_token(target, name, parse_scopes(scopes), globs)
    except ValueError as exc:  # an invalid entry, a name that exists, the file (TokenFileError)
        raise _fail(str(exc)) from None
    click.echo(token)
    limits = f", repositories {', '.join(globs)}" if globs else ""
    click.echo(f"token {name!r} (scopes {scopes}{limits}) added to {target}; only its SHA-256 is kept there: "
               "this is the only time the token is shown", err=True)


@token_group.command("revoke")
@click.argument("name")
@_FILE_OPTION
def revoke_command(name: str, path: str | None) -> None:
    """Remove the token NAME from the tokens file (refused from the web app's next request on)."""
    target = _file(path)
    try:
        removed = revoke_token(target, name)
    except TokenFileError as exc:
        raise _fail(str(exc)) from None
    if not removed:
        raise _fail(f"no token named {name!r} in {target}")
    click.echo(f"token {name!r} removed from {target}")
