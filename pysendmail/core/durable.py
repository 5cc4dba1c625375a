"""Durable writes: the one way a whole file appears on disk (temp, fsync, rename, directory fsync).

Contract:   ``publish(tmp, final, data, ...)`` writes ``data`` to ``tmp``,
            gives it ``owner`` and ``mode``, fsyncs it, moves it to
            ``final`` and fsyncs the directory; ``replace=False`` moves it
            by link() instead of rename(), so an existing ``final`` is never
            overwritten (FileExistsError).  ``write_all`` writes every byte
            to a descriptor (os.write may write less); ``fsync_dir`` makes a
            directory's entries durable.  Used by queue files, Maildir
            deliveries, routes.json, setup's files, DKIM keys, the
            submitter's config cache; enqueue (layout.py) writes its
            incoming file in place with ``write_all`` (its protocol is the
            mode, not a rename).
Security:   the temporary file is created 0600 with O_NOFOLLOW and gets its
            owner and mode before it appears under its final name, so the
            file is never visible with wider rights than asked.
Crashes:    a reader sees nothing or the whole file; after return both the
            file and its name survive a crash.  A failing write (a full
            disk) removes the temporary file: no half-written file holds
            the space the retry needs.  A crash between the write and the
            rename leaves the temporary file, which each caller names so
            that it is overwritten or refused (``exclusive``) next time.
See also:   queue.py (the spool's state machine); qmail's "one atomic
            filesystem step"; rename(2), link(2), fsync(2).
"""

from __future__ import annotations

import os


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(path: str) -> None:
    """Make the entries of directory ``path`` (names created, renamed, removed) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: str, final: str, data: bytes, exclusive: bool = False, mode: int = 0o600,
            owner: tuple[int, int] | None = None, replace: bool = True, sync_dir: bool = True) -> None:
    """Write ``data`` to ``tmp``, fsync, rename (or link, ``replace=False``) it to ``final``, fsync the directory.

    The rename is the one atomic step: a reader sees nothing or the whole
    file, and after return both the file and its name survive a crash.
    ``sync_dir=False`` leaves the directory's sync to the caller, who
    syncs it once for several files (pickup's Batch) before relying on
    their names.
    ``exclusive`` refuses an existing ``tmp`` (Maildir's unique names,
    setup's per-process names).  The file is created 0600 and gets
    ``owner`` and ``mode`` before the rename, so it never appears with
    wider rights than asked.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(tmp, flags, 0o600)
    try:
        try:
            write_all(fd, data)
            if owner is not None:
                os.fchown(fd, *owner)
            if mode != 0o600:
                os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.rename(tmp, final)
        else:
            os.link(tmp, final)  # FileExistsError: never over an existing file
            os.unlink(tmp)
    except BaseException:
        # A full disk mid-write: no half-written file may stay behind
        # (it would hold the space the retry needs, or be read later).
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if sync_dir:
        fsync_dir(os.path.dirname(final) or ".")
