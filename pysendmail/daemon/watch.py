"""Names that changed in incoming/, from Linux inotify, so pickup need not list it.

Contract:   ``Watch.open(directory)`` returns a Watch, or None where inotify
            is unavailable (another kernel, a seccomp filter, the
            per-user limit reached): the caller then lists the directory
            as before.  ``fd`` is non-blocking, for the event loop;
            ``read()`` drains it and returns (names, overflowed): the
            entries created, moved in or changed in mode since the last
            read, and whether the kernel dropped events (its queue,
            fs.inotify.max_queued_events, was full), in which case only a
            listing of the directory can tell what is there.
Security:   names come from the kernel, not from users; a user can make
            many events (create, chmod), each costing one lstat in
            pickup, as many as the syscalls it makes.  Overflow falls
            back to the throttled listing.
Crashes:    nothing on disk; a new process starts with a full listing.
See also:   inotify(7); daemon/pickup.py Scanner.
"""

from __future__ import annotations

import ctypes
import os
import struct

IN_ATTRIB = 0x00000004  # the submitter's fchmod to 0640: the moment a file becomes ready
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name


class Watch:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def open(cls, directory: str) -> Watch | None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        except (OSError, AttributeError):
            return None
        if fd < 0:
            return None
        if libc.inotify_add_watch(fd, os.fsencode(directory), IN_ATTRIB | IN_MOVED_TO | IN_CREATE) < 0:
            os.close(fd)
            return None
        return cls(fd)

    def read(self) -> tuple[set[str], bool]:
        names: set[str] = set()
        overflow = False
        for _ in range(64):  # at most 64 reads of 64 KiB per call: the rest comes with the next callback
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not data:
                break
            pos = 0
            while pos + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
                pos += _EVENT.size
                raw = data[pos : pos + length].rstrip(b"\0")
                pos += length
                if mask & IN_Q_OVERFLOW:
                    overflow = True
                elif raw:
                    names.add(os.fsdecode(raw))
        return names, overflow

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
