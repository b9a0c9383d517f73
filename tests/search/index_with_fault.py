"""``pir-clip ARGS`` with a fault injected by ``PIR_CLIP_TEST_FAULT`` (for the resume and rank tests):

- ``kill-after-shards:N``: SIGKILL this process while it writes shard N+1, after half of its temporary
  file is on disk (as a crash mid-write leaves it);
- ``raise-on-rank:R``: rank R raises while embedding.
"""
import os
import signal
import sys

from pir_clip.search import build, shards

FAULT = os.environ.get("PIR_CLIP_TEST_FAULT", "")

if FAULT.startswith("kill-after-shards:"):
    allowed = int(FAULT.split(":")[1])
    written = []
    original = shards.write_shard

    def write_shard(path, table, settings):
        if len(written) == allowed:
            tmp = os.path.join(os.path.dirname(path), shards.TEMP_PREFIX + os.path.basename(path))
            with open(tmp, "wb") as f:
                f.write(b"PAR1" + b"\0" * 100)  # the first bytes of a Parquet file, and no more
                f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        written.append(path)
        original(path, table, settings)

    shards.write_shard = write_shard
elif FAULT.startswith("raise-on-rank:"):
    if int(os.environ.get("RANK", "0")) == int(FAULT.split(":")[1]):
        def failing_embed(*args, **kwargs):
            raise RuntimeError("injected failure while embedding")
        build._embed_slice = failing_embed

if __name__ == "__main__":
    from pir_clip.cli import main
    sys.exit(main(sys.argv[1:]))
