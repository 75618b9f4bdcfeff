#!/usr/bin/env python
"""Blob scenarios: real ZEO servers with blob directories behind zeoraid,
real ZODB clients with their own (not shared) blob directories.

  store_and_load
        Two backends (one pickle, one msgpack, each a FileStorage with a
        blob dir). One client commits blobs of 0 B, 10 B, 100 kB and 5 MB
        (streamed: storeBlobStart/Chunk/End) and new revisions of two of
        them; a transaction storing a 1 MB blob is aborted (its spool file
        in zeoraid's state dir appears, then goes); a second client
        loads every revision through zeoraid (sendBlob, relayed from a
        backend) and gets the same bytes. zeoraid's state dir holds no blob
        spool file afterwards. With everything stopped: both backends'
        FileStorages hold the identical history and their blob dirs the
        identical blob files (same paths, same SHA-256).
  leftovers
        A blob spool file left in zeoraid's state dir (as by a crash) is
        removed when zeoraid starts.
  recover_undone
        As recover_empty, with `<filestorage blob-dir>` backends and undos
        of blob revisions (and of those undos, which re-create an undone
        blob) in the history: the recovery succeeds, every revision loads
        from b alone, the blob files are identical (the undos' blob records
        are copied as blob stores: no back-pointer, after the transaction's
        other records).
  recover_exact
        As recover_empty, with `<filestorage blob-dir>` backends, b's blob
        dir shared with zeoraid (`[[backend]] blob_dir`) and undos of blob
        revisions (and of those undos) in the history: the recovered b's
        history equals a's record for record, data_txn back-pointers
        included, and so do the blob files.
  large
        A 1 GiB blob stored and loaded back through zeoraid: the bytes
        match, zeoraid's peak RSS stays under 200 MiB, and with a 3 s call
        timeout and 1 s heartbeat both backends stay optimal through the
        longer transfers (a backend streaming a blob is alive).
  recover_empty
        Blobs committed through zeoraid; b loses its storage and blob dir
        (restarted empty, degraded) while more are committed; recovering b
        copies every transaction and blob file: every revision then loads
        from b alone, and a's and b's histories and blob files are
        identical.
  kill_mid_upload
        A 300 MB blob committed; while zeoraid replays it to the backends
        at vote (b's ZEO server has part of it in a temp file in its blob
        dir's tmp/), b is killed (-9): the commit succeeds, b is degraded
        (raid_details and zeoraid's log), a fresh client loads the blob
        from a with the same SHA-256, and no blob spool file is left.
  kill_mid_download
        A 300 MB blob committed; a fresh client loads it; while zeoraid
        fetches it into its blob cache (it logged `fetching a blob` with
        backend=NAME, and its `.part-*` file holds part of the blob), NAME
        is killed (-9): the load completes (from the other backend) with
        the same SHA-256, NAME is degraded, no part or spool file is left.
  temp_files
        Two writers, 150 blob transactions (0 B to 20 MB; about 20%
        aborted: on the client, after the blob reached zeoraid, after the
        backends voted; stale stores of a blob both write conflict), every
        revision loaded back by a third
        client: no temporary file left in zeoraid (`zeoraid-blob-*` in its
        state dir, `.part-*` in its blob cache). Then zeoraid is killed
        (-9) mid-upload (200 MB, its spool file part-written) and
        restarted, and again mid-download: after each restart no
        temporary file and both backends optimal; the clients reconnect, a
        commit and loads work, and both backends' histories and blob
        files are identical.
  cache
        Eight clients with empty blob caches load one 3 MB blob at the
        same moment: zeoraid fetches it from a backend once (server_status
        blob-cache-fetches 1, hits 7); three blobs cached; a pack empties
        the cache, and a later load fetches again.
  mixed_support
        Backend b's storage has no blob dir while a's has: b is degraded at
        start-up ("no blob support ..."), and recovering it fails with
        that reason.
  shared_dir
        `<filestorage blob-dir>` backends. Blobs committed without a
        shared dir; zeoraid restarted with `[server] blob_dir`: the dir is
        filled at start-up and equals backend a's blob dir (paths,
        SHA-256). A shared-blob-dir client commits and loads through it; a
        streamed client reads its blobs. zeoraid killed (-9) and a blob of
        that run removed from the dir: put back at the next start. A pack
        prunes the dir to equal a's again.
  backend_dirs
        `[[backend]] blob_dir` for a (blobs copied into a's blob dir and
        named with storeBlobShared), b streamed: after commits, an abort
        and a conflict, both backends' histories and blob files are
        identical, no copy is left in a's dir, and the copy journal is
        gone; a journaled copy left by a crash is removed at start-up.
  slow_reader
        A client reads a 100 MB blob slowly (its I/O thread pauses at every
        chunk) while another commits: the stream leaves room in the slow
        client's queue for invalidations, so it is not disconnected as a
        client that stopped reading; the bytes match.
  vote_differs
        Backend b cannot store blobs (a file where its oid directories must
        go): a blob commit goes through on a, b is degraded for answering
        vote differently, the blob loads back from a.

Options: --deadline S (the whole scenario; then everything is killed),
-v. The last line on success: `blob scenario NAME: ok (...)`.
"""

import argparse
import hashlib
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import raid_scenarios as rs  # noqa: E402
import zeoraid_testing as zt  # noqa: E402

import transaction  # noqa: E402
import ZODB  # noqa: E402
import ZODB.blob  # noqa: E402
import ZODB.Connection  # noqa: E402
import ZODB.utils  # noqa: E402
from ZEO.ClientStorage import ClientStorage  # noqa: E402
from ZODB.POSException import ConflictError  # noqa: E402

check = zt.check
SPOOL_PREFIX = 'zeoraid-blob-'
# zeoraid's blob cache: where it is by default, and its fetches in progress.
BLOB_CACHE = 'blob-cache'
PART_PREFIX = '.part-'
MB = 1_000_000
# A temp file seen holding this much of a large blob (but not all of it)
# shows a transfer under way: it has grown.
MID = 10 * MB


