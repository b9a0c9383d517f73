"""A failing rank ends the whole job: no rank is left waiting in a collective for a peer that is gone.

Under DDP every rank meets the others in all-reduce and barriers; when one rank raises, the others would
wait in their next collective until the process group times out (10 to 30 minutes), or for ever where no
launcher kills them. So:

* the failing rank prints its error (a traceback for a bug; one ``error:`` line for a data or argument
  problem), records its rank under :data:`FAILED_KEY` in the job's rendezvous store, and leaves at once
  (``os._exit``: interpreter shutdown could block on unfinished collectives);
* every rank runs :func:`watch_for_failed_ranks`, a daemon thread that polls that key once a second and
  ends its own process, non-zero, with a line naming the failed rank.

The store is the one ``init_process_group`` rendezvoused through (torchrun's agent store, or the TCPStore
of ``env://``), so this works on every backend and launcher. ``PIR_CLIP_FAIL_AT_STEP=RANK:STEP`` makes a
rank raise at a given global step, to test all of this.
"""
import logging
import os
import sys
import threading
from typing import NoReturn, Optional

import torch.distributed as dist

FAILED_KEY = "pir_clip/failed_rank"
FAIL_AT_STEP_ENV = "PIR_CLIP_FAIL_AT_STEP"
_POLL_SECONDS = 1.0
_job_finished = threading.Event()


class InjectedFailure(RuntimeError):
    """Raised on purpose by ``PIR_CLIP_FAIL_AT_STEP`` (tests of the failure path)."""


def _store():
    try:
        return dist.distributed_c10d._get_default_store()
    except (RuntimeError, AttributeError, ValueError):
        return None


def watch_for_failed_ranks(args) -> None:
    """Starts the daemon thread that ends this rank when another rank has failed (distributed runs only)."""
    store = _store() if args.distributed else None
    if store is None:
        return

    def watch():
        while not _job_finished.wait(_POLL_SECONDS):
            try:
                failed = store.get(FAILED_KEY).decode() if store.check([FAILED_KEY]) else None
            except Exception:  # the store went away: its host ended, so the job is over one way or another
                failed = "the rendezvous store's host" if not _job_finished.is_set() else None
            if failed is not None and not _job_finished.is_set():
                _exit(1, f"Stopping rank {args.rank}: rank {failed} failed (its error is printed above/in its log).")
            if failed is not None:
                return

    threading.Thread(target=watch, name="pir-clip-failed-rank-watch", daemon=True).start()


def other_rank_failed(args) -> Optional[str]:
    """The rank recorded as failed by another process, if any (a collective's error on this rank is then only
    the echo of that failure)."""
    store = _store() if args.distributed else None
    try:
        return store.get(FAILED_KEY).decode() if store is not None and store.check([FAILED_KEY]) else None
    except Exception:
        return None


def end_job(args, exit_code: int) -> int:
    """Called after the error was printed. Single process: returns ``exit_code``. Distributed: records this
    rank's failure for the others and leaves at once with ``exit_code``."""
    if not getattr(args, "distributed", False):
        return exit_code
    store = _store()
    if store is not None:
        try:
            if not store.check([FAILED_KEY]):
                store.set(FAILED_KEY, str(args.rank))
        except Exception:
            pass  # the store is gone: the other ranks' collectives fail or their watch ends them
    _exit(exit_code, None)


def finish_job(args) -> None:
    """After a successful run: stop watching, then leave the process group together (two barriers, so no rank
    tears the rendezvous store down while another still polls it)."""
    if not getattr(args, "distributed", False) or not dist.is_initialized():
        return
    dist.barrier()
    _job_finished.set()
    dist.barrier()
    dist.destroy_process_group()


def raise_if_injected(rank: int, step: int) -> None:
    """``PIR_CLIP_FAIL_AT_STEP=RANK:STEP``: raise on that rank when it reaches that global step."""
    spec = os.environ.get(FAIL_AT_STEP_ENV)
    if spec and spec == f"{rank}:{step}":
        raise InjectedFailure(f"{FAIL_AT_STEP_ENV}={spec}: rank {rank} fails at step {step} on purpose")


def _exit(exit_code: int, message: Optional[str]) -> NoReturn:
    if message:
        logging.error(message)
    for handler in logging.getLogger().handlers:  # os._exit skips every cleanup: flush the logs first
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
