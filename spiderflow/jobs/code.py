"""Project code for the scrapyd API: the spiders of a script, the script in an egg, ``git pull``.

A scrapyd *spider* is a Handler class here: :func:`spiders` finds the ``BaseHandler``
subclasses a script defines by parsing it with :mod:`ast` (nothing is run).
``addversion.json`` sends an egg (a zip) or the script itself; :func:`script_from_upload`
takes the one project script out of it. ``pullcode.json`` runs ``git pull`` in the
``projects_dir`` checkout (:func:`git_pull`: an argument list, a timeout, no prompt).
"""

from __future__ import annotations

import ast
import io
import os
import posixpath
import subprocess
import zipfile

from ..exceptions import ConfigError

#: the largest script taken out of an egg (uncompressed), and the most members looked at
MAX_SCRIPT_BYTES = 8 * 1024 * 1024
MAX_MEMBERS = 10_000
GIT_TIMEOUT = 120.0


def spiders(script: str) -> list[str]:
    """The names of the ``BaseHandler`` subclasses *script* defines at its top level, sorted
    (``[]`` for a script that does not parse). A class counts when a base is named
    ``BaseHandler`` (``spiderflow.BaseHandler`` too) or is such a class defined before it."""
    try:
        tree = ast.parse(script)
    except (SyntaxError, ValueError):
        return []
    found: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(_base_name(b) in ("BaseHandler", *found) for b in node.bases):
            found.append(node.name)
    return sorted(found)


def _base_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def check_script(script: str) -> list[str]:
    """The spiders of *script*; ConfigError if it does not parse or defines none."""
    try:
        ast.parse(script)
    except SyntaxError as exc:
        raise ConfigError(f"the script does not parse: {exc.msg} (line {exc.lineno})") from None
    except ValueError as exc:
        raise ConfigError(f"the script does not parse: {exc}") from None
    found = spiders(script)
    if not found:
        raise ConfigError("the script defines no BaseHandler subclass (class Handler(BaseHandler))")
    return found


def script_from_upload(data: bytes, project: str) -> str:
    """The project script in an upload: the text itself, or from a zip (an egg) the single
    ``.py`` that defines a BaseHandler subclass (several: the one named after *project*)."""
    if not zipfile.is_zipfile(io.BytesIO(data)):
        try:
            script = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ConfigError("egg is neither a ZIP file nor a UTF-8 Python script "
                              "(if using curl, use egg=@path not egg=path)") from None
        check_script(script)
        return script
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError) as exc:
        raise ConfigError(f"egg is not a readable ZIP file: {exc}") from None
    with archive:
        members = [m for m in archive.infolist()[:MAX_MEMBERS]
                   if not m.is_dir() and m.filename.endswith(".py")]
        candidates: list[tuple[str, str]] = []
        for member in members:
            if member.file_size > MAX_SCRIPT_BYTES:
                continue
            try:
                with archive.open(member) as fh:
                    raw = fh.read(MAX_SCRIPT_BYTES + 1)
            except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError):
                continue
            if len(raw) > MAX_SCRIPT_BYTES:
                continue
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError:
                continue
            if spiders(text):
                candidates.append((member.filename, text))
    if len(candidates) == 1:
        return candidates[0][1]
    if not candidates:
        raise ConfigError("the egg holds no project script (a .py file defining a BaseHandler subclass)")
    named = [text for name, text in candidates if posixpath.basename(name) == f"{project}.py"]
    if len(named) == 1:
        return named[0]
    names = ", ".join(sorted(name for name, _ in candidates))
    raise ConfigError(f"the egg holds several project scripts ({names}); name the one to use {project}.py")


# -- git -------------------------------------------------------------------------------------------

def _git(directory: str, *args: str, timeout: float = GIT_TIMEOUT) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "LC_ALL": "C"}
    try:
        done = subprocess.run(["git", "-C", directory, *args], capture_output=True, text=True, timeout=timeout,
                              env=env, stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError:
        raise ConfigError("git is not installed (pullcode.json needs it)") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"git {args[0]} in {directory!r} did not finish within {timeout:g} s") from None
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise ConfigError(f"git {args[0]} in {directory!r} failed: {why[-1] if why else f'exit {done.returncode}'}")
    return done.stdout


def git_pull(directory: str | None, timeout: float = GIT_TIMEOUT) -> tuple[str, str]:
    """``git pull --ff-only`` in *directory*; returns (the commit now checked out, git's output)."""
    if not directory:
        raise ConfigError("pullcode.json needs the projects_dir setting: a git checkout of project scripts")
    if not os.path.isdir(directory):
        raise ConfigError(f"projects_dir {directory!r} is not a directory")
    try:
        inside = _git(directory, "rev-parse", "--is-inside-work-tree", timeout=timeout).strip()
    except ConfigError:
        inside = ""
    if inside != "true":
        raise ConfigError(f"projects_dir {directory!r} is not a git repository")
    output = _git(directory, "pull", "--ff-only", timeout=timeout)
    commit = _git(directory, "rev-parse", "--short=12", "HEAD", timeout=timeout).strip()
    return commit, output


__all__ = ["check_script", "git_pull", "script_from_upload", "spiders"]