class Rig:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix='zeoraid-blobs-')
        self.backends = [
            zt.Backend(encoding='pickle',
                       directory=os.path.join(self.dir, 'a'),
                       blob_dir=os.path.join(self.dir, 'a', 'blobs')),
            zt.Backend(encoding='msgpack',
                       directory=os.path.join(self.dir, 'b'),
                       blob_dir=os.path.join(self.dir, 'b', 'blobs')),
        ]
        for backend in self.backends:
            backend.start()
        self.raid = zt.Zeoraid(
            [(name, backend, '1')
             for name, backend in zip('ab', self.backends)],
            workdir=os.path.join(self.dir, 'zeoraid'))
        self.dbs = []

    def db(self, name):
        storage = ClientStorage(self.raid.address, '1', wait_timeout=10,
                                blob_dir=os.path.join(self.dir, name))
        db = ZODB.DB(storage)
        self.dbs.append(db)
        return db

    def spool_files(self):
        return [f for f in os.listdir(self.raid.state_dir)
                if f.startswith(SPOOL_PREFIX)]

    def temp_files(self):
        """{path: size} of zeoraid's temporary files: blob spools in its
        state dir and fetches in progress (part files) in its blob cache."""
        found = files_in(self.raid.state_dir, SPOOL_PREFIX)
        found.update(files_in(os.path.join(self.raid.state_dir, BLOB_CACHE),
                              PART_PREFIX))
        return found

    def restart_raid(self):
        """Starts zeoraid again (after a crash) with the same work dir
        (config, state dir, log) and port, so that clients reconnect;
        returns once it serves (its port accepts connections before its
        start-up is done)."""
        self.raid.kill()
        # zt.Zeoraid takes a new free port at each start unless given one.
        self.raid._fixed_port = self.raid.port
        self.raid.start()
        rs.wait_serving(self.raid, 20, 'zeoraid restarted')

    def stop(self):
        for db in self.dbs:
            db.close()
        self.dbs = []
        self.raid.stop()
        zt.stop_backends(self.backends)

    def cleanup(self):
        """Stops everything and removes the work dir (gigabytes of blobs
        after the large scenarios; a failure prints zeoraid's log)."""
        try:
            self.stop()
        finally:
            self.raid.cleanup()
            shutil.rmtree(self.dir, ignore_errors=True)


def blob_files(root):
    """{path relative to the blob dir: SHA-256} of every blob file."""
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            if name.endswith('.blob'):
                path = os.path.join(directory, name)
                with open(path, 'rb') as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                found[os.path.relpath(path, root)] = digest
    return found


def files_in(directory, prefix=''):
    """{path: size} of the files in `directory` (not below) whose names
    start with `prefix`; none if it does not exist. Files that go away
    while listed are left out."""
    found = {}
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return found
    for name in names:
        if name.startswith(prefix):
            path = os.path.join(directory, name)
            try:
                found[path] = os.stat(path).st_size
            except FileNotFoundError:
                pass
    return found


def names(paths):
    """The file names of `paths`, for messages."""
    return ', '.join(sorted(os.path.basename(path) for path in paths))


def random_file(path, size):
    """Writes `size` random bytes to `path`; returns their SHA-256 (hex)."""
    digest = hashlib.sha256()
    with open(path, 'wb') as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            f.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


class Background(threading.Thread):
    """Runs `function` in a daemon thread; `result()` waits for it and
    returns its value or raises its exception."""

    def __init__(self, name, function):
        super().__init__(name=name, daemon=True)
        self.function = function
        self.value = None
        self.error = None

    def run(self):
        try:
            self.value = self.function()
        except BaseException as error:
            self.error = error

    def result(self, timeout):
        self.join(timeout)
        check(not self.is_alive(), f'{self.name} still running after '
                                   f'{timeout} s')
        if self.error is not None:
            raise self.error
        return self.value


def wait_while_running(thread, predicate, timeout, what):
    """zt.wait_until(predicate), failing at once if `thread` ended first
    (the moment to act on was missed)."""
    def ready():
        result = predicate()
        if not result and not thread.is_alive():
            thread.join()
            raise zt.ScenarioFailure(
                f'{thread.name} ended (error: {thread.error!r}) before '
                f'{what}')
        return result
    return zt.wait_until(ready, timeout, interval=0.005, what=what)


def stop_and_compare(rig, when):
    """Stops everything; both backends' FileStorages must hold the same
    history and their blob dirs the same files (paths, SHA-256). Returns
    the history comparison and a's blob files."""
    rig.stop()
    histories = zt.compare_histories(
        [(name, backend.path) for name, backend in zip('ab', rig.backends)])
    files = [blob_files(backend.blob_dir) for backend in rig.backends]
    check(files[0] == files[1],
          f'{when}: the backends\' blob files differ: only on a '
          f'{sorted(set(files[0]) - set(files[1]))[:5]}, only on b '
          f'{sorted(set(files[1]) - set(files[0]))[:5]}')
    return histories, files[0]


def write_blob(blob, data):
    with blob.open('w') as f:
        f.write(data)


def read_blob(blob):
    with blob.open('r') as f:
        return f.read()


def scenario_store_and_load(rig):
    rig.raid.start()
    writer = rig.db('client-1')
    conn = writer.open()
    root = conn.root()
    expected = {}   # (key, serial) -> bytes
    sizes = {'empty': 0, 'tiny': 10, 'medium': 100_000, 'large': 5_000_000}
    for key, size in sizes.items():
        root[key] = ZODB.blob.Blob()
        write_blob(root[key], os.urandom(size))
    transaction.commit()
    for key in sizes:
        expected[key, root[key]._p_serial] = read_blob(root[key])
    for key in ('tiny', 'large'):
        write_blob(root[key], os.urandom(len(expected[key, root[key]._p_serial]) + 7))
    transaction.commit()
    for key in ('tiny', 'large'):
        expected[key, root[key]._p_serial] = read_blob(root[key])
    # A blob upload in a transaction that is aborted: spooled, then gone.
    storage = writer.storage
    meta = ZODB.Connection.TransactionMetaData()
    storage.tpc_begin(meta)
    record, _ = storage.load(root['tiny']._p_oid)
    upload = os.path.join(rig.dir, 'aborted.blob')
    with open(upload, 'wb') as f:
        f.write(os.urandom(1_000_000))
    storage.storeBlob(storage.new_oid(), ZODB.utils.z64, record, upload, '',
                      meta)
    zt.wait_until(lambda: rig.spool_files(), 10,
                  what='the aborted transaction\'s blob spooled by zeoraid')
    storage.tpc_abort(meta)
    zt.wait_until(lambda: not rig.spool_files(), 10,
                  what='the aborted transaction\'s blob spool removed')

    reader = rig.db('client-2')
    conn2 = reader.open()
    root2 = conn2.root()
    for (key, serial), data in expected.items():
        blob = conn2.get(root2[key]._p_oid)
        loaded = reader.storage.loadBlob(blob._p_oid, serial)
        with open(loaded, 'rb') as f:
            got = f.read()
        check(got == data,
              f'blob {key!r} at {serial.hex()}: {len(got)} bytes loaded '
              f'through zeoraid, {len(data)} committed')
    leftovers = rig.spool_files()
    check(not leftovers, f'blob spool files left in the state dir: {leftovers}')
    histories, files = stop_and_compare(rig, 'after the run')
    check(len(files) == len(expected),
          f'backend a holds {len(files)} blob files, expected '
          f'{len(expected)} (one per committed revision)')
    return (f'{len(expected)} blob revisions ({sum(map(len, expected.values()))} '
            f'bytes) stored on both backends and loaded back; '
            f'{histories.transactions} transactions and the blob files '
            'identical')


