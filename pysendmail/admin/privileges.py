"""Whom an admin command runs as: the spool's owner, and dropping root to it.

Contract:   ``spool_owner(cfg)`` gives (uid, gid, name) of the daemon's
            user for a spool root creates (config.daemon_user);
            ``drop_privileges(cfg)``, as root, becomes the user owning the
            spool directory (nothing when not root, when the spool does
            not exist yet, or when root owns it); ConfigError when the
            spool path is not a directory.
Security:   the spool is looked at with lstat, never stat: a link planted
            by whoever owns the spool's parent would choose whom root
            becomes.  Used by every command that touches the queue (cli,
            routecmd) or writes files the daemon reads (configcmd, dkimcmd).
See also:   admin/cli.py; pysendmail(8).
"""

from __future__ import annotations

import os
import pwd
import stat

from pysendmail.core import config, errors


def spool_owner(cfg: config.Config) -> tuple[int, int, str]:
    """(uid, gid, name) of the daemon's user for a spool created by root (config.daemon_user)."""
    return config.daemon_user(cfg)


def drop_privileges(cfg: config.Config) -> None:
    """As root, become the spool's owner before touching the queue."""
    if os.geteuid() != 0:
        return
    try:
        st = os.lstat(cfg.spool_path)
    except OSError:
        return
    if not stat.S_ISDIR(st.st_mode):
        # Never os.stat: a link planted by whoever owns the spool's parent
        # would choose whom root becomes, or keep root root in a directory
        # that user picked.
        raise errors.ConfigError(f"spool {cfg.spool_path} is not a directory (a symlink is refused)")
    if st.st_uid == 0:
        return
    entry = pwd.getpwuid(st.st_uid)
    os.initgroups(entry.pw_name, entry.pw_gid)
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
