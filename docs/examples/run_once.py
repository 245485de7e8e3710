"""A job that runs in the host only, once per interval, whichever process hosts (docs: howto/jobs)."""
# ruff: noqa: ANN201, D103, INP001, T201 - a documentation example, shown from line 6 on

from __future__ import annotations

import threading

from ipchannel import run_on_host

ran = threading.Event()


def send_reminder_emails():
    print("sending reminders")
    ran.set()


# Its own channel "jobs": it only elects a host. A new host leaves the job alone for one interval
# (time_limit, default every) before its first run, so a run of the previous host cannot overlap.
job = run_on_host("jobs", send_reminder_emails, every=0.5)
ran.wait(5)  # this process is the only one here, so it hosts: the first run comes after 0.5 s
job.stop()  # no more runs in this process; waits for a run in progress
print(job.runs)