def scenario_leftovers(rig):
    os.makedirs(rig.raid.state_dir, exist_ok=True)
    left = os.path.join(rig.raid.state_dir, SPOOL_PREFIX + 'crash')
    with open(left, 'wb') as f:
        f.write(b'half a blob')
    rig.raid.start()
    check(not os.path.exists(left),
          'a blob spool file left by a crash survived the start-up')
    return 'leftover blob spool file removed at start-up'


def commit_blob_history(root):
    """Blob creations, revisions, several blobs per transaction and plain
    changes beside them; returns {(key, serial): bytes}."""
    revisions = {}
    for round_ in range(4):
        for key in ('x', 'y', f'new-{round_}'):
            if key not in root or round_ % 2:
                root[key] = root.get(key) or ZODB.blob.Blob()
                write_blob(root[key], os.urandom(1000 * (round_ + 1) + 3))
        root[f'plain-{round_}'] = round_
        transaction.commit()
        for key in ('x', 'y', f'new-{round_}'):
            revisions[key, root[key]._p_serial] = read_blob(root[key])
    return revisions


def undo_last_twice(db):
    """Undoes the last transaction, then that undo: blob records that point
    back to earlier ones (data_txn)."""
    for _ in range(2):
        db.undo(db.undoLog(0, 1)[0]['id'])
        transaction.commit()


def scenario_recover_empty(rig, undos=False, exact=False):
    """Recovery onto an empty backend copies every blob file. `undos`:
    undos of blob revisions (and of those undos) in the history. `exact`:
    b's blob directory shared (`[[backend]] blob_dir`), so the copy keeps
    their back-pointers and record order too."""
    a, b = rig.backends
    if undos:
        filestorage_backends(rig)
    if exact:
        rig.raid.backend_options = {'b': {'blob_dir': b.blob_dir}}
    rig.raid.start()
    db = rig.db('client-1')
    conn = db.open()
    revisions = commit_blob_history(conn.root())
    if undos:
        undo_last_twice(db)
    # b loses everything: an empty storage and blob dir, same address.
    b.stop()
    for suffix in ('', '.index', '.lock', '.tmp'):
        if os.path.exists(b.path + suffix):
            os.remove(b.path + suffix)
    shutil.rmtree(b.blob_dir)
    b.start()
    revisions.update(commit_blob_history(conn.root()))
    if undos:
        conn.sync()
        undo_last_twice(db)

    def started():
        try:
            return db.storage._call('raid_recover', 'b', {})
        except Exception:
            return None   # not reconnected yet
    zt.wait_until(started, 30, interval=0.2,
                  what='raid_recover of the emptied b accepted')

    def ended():
        info = db.storage._call('raid_recovery')
        return info if info['state'] != 'running' else None
    info = zt.wait_until(ended, 60, interval=0.1, what='the recovery to end')
    check(info['state'] == 'done',
          f'the recovery of b ended {info["state"]!r}: {info["error"]!r}')
    check(info['transactions_verified'] == 0,
          f'{info["transactions_verified"]} verified of an empty b')
    # Every revision now loads from b alone.
    db.storage._call('raid_disable', 'a')
    reader = rig.db('client-2')
    for (key, serial), data in revisions.items():
        oid = conn.root()[key]._p_oid
        with open(reader.storage.loadBlob(oid, serial), 'rb') as f:
            got = f.read()
        check(got == data, f'blob {key!r} at {serial.hex()} from the '
                           f'recovered b: {len(got)} bytes, {len(data)} '
                           'committed')
    if undos and not exact:
        # Streamed blob stores cannot carry an undo's back-pointer, and go
        # after the transaction's other records (docs/blobs.md): the blob
        # files and loads must agree, the records need not.
        rig.stop()
        files = [blob_files(backend.blob_dir) for backend in rig.backends]
        check(files[0] == files[1],
              f'blob files differ after the recovery: only on a '
              f'{sorted(set(files[0]) - set(files[1]))[:5]}, only on b '
              f'{sorted(set(files[1]) - set(files[0]))[:5]}')
        return (f'empty b recovered: {info["transactions_copied"]} '
                f'transactions incl. undos of blob revisions, '
                f'{len(files[0])} blob files identical to a\'s; '
                f'{len(revisions)} revisions loaded from b alone')
    histories, files = stop_and_compare(rig, 'after the recovery')
    return (f'empty b recovered{" exactly" if exact else ""}: '
            f'{info["transactions_copied"]} transactions, '
            f'{len(files)} blob files identical to a\'s; '
            f'{len(revisions)} revisions loaded from b alone; '
            f'{histories.transactions} transactions identical')


def peak_rss_kib(pid):
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1])
    raise AssertionError('no VmHWM in /proc status')


def scenario_large(rig, mib=1024):
    """A 1 GiB blob stored and loaded back with zeoraid's peak RSS under
    200 MiB; with a 3 s call timeout and a 1 s heartbeat, the transfers
    (longer than that) leave both backends optimal."""
    rig.raid.timeouts.update({'heartbeat': 1, 'call': 3})
    rig.raid.start()
    db = rig.db('client-1')
    root = db.open().root()
    source = os.path.join(rig.dir, 'large')
    digest = hashlib.sha256()
    with open(source, 'wb') as f:
        for _ in range(mib):
            chunk = os.urandom(1 << 20)
            f.write(chunk)
            digest.update(chunk)
    blob = ZODB.blob.Blob()
    blob.consumeFile(source)
    root['large'] = blob
    started = time.monotonic()
    transaction.commit()
    upload = time.monotonic() - started
    reader = rig.db('client-2')
    loaded = hashlib.sha256()
    started = time.monotonic()
    with reader.open().root()['large'].open('r') as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            loaded.update(chunk)
    download = time.monotonic() - started
    check(loaded.digest() == digest.digest(),
          f'the {mib} MiB blob loaded back differs from what was stored')
    peak = peak_rss_kib(rig.raid.pid)
    check(peak < 200 * 1024,
          f'zeoraid peaked at {peak // 1024} MiB RSS for a {mib} MiB blob')
    status = reader.storage._call('raid_status')
    check(status == 'optimal',
          f'raid_status {status!r} after {upload:.1f} s upload and '
          f'{download:.1f} s download with a 3 s call timeout')
    leftovers = rig.spool_files()
    check(not leftovers, f'blob spool files left: {leftovers}')
    stop_and_compare(rig, 'after the 1 GiB blob')
    return (f'{mib} MiB blob: upload {upload:.1f} s, download {download:.1f} '
            f's, zeoraid peak RSS {peak // 1024} MiB, both backends '
            'optimal and identical')


