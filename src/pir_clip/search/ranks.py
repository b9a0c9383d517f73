"""Ranks of a ``torchrun`` indexing run: who does which slice, and rank 0 waiting for the others' shards.

``torchrun --nproc_per_node N -m pir_clip index ...`` (or multi-node, with the index folder on a shared file
system) starts N processes with ``RANK``/``WORLD_SIZE`` set. They agree on a run id and check that they see
the same work (a gloo process group, used only at the start), then each embeds a contiguous slice of the
pending items and writes its own shards. Rank 0 builds the index once every rank has reported ``done``.

Progress is reported through small marker files next to the shards rather than collective calls, so a
failure cannot leave rank 0 blocked in a collective: a rank that raises writes a ``failed`` marker with its
error (rank 0 stops at once, naming it); a rank that dies without a word (killed, out of memory, a lost
node) stops touching its heartbeat file, and rank 0 gives up after ``timeout`` seconds of silence. Either
way the shards already written are kept and the same command resumes the work.
"""
import datetime
import os
import time
import uuid
from dataclasses import dataclass
from typing import List, Optional, Sequence

HEARTBEAT_EVERY = 5.0
POLL_EVERY = 0.5


class RankFailedError(ValueError):
    """Another rank of a torchrun run failed or went silent (a ValueError so the command line reports it as
    one ``error:`` line: what to do is in the message)."""


def new_run_id() -> str:
    return f"{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def split_evenly(n: int, parts: int) -> List[range]:
    """``parts`` contiguous ranges covering ``range(n)``, sizes differing by at most one."""
    base, extra = divmod(n, parts)
    bounds = [0]
    for i in range(parts):
        bounds.append(bounds[-1] + base + (i < extra))
    return [range(bounds[i], bounds[i + 1]) for i in range(parts)]


@dataclass
class Ranks:
    rank: int
    world_size: int
    local_rank: int
    run_id: str
    marker_dir: str
    timeout: float
    _last_beat: float = 0.0

    @classmethod
    def from_env(cls, marker_dir: str, timeout: float = 600.0) -> "Ranks":
        """This process's place in the run (a single process without torchrun)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        run_id = new_run_id()
        if world_size > 1:
            import torch.distributed as dist
            if not dist.is_initialized():
                dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout))
            box = [run_id]
            dist.broadcast_object_list(box, src=0)
            run_id = box[0]
        os.makedirs(marker_dir, exist_ok=True)
        ranks = cls(rank, world_size, local_rank, run_id, marker_dir, timeout)
        if rank == 0:
            ranks.remove_stale_markers()
        ranks.heartbeat(force=True)
        return ranks

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def _marker(self, rank: int, what: str) -> str:
        return os.path.join(self.marker_dir, f".run-{self.run_id}-rank{rank}.{what}")

    def check_same(self, digest: str, what: str) -> None:
        """All ranks must see the same work (the same files, in the same state)."""
        if not self.distributed:
            return
        import torch.distributed as dist
        digests: List[Optional[str]] = [None] * self.world_size
        dist.all_gather_object(digests, digest)
        if len(set(digests)) > 1:
            raise RankFailedError(f"the ranks see different {what} ({', '.join(d[:8] for d in digests)}): every rank "
                                  "must read the same files (a shared file system), and the inputs must not change "
                                  "during the run")

    def heartbeat(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self._last_beat >= HEARTBEAT_EVERY:
            with open(self._marker(self.rank, "alive"), "w"):
                pass
            self._last_beat = now

    def finished(self) -> None:
        with open(self._marker(self.rank, "done"), "w") as f:
            f.write("done\n")

    def failed(self, error: BaseException) -> None:
        try:
            with open(self._marker(self.rank, "failed"), "w") as f:
                f.write(f"{type(error).__name__}: {error}\n")
        except OSError:
            pass

    def wait_for_others(self, ranks: Optional[Sequence[int]] = None) -> None:
        """Rank 0: returns once every rank is done; raises :class:`RankFailedError` when one failed or has
        been silent for ``timeout`` seconds."""
        pending = set(range(1, self.world_size) if ranks is None else ranks)
        started = time.time()
        while pending:
            for rank in sorted(pending):
                failed = self._marker(rank, "failed")
                if os.path.exists(failed):
                    with open(failed) as f:
                        message = f.read().strip()
                    raise RankFailedError(f"rank {rank} failed: {message}. The shards written so far are kept; run "
                                          "the same command again to resume")
                if os.path.exists(self._marker(rank, "done")):
                    pending.discard(rank)
                    continue
                alive = self._marker(rank, "alive")
                last = os.path.getmtime(alive) if os.path.exists(alive) else started
                if time.time() - max(last, started) > self.timeout:
                    raise RankFailedError(
                        f"rank {rank} has not reported progress for {self.timeout:.0f} s (killed, out of memory, or "
                        "its node was lost?). The shards written so far are kept; run the same command again to "
                        "resume (--rank-timeout sets this wait)")
            if pending:
                self.heartbeat()
                time.sleep(POLL_EVERY)

    def remove_stale_markers(self) -> None:
        """Markers of earlier runs (a run that was killed before it could clean up)."""
        for name in os.listdir(self.marker_dir):
            if name.startswith(".run-") and not name.startswith(f".run-{self.run_id}-"):
                try:
                    os.remove(os.path.join(self.marker_dir, name))
                except FileNotFoundError:
                    pass

    def cleanup(self) -> None:
        for rank in range(self.world_size):
            for what in ("alive", "done", "failed"):
                try:
                    os.remove(self._marker(rank, what))
                except FileNotFoundError:
                    pass

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()
