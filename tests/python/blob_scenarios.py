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

Options: --deadline S (the whole scenario; then everything is killed),
-v. The last line on success: `blob scenario NAME: ok (...)`.
"""

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import zeoraid_testing as zt  # noqa: E402

import transaction  # noqa: E402
import ZODB  # noqa: E402
import ZODB.blob  # noqa: E402
import ZODB.Connection  # noqa: E402
import ZODB.utils  # noqa: E402
from ZEO.ClientStorage import ClientStorage  # noqa: E402

check = zt.check
SPOOL_PREFIX = 'zeoraid-blob-'


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

    def stop(self):
        for db in self.dbs:
            db.close()
        self.dbs = []
        self.raid.stop()
        zt.stop_backends(self.backends)

    def cleanup(self):
        try:
            self.stop()
        finally:
            self.raid.cleanup()


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
    rig.stop()

    histories = zt.compare_histories(
        [(name, backend.path) for name, backend in zip('ab', rig.backends)])
    files = [blob_files(backend.blob_dir) for backend in rig.backends]
    check(len(files[0]) == len(expected),
          f'backend a holds {len(files[0])} blob files, expected '
          f'{len(expected)} (one per committed revision)')
    check(files[0] == files[1],
          f'the backends\' blob files differ: a {sorted(files[0])}, '
          f'b {sorted(files[1])}')
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


def scenario_recover_empty(rig):
    """Recovery onto an empty backend copies every blob file."""
    a, b = rig.backends
    rig.raid.start()
    db = rig.db('client-1')
    conn = db.open()
    revisions = commit_blob_history(conn.root())
    # b loses everything: an empty storage and blob dir, same address.
    b.stop()
    for suffix in ('', '.index', '.lock', '.tmp'):
        if os.path.exists(b.path + suffix):
            os.remove(b.path + suffix)
    shutil.rmtree(b.blob_dir)
    b.start()
    revisions.update(commit_blob_history(conn.root()))

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
    rig.stop()
    histories = zt.compare_histories(
        [(name, backend.path) for name, backend in zip('ab', rig.backends)])
    files = [blob_files(backend.blob_dir) for backend in rig.backends]
    check(files[0] == files[1],
          f'blob files differ after the recovery: only on a '
          f'{sorted(set(files[0]) - set(files[1]))[:5]}, only on b '
          f'{sorted(set(files[1]) - set(files[0]))[:5]}')
    return (f'empty b recovered: {info["transactions_copied"]} transactions, '
            f'{len(files[1])} blob files identical to a\'s; '
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
    rig.stop()
    files = [blob_files(backend.blob_dir) for backend in rig.backends]
    check(files[0] == files[1], 'the backends\' blob files differ')
    return (f'{mib} MiB blob: upload {upload:.1f} s, download {download:.1f} '
            f's, zeoraid peak RSS {peak // 1024} MiB, both backends '
            'optimal and identical')


SCENARIOS = {
    'large': scenario_large,
    'store_and_load': scenario_store_and_load,
    'leftovers': scenario_leftovers,
    'recover_empty': scenario_recover_empty,
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('scenario', choices=sorted(SCENARIOS))
    parser.add_argument('--deadline', type=float, default=120)
    parser.add_argument('-v', '--verbose', action='store_true')
    args = parser.parse_args(argv)
    zt.quiet_logging()
    zt.exit_with_parent()

    def expire():
        print(f'DEADLINE: the scenario ran longer than {args.deadline} s',
              file=sys.stderr, flush=True)
        zt.kill_children()
        os._exit(3)
    timer = threading.Timer(args.deadline, expire)
    timer.daemon = True
    timer.start()

    started = time.monotonic()
    rig = Rig()
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