def commit_large_blob(rig, db, key, size):
    """Commits a new blob of `size` random bytes as root[key]; returns
    (oid, serial, SHA-256)."""
    source = os.path.join(rig.dir, f'{key}.source')
    digest = random_file(source, size)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    blob = ZODB.blob.Blob()
    blob.consumeFile(source)
    conn.root()[key] = blob
    tm.commit()
    blob._p_activate()   # a ghost after the commit: its serial is not set
    oid, serial = blob._p_oid, blob._p_serial
    conn.close()
    return oid, serial, digest


def loaded_digest(db, oid, serial):
    """The SHA-256 of the blob (oid, serial) loaded through `db`'s
    ClientStorage (sendBlob unless it is in that client's cache)."""
    return zt.file_digest(db.storage.loadBlob(oid, serial))


def check_degraded(rig, db, name, context):
    """`name` is degraded (raid_details and zeoraid's log say so), every
    other backend optimal; returns the reason."""
    names = 'ab'[:len(rig.backends)]
    reasons = rs.check_details(rs.raid_details(db), [name], names, context)
    logged = [line for line in rig.raid.degradations()
              if f'backend={name}' in line]
    check(logged, f'{context}: zeoraid logged no degradation of {name}')
    return reasons[name]


def scenario_kill_mid_upload(rig, size=300 * MB):
    """kill -9 of a backend while zeoraid replays a large blob to it at
    vote: the commit goes through on the other, which then serves it."""
    a, b = rig.backends
    rig.raid.start()
    db = rig.db('client-1')
    tm = transaction.TransactionManager()
    root = db.open(tm).root()
    source = os.path.join(rig.dir, 'upload')
    digest = random_file(source, size)
    blob = ZODB.blob.Blob()
    blob.consumeFile(source)
    root['large'] = blob
    committing = Background('the commit of the large blob', tm.commit)
    started = time.monotonic()
    committing.start()
    # b's ZEO server writes the blob to a temp file in its blob dir's tmp/
    # as zeoraid replays it (after the whole upload was spooled).
    b_tmp = os.path.join(b.blob_dir, 'tmp')

    def mid_replay():
        """The size of b's temp file once it has grown to 10 MB, if it
        does not hold the whole blob yet."""
        sizes = [n for n in files_in(b_tmp).values() if MID <= n < size]
        return sizes and max(sizes)
    seen = wait_while_running(committing, mid_replay, 60,
                              'b\'s temp file of the blob was seen part-written')
    b.kill()
    killed_at = time.monotonic() - started
    left = max(files_in(b_tmp).values(), default=0)
    check(0 < left < size,
          f'b killed with {left} of {size} bytes in its temp file: not '
          'mid-replay')
    committing.result(60)
    blob._p_activate()   # a ghost after the commit: its serial is not set
    serial = blob._p_serial
    took = time.monotonic() - started
    reason = check_degraded(rig, db, 'b', 'after kill -9 of b mid-replay')
    zt.wait_until(lambda: not rig.spool_files(), 5,
                  what='zeoraid\'s blob spool files to go')
    reader = rig.db('client-2')
    check(loaded_digest(reader, blob._p_oid, serial) == digest,
          'the blob loaded back from a differs from the one committed')
    check(digest in blob_files(a.blob_dir).values(),
          'a\'s blob dir holds no file with the committed blob\'s bytes')
    # The database goes on with a alone.
    root['after'] = 1
    tm.commit()
    check(not rig.spool_files(), f'blob spool files: {rig.spool_files()}')
    return (f'{size // MB} MB blob: b killed {killed_at:.1f} s into the '
            f'commit with {left // MB} MB ({seen // MB} MB seen) of it in '
            f'its temp file; commit done after {took:.1f} s; b degraded '
            f'({reason!r}); the blob loads back from a; no spool file left')


FETCHING = re.compile(r'fetching a blob.*\bbackend="?([^\s",]+)')


def scenario_kill_mid_download(rig, size=300 * MB):
    """kill -9 of the backend zeoraid is fetching a blob from into its
    cache: the load finishes from the other backend."""
    by_name = dict(zip('ab', rig.backends))
    # The fetch is logged at debug level (as of the cache's first commit).
    rig.raid.env['RUST_LOG'] = 'info,zeoraid=debug'
    rig.raid.start()
    db = rig.db('client-1')
    oid, serial, digest = commit_large_blob(rig, db, 'large', size)
    rs.check_details(rs.raid_details(db), [], 'ab', 'after the commit')
    cache = os.path.join(rig.raid.state_dir, BLOB_CACHE)
    log_start = len(rig.raid.log())
    reader = rig.db('client-2')
    loading = Background('the load of the large blob',
                         lambda: loaded_digest(reader, oid, serial))
    started = time.monotonic()
    loading.start()

    def fetches():
        """The backends zeoraid logged fetching a blob from, in order."""
        return [match.group(1) if match else '?' for match in (
            FETCHING.search(line) for line
            in rig.raid.log()[log_start:].splitlines()
            if 'fetching a blob' in line)]

    def mid_fetch():
        fetching = fetches()
        if not fetching:
            return None
        parts = [n for n in files_in(cache, PART_PREFIX).values()
                 if MID <= n < size]
        return parts and (fetching[0], max(parts))
    name, seen = wait_while_running(
        loading, mid_fetch, 60,
        'zeoraid logged "fetching a blob ... backend=NAME" and its part '
        'file was seen part-written')
    check(name in by_name, f'fetching a blob from {name!r}, not a or b')
    by_name[name].kill()
    killed_at = time.monotonic() - started
    got = loading.result(60)
    took = time.monotonic() - started
    check(got == digest, 'the blob loaded after the kill differs from the '
                         'one committed')
    other = ({'a', 'b'} - {name}).pop()
    check(fetches() == [name, other],
          f'zeoraid fetched the blob from {fetches()}, expected {name} '
          f'(killed), then {other}')
    reason = check_degraded(rig, db, name, f'after kill -9 of {name} '
                                           'mid-fetch')
    zt.wait_until(lambda: not rig.temp_files(), 5,
                  what='zeoraid\'s part and spool files to go')
    return (f'{size // MB} MB blob: {name} killed {killed_at:.1f} s into '
            f'the load with {seen // MB} MB of it fetched; the load done '
            f'from {other} after {took:.1f} s with the right bytes; '
            f'{name} degraded ({reason!r}); no part or spool file left')


class IntendedFailure(Exception):
    """Raised by FailingResource to abort a transaction."""


