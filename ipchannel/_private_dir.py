"""The one rule for a directory whose files ipchannel trusts: ours, a real directory, no one else may write.

The runtime directory (``_local.paths``) and a durable SharedDict's journal directory
(``_shareddict.journal_files``) both hold what a process acts on (host records, a state to
replay): whoever could write there, or swap the directory, could impersonate a host or rewrite
the state. Each caller raises its own error with ``problem``'s text.
"""

from __future__ import annotations

import os
import stat

__all__ = ["problem"]


def problem(st: os.stat_result) -> str:
    """Return why the directory ``st`` (its ``lstat``) is not private to us; "" if it is."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink, which could point anywhere"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != os.geteuid():
        return f"is owned by uid {st.st_uid}, not by you (uid {os.geteuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return ""
