"""quarantine/: what pickup refused, kept for the administrator within bounds.

Contract:   ``Quarantine(directory, bounds).add(path, name, now)`` moves
            incoming/<name> to quarantine/<name>.<time> (False when it
            cannot be moved: the caller decides) and then enforces the
            bounds: entries older than ``lifetime`` go, and while the
            directory holds more than ``max_entries`` entries or
            ``max_bytes`` bytes, the oldest entry of the uid holding the
            most (entries or bytes, whichever bound is exceeded) goes.
            ``summary(directory)`` gives (entries, bytes, oldest ctime)
            for ``pysendmail status``.  Never raises for the directory's
            contents; each removal is logged once.
Security:   every entry is owned by the user who planted it (a rename keeps
            the owner), so the owner is the unforgeable "who".  Evicting
            from the largest holder first means one user's flood removes
            that user's own entries, never the evidence another user's
            entries hold, until the other holds as much.  quarantine/ is
            0700, so a submitter cannot reach its entries to change their
            ctime (the age used here) or their size.
Crashes:    an entry is moved by one rename; removal is one unlink (or a
            recursive removal of a planted directory, which never follows
            links).  A crash at any point leaves entries that the next
            process's bounds judge again.
See also:   pysendmail.toml(5) spool.quarantine_*; Postfix's "corrupt"
            directory (which has no bounds: postsuper -d is manual there).
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from dataclasses import dataclass

from pysendmail.core import config, log


@dataclass(frozen=True)
class Bounds:
    max_entries: int = 1000
    max_bytes: int = 100 << 20
    lifetime: float = 30 * 86400.0

    @classmethod
    def from_config(cls, cfg: config.Config) -> Bounds:
        spool = cfg.spool
        return cls(spool.quarantine_max_entries, spool.quarantine_max_size, float(spool.quarantine_lifetime))


@dataclass
class _Entry:
    uid: int
    size: int
    when: float


class Quarantine:
    """The quarantine directory's index, loaded once per process and kept in step."""

    def __init__(self, directory: str, bounds: Bounds) -> None:
        self.directory = directory
        self.bounds = bounds
        self._index: dict[str, _Entry] | None = None

    def _load(self) -> dict[str, _Entry]:
        if self._index is None:
            index: dict[str, _Entry] = {}
            try:
                with os.scandir(self.directory) as it:
                    for item in it:
                        try:
                            st = item.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        index[item.name] = _Entry(st.st_uid, st.st_size, st.st_ctime)
            except OSError as exc:
                log.log(f"pickup: cannot read {self.directory}: {exc.strerror}")
            self._index = index
        return self._index

    def add(self, path: str, name: str, now: float | None = None) -> None:
        """Move ``path`` in as ``name``.<time>, then enforce the bounds; OSError when it cannot be moved."""
        now = time.time() if now is None else now
        index = self._load()
        target = f"{name}.{int(now)}"
        n = 0
        while target in index:  # the same name refused twice in one second
            n += 1
            target = f"{name}.{int(now)}.{n}"
        st = os.lstat(path)
        os.rename(path, os.path.join(self.directory, target))
        index[target] = _Entry(st.st_uid, st.st_size, now)
        self.enforce(now)

    def enforce(self, now: float | None = None) -> None:
        """Expire old entries, then evict until within both bounds."""
        now = time.time() if now is None else now
        index = self._load()
        for entry_name, entry in list(index.items()):
            if now - entry.when > self.bounds.lifetime:
                self._remove(entry_name, f"older than spool.quarantine_lifetime ({self.bounds.lifetime:.0f} s)")
        while index:
            total = sum(e.size for e in index.values())
            over_count = len(index) > self.bounds.max_entries
            if not over_count and total <= self.bounds.max_bytes:
                return
            usage: dict[int, int] = {}
            for e in index.values():
                usage[e.uid] = usage.get(e.uid, 0) + (1 if over_count else e.size)
            heaviest = max(usage, key=lambda uid: usage[uid])
            oldest = min((n for n, e in index.items() if e.uid == heaviest), key=lambda n: index[n].when)
            bound = (f"spool.quarantine_max_entries ({self.bounds.max_entries})" if over_count
                     else f"spool.quarantine_max_size ({self.bounds.max_bytes} bytes)")
            self._remove(oldest, f"over {bound}; uid {heaviest} holds the most")

    def _remove(self, entry_name: str, why: str) -> None:
        index = self._load()
        entry = index.pop(entry_name)
        path = os.path.join(self.directory, entry_name)
        try:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                shutil.rmtree(path)  # fd-based on Linux: never follows a link inside
            else:
                os.unlink(path)
        except FileNotFoundError:
            return  # removed by the administrator meanwhile
        except OSError as exc:
            log.log(f"pickup: cannot remove quarantine/{entry_name!r}: {exc.strerror}")
            return
        log.log(f"pickup: quarantine/{entry_name!r} (uid {entry.uid}, {entry.size} bytes) removed: {why}")


def summary(directory: str) -> tuple[int, int, float | None]:
    """(entries, bytes, oldest entry's ctime or None) of a quarantine directory."""
    count = size = 0
    oldest: float | None = None
    with os.scandir(directory) as it:
        for item in it:
            try:
                st = item.stat(follow_symlinks=False)
            except OSError:
                continue
            count += 1
            size += st.st_size
            oldest = st.st_ctime if oldest is None else min(oldest, st.st_ctime)
    return count, size, oldest
