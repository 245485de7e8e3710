"""APScheduler started in the host only, and stopped when this process stops hosting (docs: howto/jobs)."""
# ruff: noqa: ANN001, ANN201, D103, INP001, PLW0603, T201 - a documentation example, shown from line 6 on

from __future__ import annotations

import threading

from apscheduler.schedulers.background import BackgroundScheduler

from ipchannel import Channel

ran = threading.Event()


def send_reminder_emails():
    print("sending reminders")
    ran.set()


jobs = Channel("scheduler", lambda _: None)  # only elects a host: nobody connects to it
scheduler = None


@jobs.on_elected
def start_scheduler(generation):
    global scheduler
    scheduler = BackgroundScheduler()
    scheduler.add_job(send_reminder_emails, "interval", seconds=0.5)  # minutes=1 in your app
    scheduler.start()  # its own thread: on_elected returns at once
    print(f"scheduler started (generation {generation})")


@jobs.on_demoted
def stop_scheduler(generation):
    scheduler.shutdown(wait=True)  # before the next host starts its own
    print(f"scheduler stopped (generation {generation})")


jobs.join()  # in a worker: at start-up; this process is alone here, so it hosts
ran.wait(5)  # the first run, 0.5 s after the start
jobs.close()  # stepping down (also at exit): the scheduler stops before the next host's starts
