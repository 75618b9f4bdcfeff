"""Python side of benches/blobs.rs (run with the test venv's python).

    blob_bench.py generate DIR --size BYTES --count K [--seed N]
        write K files of random bytes (the blobs), DIR/blob-NNN.bin
    blob_bench.py run PORT --work DIR --manifest FILE [--downloads N]
                  [--cache-dir DIR] [--pids NAME=PID,...]
        with a real ZODB client (ClientStorage, own non-shared blob_dir):
        upload, one blob per transaction, then N download passes, each
        with a new ClientStorage and a new, empty blob_dir
    blob_bench.py digest-dir BLOB_DIR
        the SHA-256 of every *.blob file under a storage's blob dir

Every subcommand prints one JSON object on its last line of stdout.

Uploads: every source file is hard-linked into a staging dir and handed
to a Blob with consumeFile before the clock starts (renames on one file
system, no copy), so that only the commits are timed: per transaction
`root[key] = blob; transaction.commit()`. ClientStorage then streams the
file (storeBlobStart, 59,000-byte storeBlobChunks, storeBlobEnd) and
votes. Each commit is split into three parts:

  send    from commit() to the answer of a `ping` sent just before the
          vote: the server (or zeoraid) has received every chunk of the
          blob (ZEO's messages are handled in order);
  vote    the `vote` call: a ZEO server moves its temp file; zeoraid
          streams its spool file to every backend and waits for their
          votes;
  finish  tpc_finish and whatever ZODB does after it.

Downloads: for each blob `blob.open('r')` (ClientStorage.loadBlob, the
server streams receiveBlobStart/Chunk/Stop into the client's blob dir)
and a read to the end in 1 MiB chunks, timed over the whole pass. The
files the client ended up with are hashed afterwards, not timed, and
zeoraid's blob cache counters read from `server_status` (none for a ZEO
server).
`os.sync()` runs before every timed phase so that the previous phase's
write-back does not land in it.

Every timed phase also reports the CPU seconds (user + system) spent in
it by the client process and by the processes given with --pids (the
servers, zeoraid), read from /proc.
"""

import argparse
import hashlib
import json
import logging
import os
import random
import shutil
import stat
import sys
import tempfile
import time

import transaction
import ZODB
import ZODB.blob
from ZEO.ClientStorage import ClientStorage

CHUNK = 1 << 20


