"""One model, one thread: requests wait in a queue and the worker runs them in turn, each job's events going
back to the HTTP thread that waits for them (the text as it is generated, then the audio, then the end).

    worker = Worker()
    job = worker.submit(lambda: reply_events(chat, request))
    for event in job:           # ("text", piece), ("audio", ...), ...; an error arrives as APIError raised here
        ...
    job.cancel()                # the client went away: the worker stops at the next event
"""
from __future__ import annotations

import queue
import sys
import threading
import traceback
from typing import Callable, Iterator

from omni.errors import UserError, one_line
from omni.infer.omni import ContextFull
from omni.serve.api import APIError

_END = object()


class Job:
    def __init__(self, run: Callable[[], Iterator]):
        self.run, self.events, self.cancelled = run, queue.Queue(), False

    def cancel(self) -> None:
        self.cancelled = True

    def __iter__(self):
        while (event := self.events.get()) is not _END:
            if isinstance(event, APIError):
                raise event
            yield event


def as_api_error(e: Exception) -> APIError:
    """A request's failure in the API's terms: bad input is a 4xx naming it, anything else a 500 (a bug: its
    traceback goes to the server's log)."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, ContextFull):
        return APIError(400, one_line(e), "messages", code="context_length_exceeded")
    if isinstance(e, UserError):
        return APIError(400, one_line(e), "messages")
    traceback.print_exc(file=sys.stderr)
    return APIError(500, f"the server failed on this request ({type(e).__name__}: {one_line(e)}); it goes on "
                         f"serving")


class Worker:
    def __init__(self):
        self.jobs: queue.Queue[Job] = queue.Queue()
        threading.Thread(target=self._loop, name="model", daemon=True).start()

    def submit(self, run: Callable[[], Iterator]) -> Job:
        job = Job(run)
        self.jobs.put(job)
        return job

    def waiting(self) -> int:
        return self.jobs.qsize()

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                if not job.cancelled:
                    for event in job.run():
                        job.events.put(event)
                        if job.cancelled:
                            break
            except Exception as e:   # the job's failure goes to its client; the worker goes on
                job.events.put(as_api_error(e))
            finally:
                job.events.put(_END)
