"""Zip archives that cannot write outside their folder: one rule for reading images from a zip and for
extracting one."""

from __future__ import annotations

import os
import re
import shutil
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path


class UnsafeArchiveError(ValueError):
    """A zip archive has an entry that would be written outside the folder it is extracted to."""


def check_archive(archive: zipfile.ZipFile, where: str | os.PathLike) -> None:
    """Raise UnsafeArchiveError, naming the entry, if any entry could be written outside its folder.

    ``load_images`` reads images straight from a zip, where such an entry could do no harm, and
    still rejects the whole archive rather than skip the entry: ``..`` and absolute names are what
    path-traversal archives are made of, and the same file given to ``prepare``, ``unzip`` or any other
    extractor could write outside its target. Skipping would quietly load a different dataset than the
    archive holds and hide the problem; one rule for reading and for extracting keeps the two in agreement.
    """
    for info in archive.infolist():
        problem = _unsafe(info)
        if problem:
            raise UnsafeArchiveError(f"unsafe zip archive {where}: its entry {info.filename!r} {problem}, so it "
                                     "could be written outside the folder it is extracted to; the archive is rejected")


def _unsafe(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symbolic link"
    if name.startswith(("/", "\\")):
        return "is an absolute path"
    if re.match(r"[A-Za-z]:", name):
        return "starts with a drive letter"
    if ".." in member_parts(name):
        return "has a '..' component"
    return None


def member_parts(name: str) -> tuple[str, ...]:
    """A zip entry's path components; backslashes count as separators, as they do on Windows."""
    return tuple(part for part in re.split(r"[/\\]", name) if part not in ("", "."))


def safe_extract(zip_path: str | os.PathLike, dest: str | os.PathLike, *,
                 keep: Callable[[tuple[str, ...]], bool] | None = None) -> list[Path]:
    """Extract a zip archive into ``dest`` and return the files written.

    Every entry is checked before anything is written: one that would land outside ``dest`` (a ``..``
    component, an absolute path, a drive letter, a symbolic link, or a path through a symbolic link
    already in ``dest``) raises UnsafeArchiveError naming it. ``keep``, given an entry's path
    components, chooses the entries to extract (default: all).
    """
    dest = Path(dest)
    with zipfile.ZipFile(zip_path) as archive:
        check_archive(archive, zip_path)
        root = dest.resolve()
        plan = []
        for info in archive.infolist():
            parts = member_parts(info.filename)
            if parts and (keep is None or keep(parts)):
                plan.append((info, dest.joinpath(*parts)))
        for info, target in plan:
            if not target.resolve().is_relative_to(root):
                raise UnsafeArchiveError(f"unsafe zip archive {zip_path}: its entry {info.filename!r} would be "
                                         f"written to {target.resolve()}, outside {root}; the archive is rejected")
        written = []
        for info, target in plan:
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            written.append(target)
    return written