def file_digest(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


def remove_tree(path):
    """rmtree that also gets through read-only files and dirs (ZODB
    makes committed blob files read-only)."""
    def retry(function, name, _):
        os.chmod(os.path.dirname(name), stat.S_IRWXU)
        if os.path.isdir(name):
            os.chmod(name, stat.S_IRWXU)
        function(name)
    if os.path.exists(path):
        shutil.rmtree(path, onerror=retry)


def generate(args):
    os.makedirs(args.dir, exist_ok=True)
    rng = random.Random(args.seed)
    started = time.perf_counter()
    files, digests = [], []
    for number in range(args.count):
        path = os.path.join(args.dir, 'blob-%03d.bin' % number)
        digest = hashlib.sha256()
        with open(path, 'wb') as f:
            left = args.size
            while left:
                chunk = rng.randbytes(min(CHUNK, left))
                f.write(chunk)
                digest.update(chunk)
                left -= len(chunk)
        files.append(path)
        digests.append(digest.hexdigest())
    result = {
        'files': files,
        'sha256': digests,
        'size': args.size,
        'bytes': args.size * args.count,
        'seconds': time.perf_counter() - started,
    }
    print(json.dumps(result))


def client(port, blob_dir):
    return ClientStorage(('127.0.0.1', port), storage='1', wait=True,
                         wait_timeout=30, blob_dir=blob_dir)


def key(number):
    return 'blob-%03d' % number


class CpuClock:
    """CPU seconds (user + system) of this process and of other processes
    given as {name: pid}, read from /proc, between start() and stop()."""

    def __init__(self, pids):
        self.pids = pids
        self.ticks = os.sysconf('SC_CLK_TCK')

    def read(self):
        times = {'client': time.process_time()}
        for name, pid in self.pids.items():
            try:
                with open(f'/proc/{pid}/stat') as f:
                    # After the command in parentheses: utime, stime are
                    # fields 14 and 15 of the line, 12 and 13 after it.
                    fields = f.read().rsplit(')', 1)[1].split()
                times[name] = (int(fields[11]) + int(fields[12])) / self.ticks
            except (OSError, IndexError, ValueError):
                times[name] = None
        return times

    def start(self):
        self.started = self.read()

    def stop(self):
        now = self.read()
        return {name: (None if now[name] is None or self.started[name] is None
                       else now[name] - self.started[name])
                for name in now}


def upload(port, work, files, clock):
    """Commits every file as a blob, one per transaction. Returns the
    timing dict."""
    staging = os.path.join(work, 'staging')
    os.makedirs(staging)
    # An unattached Blob's uncommitted file goes to tempfile.gettempdir():
    # keep it on this file system so that consumeFile and storeBlob rename.
    tempfile.tempdir = staging
    blobs = []
    for number, source in enumerate(files):
        staged = os.path.join(staging, 'staged-%03d' % number)
        os.link(source, staged)
        blob = ZODB.blob.Blob()
        blob.consumeFile(staged)
        blobs.append(blob)

    storage = client(port, os.path.join(work, 'upload-blobs'))
    marks = {}
    vote, finish = storage.tpc_vote, storage.tpc_finish

    def timed_vote(txn):
        marks['vote'] = time.perf_counter()
        storage._call('ping')
        marks['received'] = time.perf_counter()
        result = vote(txn)
        marks['voted'] = time.perf_counter()
        return result

    def timed_finish(*args, **kw):
        result = finish(*args, **kw)
        marks['finished'] = time.perf_counter()
        return result

    # Before the DB exists: its MVCC adapter copies these methods.
    storage.tpc_vote = timed_vote
    storage.tpc_finish = timed_finish
    db = ZODB.DB(storage)
    conn = db.open()
    root = conn.root()
    transaction.commit()  # the root object, if new
    commits = []
    os.sync()
    clock.start()
    started = time.perf_counter()
    for number, blob in enumerate(blobs):
        marks.clear()
        begun = time.perf_counter()
        root[key(number)] = blob
        transaction.commit()
        ended = time.perf_counter()
        commits.append({
            'seconds': ended - begun,
            'send': marks['received'] - begun,
            'vote': marks['voted'] - marks['received'],
            'finish': ended - marks['voted'],
        })
    seconds = time.perf_counter() - started
    cpu = clock.stop()
    conn.close()
    db.close()
    tempfile.tempdir = None
    remove_tree(staging)
    remove_tree(os.path.join(work, 'upload-blobs'))

    def total(part):
        return sum(c[part] for c in commits)
    return {
        'seconds': seconds,
        'send': total('send'),
        'vote': total('vote'),
        'finish': total('finish'),
        'slowest_commit': max(c['seconds'] for c in commits),
        'fastest_commit': min(c['seconds'] for c in commits),
        'cpu': cpu,
    }


def cache_contents(cache_dir):
    """(files, bytes) of the finished *.blob files under `cache_dir`."""
    files = size = 0
    if cache_dir and os.path.isdir(cache_dir):
        for directory, _, names in os.walk(cache_dir):
            for name in names:
                if name.endswith('.blob') and not name.startswith('.'):
                    files += 1
                    size += os.path.getsize(os.path.join(directory, name))
    return files, size


def download(port, work, count, number, cache_dir, clock):
    """One pass: a new client with an empty blob dir reads every blob."""
    blob_dir = os.path.join(work, 'download-%d' % number)
    storage = client(port, blob_dir)
    db = ZODB.DB(storage)
    conn = db.open()
    os.sync()
    clock.start()
    started = time.perf_counter()
    root = conn.root()
    size = 0
    per_blob = []
    for n in range(count):
        begun = time.perf_counter()
        with root[key(n)].open('r') as f:
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                size += len(chunk)
        per_blob.append(time.perf_counter() - begun)
    seconds = time.perf_counter() - started
    cpu = clock.stop()
    # Not timed: what the client got, hashed from its blob dir.
    digests = [file_digest(root[key(n)].committed()) for n in range(count)]
    # zeoraid's blob cache counters (a ZEO server has none).
    status = storage.server_status()
    counters = {name: status.get('blob-cache-' + name)
                for name in ('hits', 'fetches')}
    conn.close()
    db.close()
    remove_tree(blob_dir)
    files, cached = cache_contents(cache_dir)
    return {
        'seconds': seconds,
        'bytes': size,
        'sha256': digests,
        'slowest_blob': max(per_blob),
        'fastest_blob': min(per_blob),
        'cache_files': files,
        'cache_bytes': cached,
        'cache_hits': counters['hits'],
        'cache_fetches': counters['fetches'],
        'cpu': cpu,
    }


def run(args):
    with open(args.manifest) as f:
        manifest = json.load(f)
    os.makedirs(args.work, exist_ok=True)
    pids = {}
    for item in args.pids.split(',') if args.pids else ():
        name, pid = item.split('=')
        pids[name] = int(pid)
    clock = CpuClock(pids)
    result = {'upload': upload(args.port, args.work, manifest['files'],
                               clock)}
    result['downloads'] = [
        download(args.port, args.work, len(manifest['files']), number,
                 args.cache_dir, clock)
        for number in range(args.downloads)]
    print(json.dumps(result))


def digest_dir(args):
    digests = []
    size = 0
    for directory, _, names in os.walk(args.blob_dir):
        for name in names:
            if name.endswith('.blob'):
                path = os.path.join(directory, name)
                size += os.path.getsize(path)
                digests.append(file_digest(path))
    print(json.dumps({'sha256': sorted(digests), 'bytes': size}))


def main():
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest='command', required=True)
    p = commands.add_parser('generate')
    p.add_argument('dir')
    p.add_argument('--size', type=int, required=True)
    p.add_argument('--count', type=int, required=True)
    p.add_argument('--seed', type=int, default=5)
    p.set_defaults(run=generate)
    p = commands.add_parser('run')
    p.add_argument('port', type=int)
    p.add_argument('--work', required=True)
    p.add_argument('--manifest', required=True)
    p.add_argument('--downloads', type=int, default=1)
    p.add_argument('--cache-dir')
    p.add_argument('--pids', help='NAME=PID,...: report their CPU time')
    p.set_defaults(run=run)
    p = commands.add_parser('digest-dir')
    p.add_argument('blob_dir')
    p.set_defaults(run=digest_dir)
    args = parser.parse_args()
    args.run(args)


if __name__ == '__main__':
    sys.exit(main())