class FailingResource:
    """A resource manager that fails its transaction in `phase` ('commit':
    after the ZODB connection has stored its objects, before any vote;
    'tpc_vote': after the connection's vote), so that the transaction is
    aborted with its blobs already sent to zeoraid. It sorts after ZODB
    connections (their sort keys start with the storage name)."""

    def __init__(self, phase):
        self.phase = phase

    def sortKey(self):
        return '~failing'

    def _fail(self, phase):
        if phase == self.phase:
            raise IntendedFailure(phase)

    def commit(self, txn):
        self._fail('commit')

    def tpc_vote(self, txn):
        self._fail('tpc_vote')

    def tpc_begin(self, txn):
        pass

    def tpc_finish(self, txn):
        pass

    def tpc_abort(self, txn):
        pass

    def abort(self, txn):
        pass


def mixed_blob_size(rng):
    """0 B to 20 MB, mostly small. (zeoraid spools every blob upload to a
    file whatever its size; `spool_threshold`, 16 MiB by default, is for
    transaction logs, whose blob records hold the file's path.)"""
    r = rng.random()
    if r < 0.1:
        return 0
    if r < 0.35:
        return rng.randrange(1, 1000)
    if r < 0.6:
        return rng.randrange(1000, 100_000)
    if r < 0.85:
        return rng.randrange(100_000, 2 * MB)
    if r < 0.95:
        return rng.randrange(2 * MB, 8 * MB)
    return rng.randrange(17 * MB, 20 * MB + 1)


WORKLOAD = {   # kind: weight (%)
    'commit': 64,
    'shared': 16,             # a blob both writers write: may conflict
    'abort': 7,               # transaction.abort() after writing a blob
    'abort-before-vote': 7,   # blob stored to zeoraid, then aborted
    'abort-after-vote': 6,    # voted by the backends, then aborted
}


COUNTS_LOCK = threading.Lock()


def blob_workload(db, name, keys, transactions, expected, counts):
    """One writer's transactions (kinds from WORKLOAD, sizes from
    mixed_blob_size); committed revisions go to `expected` as
    {(oid, serial): SHA-256}, every outcome to `counts`."""
    rng = random.Random(name)

    def count(outcome):
        with COUNTS_LOCK:
            counts[outcome] += 1
    tm = transaction.TransactionManager()
    root = db.open(tm).root()
    kinds = list(WORKLOAD)
    for _ in range(transactions):
        kind = rng.choices(kinds, weights=list(WORKLOAD.values()))[0]
        blob = root['shared' if kind == 'shared' else rng.choice(keys)]
        data = os.urandom(mixed_blob_size(rng))
        write_blob(blob, data)
        if kind == 'abort':
            tm.abort()
            count(kind)
            continue
        if kind.startswith('abort-'):
            tm.get().join(FailingResource(
                'commit' if kind == 'abort-before-vote' else 'tpc_vote'))
        try:
            tm.commit()
        except IntendedFailure:
            tm.abort()
            count(kind)
            continue
        except ConflictError:
            tm.abort()
            count('conflict')
            continue
        check(not kind.startswith('abort-'), f'{kind}: committed')
        blob._p_activate()   # a ghost after the commit
        expected[blob._p_oid, blob._p_serial] = (
            hashlib.sha256(data).hexdigest())
        count('committed')


def provoke_conflicts(db1, db2, rounds, expected):
    """Both clients read the shared blob, the first commits a new
    revision, the second then stores one on the old serial: the backends
    refuse it at vote (ConflictError through zeoraid). Returns how many
    conflicted."""
    tm1, tm2 = transaction.TransactionManager(), transaction.TransactionManager()
    root1, root2 = db1.open(tm1).root(), db2.open(tm2).root()
    conflicts = 0
    for _ in range(rounds):
        tm1.begin()
        tm2.begin()
        blob1, blob2 = root1['shared'], root2['shared']
        blob2._p_activate()
        data = os.urandom(1000)
        write_blob(blob1, data)
        tm1.commit()
        blob1._p_activate()
        expected[blob1._p_oid, blob1._p_serial] = (
            hashlib.sha256(data).hexdigest())
        write_blob(blob2, os.urandom(2000))
        try:
            tm2.commit()
        except ConflictError:
            conflicts += 1
        tm2.abort()
    return conflicts


def crash_zeoraid_during(rig, background, size, what, monitor,
                         after_crash=lambda: None):
    """Starts `background` (an upload or a download of `size` bytes through
    zeoraid), kills zeoraid (-9) once its temporary file for it holds
    10 MB but not all, checks the call fails, runs `after_crash`, restarts
    zeoraid: no temporary file left, both backends optimal (asked through
    `monitor`). Returns the temporary files' sizes when killed, their
    names, and the error the client got."""
    background.start()

    def spooling():
        """The sizes of zeoraid's temp files, once one holds 10 MB (it
        has grown) but not all of the blob."""
        sizes = rig.temp_files().values()
        return any(MID <= n < size for n in sizes) and list(sizes)
    sizes = wait_while_running(background, spooling, 60,
                               f'zeoraid\'s {what} part-written')
    rig.raid.kill()
    left = rig.temp_files()
    check(left, f'no {what} file left by the crash to clean up')
    try:
        background.result(30)
    except Exception as error:
        error_name = type(error).__name__
    else:
        raise zt.ScenarioFailure(f'the {what} cut by the crash succeeded')
    after_crash()
    rig.restart_raid()
    check(not rig.temp_files(), f'temporary files after the restart: '
                                f'{rig.temp_files()}')
    rs.check_details(rs.raid_details(monitor), [], 'ab',
                     f'after the restart from the crash mid-{what}')
    return sizes, left, error_name


