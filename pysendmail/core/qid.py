"""Queue ids: unique without coordination, sortable by arrival.

Contract:   ``new_qid()`` returns 18 upper-case hex digits: 13 of the
            arrival time in microseconds, 5 from os.urandom.  Two
            submitters colliding need the same microsecond and the same
            20 random bits; O_EXCL at creation catches even that, and the
            caller draws again.  ``is_qid`` checks a name found in the spool.
See also:   Postfix's long queue ids (time-based, no counter file).
"""

from __future__ import annotations

import os
import time

QID_LEN = 18
_HEX = frozenset("0123456789ABCDEF")


def new_qid() -> str:
    micros = time.time_ns() // 1000
    return "%013X%05X" % (micros & 0xFFFFFFFFFFFFF, int.from_bytes(os.urandom(3), "big") & 0xFFFFF)


def is_qid(name: str) -> bool:
    return len(name) == QID_LEN and all(c in _HEX for c in name)