def scenario_temp_files(rig, per_writer=70, conflict_rounds=5):
    """Many blob transactions (committed, aborted at each stage,
    conflicting) and loads leave no temporary file in zeoraid; nor do
    crashes of zeoraid mid-upload and mid-download, once it is restarted."""
    started = time.monotonic()
    rig.raid.start()
    writers = [rig.db('client-1'), rig.db('client-2')]
    keys = {name: [f'{name}-{i}' for i in range(12)]
            for name in ('client-1', 'client-2')}
    expected = {}
    tm = transaction.TransactionManager()
    root = writers[0].open(tm).root()
    blobs = [root.setdefault(key, ZODB.blob.Blob())
             for key in sum(keys.values(), ['shared'])]
    for blob in blobs:
        write_blob(blob, b'')
    tm.commit()
    for blob in blobs:
        blob._p_activate()
        expected[blob._p_oid, blob._p_serial] = hashlib.sha256().hexdigest()
    counts = {outcome: 0 for outcome in ('committed', 'conflict', 'abort',
                                         'abort-before-vote',
                                         'abort-after-vote')}
    workers = [
        Background(f'writer {name}', lambda db=db, name=name: blob_workload(
            db, name, keys[name], per_writer, expected, counts))
        for db, name in zip(writers, keys)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.result(120)
    provoked = provoke_conflicts(*writers, conflict_rounds, expected)
    counts['conflict'] += provoked
    counts['committed'] += conflict_rounds
    check(provoked == conflict_rounds,
          f'{provoked} of {conflict_rounds} stale blob stores conflicted')
    zt.wait_until(lambda: not rig.temp_files(), 5,
                  what='zeoraid\'s temporary files to go after the commits')
    reader = rig.db('client-3')
    for (oid, serial), digest in expected.items():
        check(loaded_digest(reader, oid, serial) == digest,
              f'blob {oid.hex()} at {serial.hex()} loaded back differs')
    zt.wait_until(lambda: not rig.temp_files(), 5,
                  what='zeoraid\'s temporary files to go after the loads')
    rs.check_details(rs.raid_details(reader), [], 'ab', 'after the workload')
    check(not rig.raid.degradations(),
          f'degradations: {rig.raid.degradations()}')
    workload = (f'{sum(counts.values())} transactions ({counts}), '
                f'{len(expected)} revisions loaded back in '
                f'{time.monotonic() - started:.1f} s')

    # A crash mid-upload: zeoraid is spooling the client's blob.
    size = 200 * MB
    download = commit_large_blob(rig, writers[1], 'download', size)
    source = os.path.join(rig.dir, 'crash-upload')
    random_file(source, size)
    tm.begin()
    root['client-1-0'].consumeFile(source)
    committing = Background('the upload cut by the crash', tm.commit)
    spooled, left, upload_error = crash_zeoraid_during(
        rig, committing, size, 'upload', writers[1], after_crash=tm.abort)
    after_upload = (f'zeoraid killed with {max(spooled) // MB} MB of a '
                    f'{size // MB} MB upload spooled (left '
                    f'{names(left)}; the client got {upload_error})')

    # A crash mid-download: zeoraid is fetching a blob from a backend.
    fetcher = rig.db('client-4')
    loading = Background('the load cut by the crash',
                         lambda: loaded_digest(fetcher, *download[:2]))
    fetched, left, download_error = crash_zeoraid_during(
        rig, loading, size, 'download', writers[1])
    after_download = (f'killed with {max(fetched) // MB} MB of a download '
                      f'fetched (left {names(left)}; the client got '
                      f'{download_error})')

    # Usable: the clients reconnect; a commit and loads; nothing degraded.
    for db in writers:
        zt.wait_until(db.storage.is_connected, 30,
                      what='the writers to reconnect to zeoraid')
    data = os.urandom(3 * MB)
    write_blob(root['client-1-0'], data)
    tm.commit()
    blob = root['client-1-0']
    blob._p_activate()
    reader = rig.db('client-5')
    check(loaded_digest(reader, blob._p_oid, blob._p_serial)
          == hashlib.sha256(data).hexdigest(),
          'the blob committed after the restarts loads back differently')
    check(loaded_digest(reader, *download[:2]) == download[2],
          'the blob whose download was cut loads back differently')
    check(not rig.temp_files(), f'temporary files at the end: '
                                f'{rig.temp_files()}')
    rs.check_details(rs.raid_details(reader), [], 'ab', 'at the end')
    check(not rig.raid.degradations(),
          f'degradations: {rig.raid.degradations()}')
    histories, files = stop_and_compare(rig, 'at the end')
    return (f'{workload}; no temp file left. Crash 1: {after_upload}; '
            f'crash 2: {after_download}; after each restart no temp file '
            f'and both optimal; {histories.transactions} transactions and '
            f'{len(files)} blob files identical on a and b')


def cache_figures(storage):
    status = storage.server_status()
    return {key: status[f'blob-cache-{key}']
            for key in ('files', 'bytes', 'hits', 'fetches')}


def scenario_cache(rig):
    """Concurrent loads of one blob fetch it once; later loads are hits;
    a pack empties the cache."""
    rig.raid.start()
    db = rig.db('writer')
    root = db.open().root()
    sizes = {'x': 3_000_000, 'y': 10, 'z': 0}
    for key, size in sizes.items():
        root[key] = ZODB.blob.Blob()
        write_blob(root[key], os.urandom(size))
    transaction.commit()
    revisions = {}
    for key in sizes:
        data = read_blob(root[key])   # first: a committed blob is a ghost
        revisions[key] = (root[key]._p_oid, root[key]._p_serial, data)
    check(cache_figures(db.storage)['fetches'] == 0,
          f'blobs fetched before any load: {cache_figures(db.storage)}')

    # Eight clients with empty blob caches load x at the same moment.
    readers = [rig.db(f'reader-{n}') for n in range(8)]
    oid, serial, data = revisions['x']
    barrier = threading.Barrier(len(readers))
    loaded = [None] * len(readers)

    def load(n):
        barrier.wait()
        with open(readers[n].storage.loadBlob(oid, serial), 'rb') as f:
            loaded[n] = f.read()
    threads = [threading.Thread(target=load, args=(n,))
               for n in range(len(readers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    check(all(got == data for got in loaded),
          f'concurrent loads of x: {[len(g or b"") for g in loaded]} bytes, '
          f'{len(data)} committed')
    figures = cache_figures(db.storage)
    check(figures['fetches'] == 1,
          f'8 concurrent loads of one blob fetched it {figures["fetches"]} '
          f'times from the backends: {figures}')
    check(figures['hits'] == len(readers) - 1,
          f'8 concurrent loads of one blob: {figures}, expected 7 hits')
    for key in ('y', 'z'):
        oid, serial, data = revisions[key]
        with open(readers[0].storage.loadBlob(oid, serial), 'rb') as f:
            check(f.read() == data, f'blob {key} loaded wrong')
    figures = cache_figures(db.storage)
    check((figures['files'], figures['bytes'], figures['fetches']) ==
          (3, sum(sizes.values()), 3),
          f'after loading 3 blobs: {figures}')
    cached = [name for _, _, names in
              os.walk(os.path.join(rig.raid.state_dir, 'blob-cache'))
              for name in names if name.endswith('.blob')]
    check(len(cached) == 3, f'files in the cache dir: {cached}')

    db.pack()
    figures = cache_figures(db.storage)
    check((figures['files'], figures['bytes']) == (0, 0),
          f'after a pack the cache still holds {figures}')
    # The revisions are still current: loaded again, fetched again.
    reader = rig.db('after-pack')
    oid, serial, data = revisions['x']
    with open(reader.storage.loadBlob(oid, serial), 'rb') as f:
        check(f.read() == data, 'x loaded wrong after the pack')
    check(cache_figures(db.storage)['fetches'] == 4,
          f'x after the pack: {cache_figures(db.storage)}')
    return ('8 concurrent loads of a 3 MB blob fetched it once '
            '(7 cache hits); 3 blobs cached; a pack emptied the cache')


def scenario_mixed_support(rig):
    """A backend whose storage keeps no blobs, beside one that does, is
    degraded at start-up, and cannot be recovered as it is."""
    a, b = rig.backends
    b.stop()
    b.blob_dir = None
    b.start()
    rig.raid.start()
    db = rig.db('client')
    details = {str(k): str(v)
               for k, v in dict(db.storage._call('raid_details')).items()}
    check(details['a'] == 'optimal', f'raid_details: {details}')
    check(details['b'].startswith('degraded: no blob support'),
          f'b without a blob dir: {details["b"]!r}')
    root = db.open().root()
    root['blob'] = ZODB.blob.Blob()
    write_blob(root['blob'], b'kept by a')
    transaction.commit()
    db.storage._call('raid_recover', 'b', {})

    def ended():
        info = db.storage._call('raid_recovery')
        return info if info['state'] != 'running' else None
    info = zt.wait_until(ended, 30, interval=0.1, what='the recovery to end')
    check(info['state'] == 'failed' and 'no blob support' in info['error'],
          f'recovering b without a blob dir: {info}')
    details = {str(k): str(v)
               for k, v in dict(db.storage._call('raid_details')).items()}
    check('no blob support' in details['b'],
          f'b after the refused recovery: {details["b"]!r}')
    return ('b without a blob dir degraded at start-up '
            f'({details["b"][:60]}...); its recovery failed with the reason')


def filestorage_backends(rig):
    """Replaces the rig's backends by `<filestorage blob-dir>` ones, whose
    blob directories hold exactly one file per committed revision."""
    zt.stop_backends(rig.backends)
    for name, backend in zip('ab', rig.backends):
        backend._storage_conf = (f'<filestorage 1>\n  path {backend.path}\n'
                                 f'  blob-dir {backend.blob_dir}\n'
                                 '</filestorage>\n')
        backend.start()


def start_serving(raid):
    """Starts zeoraid and waits until it serves."""
    raid.start()
    rs.wait_serving(raid)


def check_shared_dir(rig, shared, when):
    files = blob_files(shared)
    backend_files = blob_files(rig.backends[0].blob_dir)
    check(files == backend_files,
          f'{when}: the shared blob dir and backend a differ: only shared '
          f'{sorted(set(files) - set(backend_files))[:4]}, only a '
          f'{sorted(set(backend_files) - set(files))[:4]}')
    spools = [f for f in os.listdir(os.path.join(shared, 'tmp'))
              if f.startswith(SPOOL_PREFIX)]
    check(not spools, f'{when}: spool files left in the shared tmp/: {spools}')
    return len(files)


def scenario_shared_dir(rig):
    """A shared blob directory added to a database with blobs is filled at
    start-up; shared clients commit and load through it; after a crash the
    blobs of the last run are checked again; a pack prunes it."""
    filestorage_backends(rig)
    rig.raid.start()
    streamed = rig.db('streamed')
    root = streamed.open().root()
    for n in range(3):
        for key in ('p', 'q'):
            root.setdefault(key, ZODB.blob.Blob())
            write_blob(root[key], os.urandom(1000 + n))
        transaction.commit()
    streamed.close()
    rig.dbs.remove(streamed)
    rig.raid.stop()

    shared = os.path.join(rig.dir, 'shared')
    rig.raid.extra_server = [f'blob_dir = {zt._toml_string(shared)}']
    start_serving(rig.raid)
    filled = check_shared_dir(rig, shared, 'after the start-up fill')
    check(filled == 6, f'{filled} blob files after the fill, expected 6')

    storage = ClientStorage(rig.raid.address, '1', wait_timeout=10,
                            blob_dir=shared, shared_blob_dir=True)
    db = ZODB.DB(storage)
    rig.dbs.append(db)
    conn = db.open()
    root = conn.root()
    check(read_blob(root['p']) and read_blob(root['q']),
          'a shared client cannot read the filled blobs')
    write_blob(root['p'], b'from a shared client')
    root['r'] = ZODB.blob.Blob()
    write_blob(root['r'], b'new from a shared client')
    transaction.commit()
    reader = rig.db('streamed-reader')
    root2 = reader.open().root()
    check(read_blob(root2['p']) == b'from a shared client',
          'a streamed client does not see the shared client\'s blob')
    check_shared_dir(rig, shared, 'after a shared commit')

    # A crash: a blob committed in this run but (as if the crash came
    # between the backends' finish and its placement) not in the shared
    # dir is put back at the next start-up.
    read_blob(root['r'])   # a committed blob is a ghost until read
    newest = os.path.join(
        shared, os.path.relpath(
            storage.fshelper.getBlobFilename(root['r']._p_oid,
                                             root['r']._p_serial), shared))
    db.close()
    reader.close()
    rig.dbs.clear()
    rig.raid.kill()
    os.chmod(os.path.dirname(newest), 0o700)
    os.remove(newest)
    start_serving(rig.raid)
    check(os.path.exists(newest),
          'a blob missing from the shared dir after a crash was not put back')
    check_shared_dir(rig, shared, 'after the crash and restart')

    db = ZODB.DB(ClientStorage(rig.raid.address, '1', wait_timeout=10,
                               blob_dir=shared, shared_blob_dir=True))
    rig.dbs.append(db)
    before = len(blob_files(shared))
    db.pack()
    after = check_shared_dir(rig, shared, 'after a pack')
    check(after < before, f'the pack removed no blob file ({before})')
    root = db.open().root()
    check(read_blob(root['p']) == b'from a shared client',
          'the current revision is gone after the pack')
    return (f'{filled} blob files filled in at start-up; shared commits '
            'and loads; a blob lost in a crash put back; a pack pruned '
            f'{before - after} files; the shared dir equals backend a\'s '
            'blob dir throughout')


def scenario_backend_dirs(rig):
    """zeoraid writes blobs into a backend's blob directory (copies under
    .tmp- names, storeBlobShared) for a, and streams them to b: both end
    up with the same history and blob files; nothing is left in a's blob
    directory; a copy journaled before a crash is removed at start-up."""
    filestorage_backends(rig)
    a, b = rig.backends
    rig.raid.backend_options = {'a': {'blob_dir': a.blob_dir}}
    os.makedirs(rig.raid.state_dir, exist_ok=True)
    # What a crash would leave: a journaled copy in a's blob directory.
    leftover = os.path.join(a.blob_dir, 'zeoraid-blob-1-1.tmp-')
    with open(leftover, 'wb') as f:
        f.write(b'half')
    with open(os.path.join(rig.raid.state_dir, 'backend-blob-copies'),
              'w') as f:
        f.write(leftover + '\n')
    start_serving(rig.raid)
    check(not os.path.exists(leftover),
          'a blob copy journaled before a crash survived the start-up')
    db = rig.db('client')
    root = db.open().root()
    expected = {}
    for n, size in enumerate([0, 10, 200_000, 3_000_000]):
        key = f'blob{n}'
        root[key] = ZODB.blob.Blob()
        write_blob(root[key], os.urandom(size))
        transaction.commit()
        write_blob(root[key], os.urandom(size + 1))
        transaction.commit()
        expected[key] = read_blob(root[key])
    # An aborted transaction and a conflict leave nothing either.
    write_blob(root['blob1'], b'aborted')
    transaction.abort()
    read_blob(root['blob2'])   # this connection's view: before theirs
    other = rig.db('other')
    theirs = transaction.TransactionManager()
    root2 = other.open(transaction_manager=theirs).root()
    write_blob(root2['blob2'], b'theirs')
    theirs.commit()
    write_blob(root['blob2'], b'mine, conflicting')
    try:
        transaction.commit()
        check(False, 'a conflicting blob commit succeeded')
    except ZODB.POSException.ConflictError:
        transaction.abort()
    reader = rig.db('reader')
    root3 = reader.open().root()
    for key, data in expected.items():
        if key != 'blob2':
            check(read_blob(root3[key]) == data, f'{key} loaded wrong')
    details = {str(k): str(v)
               for k, v in dict(db.storage._call('raid_details')).items()}
    check(details == {'a': 'optimal', 'b': 'optimal'},
          f'raid_details: {details}')
    histories, files = stop_and_compare(rig, 'after the run')
    strays = [os.path.join(d, name) for d, _, names in os.walk(a.blob_dir)
              for name in names if name.startswith(SPOOL_PREFIX)]
    check(not strays, f'zeoraid copies left in a\'s blob dir: {strays}')
    check(not os.path.exists(
        os.path.join(rig.raid.state_dir, 'backend-blob-copies')),
        'the copy journal was not emptied')
    return (f'{histories.transactions} transactions and {len(files)} blob '
            'files identical on a (copied into its blob dir) and b '
            '(streamed); no copy left behind, a crash leftover removed')


def scenario_slow_reader(rig, size=100 * MB):
    """A client reading a large blob slowly while another commits: the
    stream leaves room in its queue for the invalidations, so the slow
    client is not taken for a stuck one and disconnected."""
    rig.raid.start()
    writer = rig.db('writer')
    oid, serial, expected = commit_large_blob(rig, writer, 'large', size)
    root = writer.open().root()
    root['counter'] = 0
    transaction.commit()
    slow = rig.db('slow')
    # The client's I/O object holds the storage's bound method.
    io = slow.storage._server.client
    receive = io.receiveBlobChunk

    def slow_receive(*args):
        time.sleep(0.003)   # blocks the client's I/O thread: it reads late
        return receive(*args)
    io.receiveBlobChunk = slow_receive
    loading = Background('the slow load',
                         lambda: loaded_digest(slow, oid, serial))
    loading.start()
    commits = 0
    while loading.is_alive() and commits < 400:
        root['counter'] += 1
        transaction.commit()
        commits += 1
        time.sleep(0.005)
    digest = loading.result(120)
    check(digest == expected, 'the slow load got other bytes')
    check(commits >= 10, f'only {commits} commits during the slow load')
    stuck = [line for line in rig.raid.log().splitlines()
             if 'not reading its messages' in line]
    check(not stuck, f'a client was disconnected: {stuck}')
    return (f'a {size // MB} MB blob read slowly while {commits} '
            'transactions were committed: no client disconnected')


def scenario_vote_differs(rig):
    """A backend that cannot store a blob the others store (a file where
    its oid directory must go) answers vote differently: it is degraded,
    the commit goes through on the other."""
    filestorage_backends(rig)
    a, b = rig.backends
    with open(os.path.join(b.blob_dir, '0x00'), 'w') as f:
        f.write('in the way of every oid directory')
    rig.raid.start()
    db = rig.db('client')
    root = db.open().root()
    root['blob'] = ZODB.blob.Blob()
    write_blob(root['blob'], b'stored on a only')
    transaction.commit()
    details = {str(k): str(v)
               for k, v in dict(db.storage._call('raid_details')).items()}
    check(details['a'] == 'optimal', f'raid_details: {details}')
    check(details['b'].startswith('degraded: ') and 'vote' in details['b'],
          f'b could not store the blob: {details["b"]!r}')
    reader = rig.db('reader')
    check(read_blob(reader.open().root()['blob']) == b'stored on a only',
          'the blob does not load back from a')
    check(len(blob_files(a.blob_dir)) == 1 and not blob_files(b.blob_dir),
          f'blob files: a {blob_files(a.blob_dir)}, b {blob_files(b.blob_dir)}')
    return f'b degraded ({details["b"][:70]}...); the commit went through on a'


SCENARIOS = {
    'large': scenario_large,
    'store_and_load': scenario_store_and_load,
    'leftovers': scenario_leftovers,
    'recover_empty': scenario_recover_empty,
    'recover_undone': lambda rig: scenario_recover_empty(rig, undos=True),
    'recover_exact': lambda rig: scenario_recover_empty(
        rig, undos=True, exact=True),
    'kill_mid_upload': scenario_kill_mid_upload,
    'kill_mid_download': scenario_kill_mid_download,
    'temp_files': scenario_temp_files,
    'cache': scenario_cache,
    'mixed_support': scenario_mixed_support,
    'shared_dir': scenario_shared_dir,
    'backend_dirs': scenario_backend_dirs,
    'slow_reader': scenario_slow_reader,
    'vote_differs': scenario_vote_differs,
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('scenario', choices=sorted(SCENARIOS))
    parser.add_argument('--deadline', type=float, default=120)
    parser.add_argument('-v', '--verbose', action='store_true')
    args = parser.parse_args(argv)
    zt.quiet_logging()
    zt.exit_with_parent()

    rigs = []

    def expire():
        print(f'DEADLINE: the scenario ran longer than {args.deadline} s',
              file=sys.stderr, flush=True)
        zt.kill_children()
        for rig in rigs:
            print(f'--- zeoraid log:\n{rig.raid.log()}', file=sys.stderr,
                  flush=True)
            shutil.rmtree(rig.dir, ignore_errors=True)
        os._exit(3)
    timer = threading.Timer(args.deadline, expire)
    timer.daemon = True
    timer.start()

    started = time.monotonic()
    rig = Rig()
    rigs.append(rig)
    try:
        summary = SCENARIOS[args.scenario](rig)
    except Exception:
        traceback.print_exc()
        print(f'--- zeoraid log:\n{rig.raid.log()}', file=sys.stderr)
        return 1
    finally:
        rig.cleanup()
    print(summary)
    print(f'blob scenario {args.scenario}: ok '
          f'({time.monotonic() - started:.1f} s)', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
