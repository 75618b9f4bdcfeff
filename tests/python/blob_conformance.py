#!/usr/bin/env python
"""ZODB's and ZEO's own blob tests, run through zeoraid, with clients that
stream blobs (`shared_blob_dir=False`, the ClientStorage default) and
with clients that share zeoraid's blob directory (`shared_blob_dir=True`,
zeoraid's `[server] blob_dir`).

Every storage a test opens is a `ClientStorage` connected to a fresh
zeoraid in front of 2 fresh ZEO servers (backend a pickle, b msgpack; the
front end msgpack), each serving `<filestorage 1>` with a `blob-dir` (not
the `<blobstorage>` wrapper, which leaves extra files for undone creations:
docs/research/blob-protocol.md pitfall P4). For a shared client, the
client's blob dir is zeoraid's `[server] blob_dir` (made absolute; zeoraid
creates it with tmp/ and `.layout`, as ZEO's server does for
testZEO.create_storage_shared), never a backend's. After each test, with
its clients closed and zeoraid and the backends stopped, every such "rig"
is checked (and, shared, when its zeoraid's port first accepts
connections, zeoraid's blob_dir must already hold tmp/ and a `.layout`
saying bushy: the client picks the layout when constructed, before it
connects, as ZEO's server has its blob dir ready before it listens):

* the backends' FileStorages hold the identical history
  (`zeoraid_testing.compare_histories`, read from the files);
* their blob directories hold the identical blob files: the same
  `<oid path>/<tid>.blob` names with the same SHA-256 (tmp/ ignored);
* zeoraid degraded no backend, and left no blob spool file
  (`zeoraid-blob-*`) in its state dir;
* shared: zeoraid's blob_dir holds exactly the backends' committed blob
  files (the same relative `<oid path>/<tid>.blob` names, the same
  SHA-256) and no other file (a `.tmp-` upload left behind, say), tmp/ and
  `.layout` aside; its tmp/ exists and holds no `zeoraid-blob-*` file. A
  difference is described file by file, with what the backends' Data.fs
  says of that revision (and whether a pack ran). The blob_dir lies in the
  test's directory, which the test's tearDown removes, so it is read when
  its rig stops (a doctest's rigs are stopped just before its tearDown).
A failed check fails the test.

  zodb         ZODB.tests.testblob.storage_reusable_suite (streamed), with
               a factory that starts a rig per storage: blob_connection.txt,
               blob_importexport.txt, blob_transaction.txt, testblob's
               module doctests and BlobUndoTests (20 tests).
  zeo          ZEO's blob tests: the blob methods of
               testZEO.BlobAdaptedFileStorageTests (CommonBlobTests +
               checkStoreAndLoadBlob, 6), zeo_blob_cache.test and testZEO's
               gracefully_handle_abort_while_storing_many_blobs with
               `start_server` starting a rig, and
               PackableStorage.IExternalGC_suite (pack-gc false backends).
  zodb-shared  storage_reusable_suite('ClientStorageSharedBlobs', factory)
               as testZEO's, the factory (as testZEO.create_storage_shared)
               starting a rig with zeoraid's blob_dir = the client's blob
               dir (20 tests).
  zeo-shared   ZEO's shared-mode blob tests: the CommonBlobTests methods of
               testZEO.BlobWritableCacheTests (5); and IExternalGC.test with
               a shared client (ZEO runs it streamed only; here the pack
               must take the packed-away blob out of zeoraid's blob_dir, for
               the shared client's loadBlob to raise POSKeyError).
  shared       zodb-shared and zeo-shared.
  all          all four.

Left out, each for the reason in EXCLUDED below. --direct runs the same
tests against one plain ZEO server (no zeoraid; shared: the server's
blob-dir is the client's, as in ZEO's tests): the control run (all pass
there).

A test still running after --test-timeout (60 s) gets its zeoraids
killed; after --deadline (300 s) the thread stacks and zeoraid logs are
printed and everything started here is killed.

As root, blob_transaction.txt fails even against plain ZEO (it expects a
PermissionError opening a 0444 file for writing, which CAP_DAC_OVERRIDE
ignores), so the script re-executes itself under `setpriv` without
CAP_DAC_OVERRIDE; where that is impossible, the test is skipped.

Usage: blob_conformance.py zodb|zeo|zodb-shared|zeo-shared|shared|all
           [--deadline S] [--test-timeout S] [-k PATTERN]... [--direct]
           [--keep] [--list]

The last line on success: `blobconf scenario NAME: ok (...)`; otherwise
each failure is printed with its zeoraid logs' tails, then
`blobconf scenario NAME: FAILED (...)`, and the run directory is kept.
"""

import argparse
import doctest
import faulthandler
import fnmatch
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import traceback
import unittest
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import zeoraid_testing as zt  # noqa: E402  (sets up env before ZEO import)

CAP_DAC_OVERRIDE = 1
SETPRIV_ENV = 'ZEORAID_BLOBCONF_SETPRIV'


def has_dac_override():
    """Whether this process can ignore file modes (root, in practice)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('CapEff:'):
                    return bool(int(line.split()[1], 16)
                                & (1 << CAP_DAC_OVERRIDE))
    except OSError:
        pass
    return os.geteuid() == 0


def drop_dac_override():
    """Re-executes this script without CAP_DAC_OVERRIDE (see the module
    docstring). Returns only if that is not possible or not needed."""
    if not has_dac_override() or os.environ.get(SETPRIV_ENV):
        return
    setpriv = shutil.which('setpriv')
    if not setpriv:
        return
    os.environ[SETPRIV_ENV] = '1'
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(setpriv, [setpriv, '--bounding-set=-dac_override',
                       '--inh-caps=-dac_override', sys.executable,
                       os.path.abspath(__file__)] + sys.argv[1:])


drop_dac_override()

import ZODB.tests.util  # noqa: E402
import zope.testing.setupstack  # noqa: E402
from ZODB.tests import PackableStorage  # noqa: E402
from ZODB.tests import StorageTestBase  # noqa: E402
from ZODB.tests import testblob  # noqa: E402

import ZEO.ClientStorage  # noqa: E402
import ZEO.tests.testZEO as testZEO  # noqa: E402
from ZEO.ClientStorage import ClientStorage  # noqa: E402
from ZEO.tests import forker  # noqa: E402
import ZEO.runzeo  # noqa: E402,F401  (once here, not in every forked server)

warnings.filterwarnings('ignore', r'coroutine .* was never awaited',
                        RuntimeWarning)

LABEL = 'blobconf'
SPOOL_PREFIX = 'zeoraid-blob-'

# Tests of the suites run here that cannot pass through zeoraid, or that
# test nothing of zeoraid's, with the reason (matched on the test id's end).
EXCLUDED = {
    # storage_reusable_suite(test_packing=True), in both modes
    'blob_packing_txt': 'fails against plain ZEO too: streamed, it looks up '
                        'server-side blob paths through the client '
                        'fshelper; shared, it packs to times of the test '
                        'process\'s clock, which the suite\'s layer fakes, '
                        'while the server stamps tids by its own, so the '
                        'packs remove other revisions than it expects',
    # storage_reusable_suite(test_blob_storage_recovery=True)
    'RecoveryBlobStorage': 'needs IBlobStorageRestoreable, which no '
                           'ClientStorage provides (asserts it)',
    'proper_handling_of_blob_conflicts': 'testZEO2 drives an in-process '
                                         'StorageServer: ZEO internals',
}


# Skipped only when CAP_DAC_OVERRIDE could not be dropped.
ROOT_SKIP = ('blob_transaction_txt',
             'running with CAP_DAC_OVERRIDE and no setpriv: fails against '
             'plain ZEO too (0444 blob files are writable)')


class Options:
    direct = False
    keep = False
    run_dir = None


# --------------------------------------------------------------------------
# Rigs: 2 blob backends + zeoraid (or, --direct, 1 backend)


class Current:
    """The running test and the rigs it started."""
    test_dir = None
    rigs = []
    counter = 0


def storage_conf(path, blob_dir, extra=''):
    return (f'<filestorage 1>\n'
            f'  path {path}\n'
            f'  blob-dir {blob_dir}\n'
            f'  {extra}\n'
            f'</filestorage>\n')


class Rig:
    """2 ZEO servers with blob dirs and a zeoraid mirroring to them."""

    def __init__(self, label, extrafsoptions='', shared_blob_dir=None):
        Current.counter += 1
        self.dir = os.path.join(Current.test_dir,
                                f'rig{Current.counter}-{label}')
        os.makedirs(self.dir)
        self.backends = []
        self.raid = None
        # The directory shared with shared_blob_dir=True clients: zeoraid's
        # [server] blob_dir (--direct: the server's own blob-dir, as ZEO's
        # create_storage_shared does).
        self.shared_blob_dir = (shared_blob_dir
                                and os.path.abspath(shared_blob_dir))
        names = ['a'] if Options.direct else ['a', 'b']
        encodings = {'a': 'pickle', 'b': 'msgpack'}
        for name in names:
            directory = os.path.join(self.dir, name)
            path = os.path.join(directory, 'Data.fs')
            blob_dir = os.path.join(directory, 'blobs')
            if Options.direct and self.shared_blob_dir:
                blob_dir = self.shared_blob_dir
            backend = zt.Backend(
                encoding=encodings[name], storage='1', directory=directory,
                path=path, keep=True,
                storage_conf=storage_conf(path, blob_dir, extrafsoptions))
            backend.name = name
            backend.blob_dir = blob_dir
            self.backends.append(backend)
        self.stopped = False
        self.checked = False
        # What snapshot_shared_blob_dir() found (or why it could not).
        self.shared_snapshot = None
        Current.rigs.append(self)
        try:
            for backend in self.backends:
                backend.start()
            if Options.direct:
                self.address = self.backends[0].address
            else:
                extra = []
                if self.shared_blob_dir:
                    extra.append(
                        f'blob_dir = {json.dumps(self.shared_blob_dir)}')
                self.raid = zt.Zeoraid(
                    [(b.name, b, '1') for b in self.backends], storage='1',
                    encoding='msgpack', extra_server=extra,
                    workdir=os.path.join(self.dir, 'zeoraid'))
                self.address = self.raid.start()
                if self.shared_blob_dir:
                    check_blob_dir_ready(self.shared_blob_dir)
        except BaseException:
            self.shutdown()
            raise

    @property
    def blob_dir(self):
        """Backend a's blob directory."""
        return self.backends[0].blob_dir

    def shutdown(self):
        """Stops zeoraid, then the backends. Idempotent."""
        if self.stopped:
            return
        self.stopped = True
        try:
            if self.raid is not None:
                self.raid.stop()
                self.snapshot_shared_blob_dir()
        finally:
            zt.stop_backends(self.backends)

    def snapshot_shared_blob_dir(self):
        """Reads zeoraid's shared blob dir once zeoraid has stopped, for
        check(): the dir is the client's, inside the test's directory,
        which the test's tearDown removes before check() runs."""
        root = self.shared_blob_dir
        if not root:
            return
        if not os.path.isdir(root):
            self.shared_snapshot = f'zeoraid\'s blob_dir {root} is gone'
            return
        try:
            tmp = os.path.join(root, 'tmp')
            self.shared_snapshot = SharedDirSnapshot(
                has_tmp=os.path.isdir(tmp),
                spools=sorted(f for f in (os.listdir(tmp)
                                          if os.path.isdir(tmp) else [])
                              if f.startswith(SPOOL_PREFIX)),
                blobs=blob_files(root),
                others=sorted(other_files(root)))
        except Exception:
            self.shared_snapshot = (f'reading zeoraid\'s blob_dir {root}: '
                                    + traceback.format_exc())

    def check(self):
        """The after-test checks (module docstring); returns a short
        summary or raises AssertionError."""
        self.checked = True
        if Options.direct:
            return None
        problems = []
        degraded = self.raid.degradations()
        if degraded:
            problems.append('zeoraid degraded a backend:\n  '
                            + '\n  '.join(degraded))
        spools = [f for f in os.listdir(self.raid.state_dir)
                  if f.startswith(SPOOL_PREFIX)]
        if spools:
            problems.append(f'blob spool files left in {self.raid.state_dir}'
                            f': {spools}')
        try:
            comparison = zt.compare_histories(
                [(b.name, b.path) for b in self.backends])
        except zt.HistoryMismatch as e:
            problems.append(f'histories differ: {e}')
            comparison = None
        files = [blob_files(b.blob_dir) for b in self.backends]
        ref = files[0]
        for backend, other in zip(self.backends[1:], files[1:]):
            diff = describe_blob_difference(ref, other, 'a', backend.name)
            if diff:
                problems.append('blob directories differ: ' + diff)
        shared = None
        if self.shared_blob_dir:
            shared = len(ref)
            problems += self.check_shared_blob_dir(ref)
        if problems:
            raise AssertionError(f'rig {self.dir}:\n' + '\n'.join(problems))
        return comparison.transactions, comparison.records, len(ref), shared

    def check_shared_blob_dir(self, backend_files):
        """zeoraid's shared blob dir must hold exactly the backends'
        committed blob files (`backend_files`, backend a's), nothing else
        but tmp/ and .layout, and no spool file of zeoraid's in tmp/.
        Returns the problems found."""
        root = self.shared_blob_dir
        snapshot = self.shared_snapshot
        if snapshot is None:
            return [f'zeoraid\'s blob_dir {root} was not read: the test\'s '
                    f'directory went before the rig was stopped']
        if isinstance(snapshot, str):
            return [snapshot]
        problems = []
        tmp = os.path.join(root, 'tmp')
        if snapshot.spools:
            problems.append(f'blob spool files left in {tmp}: '
                            f'{snapshot.spools}')
        if not snapshot.has_tmp:
            problems.append(f'zeoraid\'s blob_dir {root} has no tmp/')
        front = snapshot.blobs
        others = snapshot.others
        if others:
            problems.append(f'files other than committed blobs in zeoraid\'s '
                            f'blob_dir {root} (tmp/ and .layout aside): '
                            f'{others[:10]}')
        only_backends = sorted(set(backend_files) - set(front))
        only_front = sorted(set(front) - set(backend_files))
        changed = sorted(p for p in set(front) & set(backend_files)
                         if front[p] != backend_files[p])
        if not (only_backends or only_front or changed):
            return problems
        records = FileStorageRecords(self.backends[0].path)
        packed = os.path.exists(self.backends[0].path + '.old')
        lines = []
        for path in only_backends:
            lines.append(f'  missing in zeoraid\'s blob_dir: {path} '
                         f'({records.describe(path)})')
        for path in only_front:
            lines.append(f'  only in zeoraid\'s blob_dir: {path} '
                         f'({records.describe(path)})')
        for path in changed:
            lines.append(f'  different SHA-256 in zeoraid\'s blob_dir: '
                         f'{path} ({records.describe(path)})')
        note = ''
        if only_front and packed:
            note = (' (the backends were packed, Data.fs.old exists: a '
                    'blob_dir file of a packed-away revision is one zeoraid '
                    'did not prune)')
        problems.append(
            f'zeoraid\'s blob_dir {root} does not hold exactly the backends\' '
            f'{len(backend_files)} committed blob files{note}:\n'
            + '\n'.join(lines))
        return problems

    def log_tail(self, lines=40):
        if self.raid is None:
            return ''
        return f'--- zeoraid log ({self.raid.log_path}):\n' + (
            self.raid.log_tail(lines) or '(empty)')


def blob_files(root):
    """{path relative to the blob dir: SHA-256} of every committed blob
    file (tmp/ left out)."""
    found = {}
    for directory, dirs, names in os.walk(root):
        if directory == root and 'tmp' in dirs:
            dirs.remove('tmp')
        for name in names:
            if name.endswith('.blob'):
                path = os.path.join(directory, name)
                digest = hashlib.sha256()
                with open(path, 'rb') as f:
                    for chunk in iter(lambda: f.read(1 << 20), b''):
                        digest.update(chunk)
                found[os.path.relpath(path, root)] = digest.hexdigest()
    return found


def check_blob_dir_ready(root):
    """Fails unless zeoraid's shared blob dir is ready (tmp/, and a
    `.layout` saying bushy) now that its port accepts connections: a
    shared client (constructed next) picks the directory's layout once,
    before it connects (ZODB.blob.auto_layout_select: a non-empty
    directory without the marker is lawn, an empty marker a KeyError ''),
    as ZEO's runzeo has its storages' blob dirs ready before it listens."""
    marker = os.path.join(root, '.layout')
    try:
        with open(marker) as f:
            layout = repr(f.read())
    except OSError as e:
        layout = f'unreadable ({e})'
    tmp = os.path.isdir(os.path.join(root, 'tmp'))
    if layout != repr('bushy') or not tmp:
        raise AssertionError(
            f'zeoraid accepted connections before its blob_dir {root} was '
            f'ready: .layout {layout}, tmp/ '
            f'{"present" if tmp else "missing"} (a shared client '
            f'constructed now would get the wrong layout)')


class SharedDirSnapshot:

    def __init__(self, has_tmp, spools, blobs, others):
        self.has_tmp = has_tmp
        self.spools = spools
        self.blobs = blobs
        self.others = others


def other_files(root):
    """Paths (relative to `root`) of the files in a blob dir that are not
    committed blob files, tmp/ and .layout left out: e.g. a shared
    client's `.tmp-` upload nobody removed."""
    for directory, dirs, names in os.walk(root):
        if directory == root:
            if 'tmp' in dirs:
                dirs.remove('tmp')
            names = [n for n in names if n != '.layout']
        for name in names:
            if not name.endswith('.blob'):
                yield os.path.relpath(os.path.join(directory, name), root)


def blob_path_ids(path):
    """(oid, tid) as 8-byte strings of a bushy `<oid path>/<tid>.blob`
    relative path, or None."""
    parts = path.split(os.sep)
    try:
        oid = bytes(int(p, 16) for p in parts[:-1])
        tid = int(parts[-1][:-len('.blob')], 16).to_bytes(8, 'big')
    except ValueError:
        return None
    return (oid, tid) if len(oid) == 8 else None


class FileStorageRecords:
    """The (oid, tid) records of a FileStorage, read from the file, to say
    what a blob file's revision is in the backends' history."""

    def __init__(self, path):
        from ZODB.FileStorage import FileIterator
        self.records = {}
        iterator = FileIterator(path)
        try:
            for txn in iterator:
                for record in txn:
                    self.records[(record.oid, txn.tid)] = record.data
        finally:
            iterator.close()

    def describe(self, path):
        ids = blob_path_ids(path)
        if ids is None:
            return 'not a bushy blob path'
        if ids not in self.records:
            return 'no such record in the backends\' Data.fs'
        if self.records[ids] is None:
            return 'its record in the backends\' Data.fs is a deletion'
        return 'its record is in the backends\' Data.fs'


def describe_blob_difference(a, b, name_a, name_b):
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    changed = sorted(p for p in set(a) & set(b) if a[p] != b[p])
    parts = []
    if only_a:
        parts.append(f'only on {name_a}: {only_a[:10]}')
    if only_b:
        parts.append(f'only on {name_b}: {only_b[:10]}')
    if changed:
        parts.append(f'different SHA-256: {changed[:10]}')
    return '; '.join(parts)


class ZeoraidManagingClientStorage(ClientStorage):
    """As testZEO.ServerManagingClientStorage, with a rig instead of one ZEO
    server. shared: the client's blob_dir is zeoraid's [server] blob_dir
    (ZEO's: the server's blob-dir) and the client uses it shared
    (`shared_blob_dir=True`), as testZEO.create_storage_shared."""

    def __init__(self, name, blob_dir, shared=False, extrafsoptions=''):
        self._rig = Rig(os.path.basename(name), extrafsoptions,
                        shared_blob_dir=blob_dir if shared else None)
        ClientStorage.__init__(self, self._rig.address, blob_dir=blob_dir,
                               shared_blob_dir=shared, wait_timeout=30)

    def close(self):
        try:
            ClientStorage.close(self)
        finally:
            self._rig.shutdown()


class ZeoraidManagingClientStorageForIExternalGCTest(
        ZeoraidManagingClientStorage):
    """As testZEO.ServerManagingClientStorageForIExternalGCTest."""

    def pack(self, t=None, referencesf=None):
        ZeoraidManagingClientStorage.pack(self, t, referencesf, wait=True)
        self._cache.clear()
        ZEO.ClientStorage._check_blob_cache_size(self.blob_dir, 0)


def create_storage_shared(name, blob_dir):
    """As testZEO.create_storage_shared."""
    return ZeoraidManagingClientStorage(name, blob_dir, shared=True)


class ZeoraidManagingSharedClientStorageForIExternalGCTest(
        ZeoraidManagingClientStorage):
    """ZeoraidManagingClientStorageForIExternalGCTest in shared mode: the
    pack waits and the client's object cache is cleared, but the blob
    directory is the shared one, not a cache, so it is not emptied (the
    pack must remove the packed-away blob from it)."""

    def __init__(self, name, blob_dir, extrafsoptions=''):
        ZeoraidManagingClientStorage.__init__(
            self, name, blob_dir, shared=True, extrafsoptions=extrafsoptions)

    def pack(self, t=None, referencesf=None):
        ZeoraidManagingClientStorage.pack(self, t, referencesf, wait=True)
        self._cache.clear()


def rig_setUp(test):
    """forker.setUp, with `start_server` starting a rig instead."""
    forker.setUp(test)

    def start_server(storage_conf=None, zeo_conf=None, port=None,
                     keep=False, addr=None, path='Data.fs', protocol=None,
                     blob_dir=None, **kw):
        assert storage_conf is None and zeo_conf is None and protocol is None
        rig = Rig('server')
        return rig.address, rig.shutdown

    test.globs['start_server'] = start_server


class RigClient:
    """The client and tearDown of testZEO's blob test classes, with their
    server replaced by the rig `self._rig` (mixed in first)."""

    def _connect(self):
        self._storage = self._wrap_client(ClientStorage(
            self._rig.address, '1', cache_size=20000000,
            min_disconnect_poll=0.5, wait=1, wait_timeout=30,
            blob_dir=self.blob_cache_dir,
            shared_blob_dir=self.shared_blob_dir,
            **self._client_options()))
        self._storage.registerDB(testZEO.DummyDB())

    def tearDown(self):
        try:
            self._storage.close()
        finally:
            try:
                self._rig.shutdown()
            finally:
                StorageTestBase.StorageTestBase.tearDown(self)


class ZeoraidBlobAdaptedFileStorageTests(
        RigClient, testZEO.BlobAdaptedFileStorageTests):
    """testZEO's blob test class, its server replaced by a rig (`blobdir`,
    where checkStoreAndLoadBlob looks for the file on the server, is
    backend a's blob dir)."""

    def setUp(self):
        StorageTestBase.StorageTestBase.setUp(self)
        self._rig = Rig(self._testMethodName)
        self.blobdir = self._rig.blob_dir
        if not self.blob_cache_dir:
            # As GenericTestBase.setUp (whose None wins over
            # CommonBlobTests' 'blob_cache' in the MRO).
            self.blob_cache_dir = tempfile.mkdtemp(
                'blob_cache', dir=os.path.abspath(os.getcwd()))
        self._connect()


class ZeoraidBlobWritableCacheTests(
        RigClient, testZEO.BlobWritableCacheTests):
    """testZEO's shared-mode blob test class (the client's blob dir,
    `blobs`, is the server's), its server replaced by a rig whose zeoraid
    has `[server] blob_dir = <abs path of blobs>`."""

    def setUp(self):
        StorageTestBase.StorageTestBase.setUp(self)
        try:
            self._rig = Rig(self._testMethodName,
                            shared_blob_dir=self.blob_cache_dir)
        except BaseException:
            # No tearDown after a failed setUp: leave the test's directory
            # (setUp went into it) and remove it here.
            StorageTestBase.StorageTestBase.tearDown(self)
            raise
        self._connect()


# The CommonBlobTests methods (BlobWritableCacheTests adds none).
ZEO_SHARED_BLOB_METHODS = ('checkStoreBlob', 'checkStoreBlob_wrong_partition',
                           'checkLoadBlob', 'checkTemporaryDirectory',
                           'checkTransactionBufferCleanup')

ZEO_BLOB_METHODS = ('checkStoreBlob', 'checkStoreBlob_wrong_partition',
                    'checkLoadBlob', 'checkTemporaryDirectory',
                    'checkTransactionBufferCleanup', 'checkStoreAndLoadBlob')

ZEO_PATTERNS = [
    (re.compile(p), r) for p, r in (
        (r"ZODB.POSException.POSKeyError", "POSKeyError"),
        (r"ZODB.POSException.ConflictError", "ConflictError"),
        (r"ZEO.Exceptions.ClientDisconnected", "ClientDisconnected"),
        (r"\[Errno \d+\]", '[Errno N]'),
    )]


# --------------------------------------------------------------------------
# Suites: (group, layer, tests)


def flatten(suite):
    if isinstance(suite, unittest.TestSuite):
        for test in suite:
            yield from flatten(test)
    else:
        yield suite


def zodb_groups():
    factory = ZeoraidManagingClientStorage
    suite = testblob.storage_reusable_suite(
        'ClientStorageZeoraidBlobs', factory)
    return [('zodb', suite.layer, list(flatten(suite)))]


def zeo_groups():
    from zope.testing import renormalizing
    checker = renormalizing.RENormalizing(ZEO_PATTERNS)
    tests = [ZeoraidBlobAdaptedFileStorageTests(m) for m in ZEO_BLOB_METHODS]
    tests += list(flatten(doctest.DocFileSuite(
        'zeo_blob_cache.test', package='ZEO.tests', setUp=rig_setUp,
        tearDown=zope.testing.setupstack.tearDown, checker=checker)))
    tests += [t for t in flatten(doctest.DocTestSuite(
        testZEO, setUp=rig_setUp, tearDown=zope.testing.setupstack.tearDown,
        checker=checker))
        if t.id().endswith('gracefully_handle_abort_while_storing_many_blobs')]
    tests += list(flatten(PackableStorage.IExternalGC_suite(
        lambda: ZeoraidManagingClientStorageForIExternalGCTest(
            'data.fs', 'blobs', extrafsoptions='pack-gc false'))))
    return [('zeo', ZODB.tests.util.MininalTestLayer('zeoraid-blobconf-zeo'),
             tests)]


def zodb_shared_groups():
    suite = testblob.storage_reusable_suite(
        'ClientStorageSharedBlobs', create_storage_shared)
    return [('zodb-shared', suite.layer, list(flatten(suite)))]


def zeo_shared_groups():
    tests = [ZeoraidBlobWritableCacheTests(m)
             for m in ZEO_SHARED_BLOB_METHODS]
    tests += list(flatten(PackableStorage.IExternalGC_suite(
        lambda: ZeoraidManagingSharedClientStorageForIExternalGCTest(
            'data.fs', 'blobs', extrafsoptions='pack-gc false'))))
    return [('zeo-shared',
             ZODB.tests.util.MininalTestLayer('zeoraid-blobconf-zeo-shared'),
             tests)]


GROUPS = {
    'zodb': zodb_groups,
    'zeo': zeo_groups,
    'zodb-shared': zodb_shared_groups,
    'zeo-shared': zeo_shared_groups,
}


def short_id(test):
    return test.id().rsplit('.', 1)[-1] if '.' in test.id() else test.id()


def exclusion(test):
    for key, reason in EXCLUDED.items():
        if key in test.id():
            return reason
    if has_dac_override() and test.id().endswith(ROOT_SKIP[0]):
        return ROOT_SKIP[1]
    return None


def matches(test, patterns):
    if not patterns:
        return True
    for p in patterns:
        if not any(c in p for c in '*?['):
            p = f'*{p}*'
        if fnmatch.fnmatchcase(test.id(), p):
            return True
    return False


# --------------------------------------------------------------------------
# Running


class Result(unittest.TestResult):

    def __init__(self):
        super().__init__()
        self.passed = []
        self.rig_summaries = []
        self.logs = {}
        # id(test): its group's name (the suites' test ids repeat across
        # groups)
        self.groups = {}

    def problems(self):
        return ([('FAIL', t, tb) for t, tb in self.failures]
                + [('ERROR', t, tb) for t, tb in self.errors])


def check_rigs(test, result, outcome):
    """Stops the test's rigs still running and checks them all; a failed
    check turns a passing test into a failing one."""
    problems = []
    for rig in Current.rigs:
        try:
            rig.shutdown()
        except Exception:
            problems.append('stopping a rig: ' + traceback.format_exc())
        try:
            summary = rig.check()
            if summary is not None:
                result.rig_summaries.append(summary)
        except AssertionError as e:
            problems.append(str(e))
        except Exception:
            problems.append('checking a rig: ' + traceback.format_exc())
    logs = '\n'.join(r.log_tail() for r in Current.rigs if r.raid)
    result.logs[id(test)] = logs
    if problems:
        message = 'after the test:\n' + '\n'.join(problems)
        result.failures.append((test, message))
        if outcome == 'ok':
            result.passed.remove(test)
        return 'FAIL (after-test checks)'
    return outcome


def stop_shared_rigs_before_teardown(test):
    """A doctest's tearDown removes its directory, and with it the shared
    blob dirs of the storages it left open: stop those rigs (which reads
    their shared dir for check()) first. (The TestCases here close their
    storages, which stops the rigs, before removing their directory.)"""
    if not isinstance(test, doctest.DocTestCase) or getattr(
            test, '_zeoraid_wrapped', False):
        return
    original = test._dt_tearDown

    def tearDown(doctest_test):
        try:
            for rig in list(Current.rigs):
                if rig.shared_blob_dir:
                    rig.shutdown()
        finally:
            if original is not None:
                original(doctest_test)

    test._dt_tearDown = tearDown
    test._zeoraid_wrapped = True


def run_group(group, layer, tests, result, test_timeout):
    print(f'--- {group} ({len(tests)} tests)', flush=True)
    layer.setUp()
    try:
        for test in tests:
            result.groups[id(test)] = group
            run_one(layer, test, result, test_timeout)
    finally:
        layer.tearDown()


def run_one(layer, test, result, test_timeout):
    Current.rigs = []
    Current.test_dir = os.path.join(
        Options.run_dir, f'{next(_counter):03d}-{short_id(test)}')
    reason = exclusion(test)
    if reason:
        result.skipped.append((test, reason))
        print(f'{short_id(test)}: excluded ({reason})', flush=True)
        return
    os.makedirs(Current.test_dir, exist_ok=True)
    stop_shared_rigs_before_teardown(test)
    before = (len(result.failures), len(result.errors))
    start = time.monotonic()
    watchdog = threading.Timer(test_timeout, kill_current_rigs, (test,))
    watchdog.daemon = True
    watchdog.start()
    layer.testSetUp()
    try:
        test.run(result)
    finally:
        layer.testTearDown()
        watchdog.cancel()
    outcome = 'ok'
    if (len(result.failures), len(result.errors)) != before:
        outcome = 'FAIL'
    if outcome == 'ok':
        result.passed.append(test)
    outcome = check_rigs(test, result, outcome)
    if outcome == 'ok' and not Options.keep:
        shutil.rmtree(Current.test_dir, ignore_errors=True)
    print(f'{short_id(test)}: {outcome} ({time.monotonic() - start:.1f}s, '
          f'{len(Current.rigs)} rigs)', flush=True)


def _count():
    n = 0
    while True:
        n += 1
        yield n


_counter = _count()


def kill_current_rigs(test):
    print(f'TIMEOUT: {test.id()} still running; killing its zeoraids',
          file=sys.stderr, flush=True)
    for rig in list(Current.rigs):
        if rig.raid is not None:
            rig.raid.kill()


def start_deadline(seconds, name):
    def expire():
        print(f'\nDEADLINE: still running after {seconds} s; thread stacks:',
              file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        for rig in list(Current.rigs):
            print(rig.log_tail(80), file=sys.stderr, flush=True)
        zt.kill_children()
        print(f'{LABEL} scenario {name}: FAILED (deadline of {seconds} s; '
              f'logs in {Options.run_dir})', flush=True)
        os._exit(3)
    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('suite', choices=tuple(GROUPS) + ('shared', 'all'))
    parser.add_argument('--deadline', type=float, default=300)
    parser.add_argument('--test-timeout', type=float, default=60)
    parser.add_argument('-k', dest='patterns', action='append', default=[])
    parser.add_argument('--direct', action='store_true',
                        help='control run: plain ZEO, no zeoraid')
    parser.add_argument('--keep', action='store_true')
    parser.add_argument('--list', action='store_true')
    args = parser.parse_args(argv)
    Options.direct = args.direct
    Options.keep = args.keep

    groups = []
    for name, make in GROUPS.items():
        if (args.suite in (name, 'all')
                or (args.suite == 'shared' and name.endswith('-shared'))):
            groups += make()
    groups = [(g, layer, [t for t in tests if matches(t, args.patterns)])
              for g, layer, tests in groups]
    if args.list:
        for _, _, tests in groups:
            for test in tests:
                reason = exclusion(test)
                print(test.id() + (f'  (excluded: {reason})' if reason
                                   else ''))
        return 0

    zt.exit_with_parent()
    Options.run_dir = tempfile.mkdtemp(prefix='zeoraid-blobconf-')
    zt.quiet_logging(os.path.join(Options.run_dir, 'python.log'))
    start_deadline(args.deadline, args.suite)
    if not args.direct:
        print(f'zeoraid binary: {zt.zeoraid_binary()}', flush=True)
    print('CAP_DAC_OVERRIDE: ' + ('still held' if has_dac_override()
                                  else 'not held'), flush=True)
    started = time.monotonic()
    result = Result()
    for group, layer, tests in groups:
        run_group(group, layer, tests, result, args.test_timeout)
    elapsed = time.monotonic() - started

    problems = result.problems()
    for kind, test, tb in problems:
        print('=' * 70)
        print(f'{kind}: {result.groups.get(id(test))}: {test.id()}')
        print('-' * 70)
        print(tb.rstrip())
        print(result.logs.get(id(test), ''))
    if problems:
        print('=' * 70)
    for key, reason in EXCLUDED.items():
        print(f'not run: {key}: {reason}')
    mode = ('direct (plain ZEO)' if args.direct
            else 'zeoraid (front msgpack) + backends a=pickle b=msgpack')
    summary = (f'{len(result.passed)} passed, '
               f'{len({id(t) for _, t, _ in problems})} failed, '
               f'{len(result.skipped)} skipped; '
               f'{mode}; '
               f'{elapsed:.1f}s')
    ok = not problems and result.passed
    if ok and not args.keep:
        shutil.rmtree(Options.run_dir, ignore_errors=True)
    else:
        summary += f'; run dir {Options.run_dir}'
    if result.rig_summaries:
        txns, records, blobs = (
            sum(c) for c in zip(*(s[:3] for s in result.rig_summaries)))
        print(f'{len(result.rig_summaries)} rigs whose backends held the '
              f'identical history and blob files: {txns} transactions, '
              f'{records} records, {blobs} blob files in all')
        shared = [s[3] for s in result.rig_summaries if s[3] is not None]
        if shared:
            print(f'{len(shared)} of them with a shared blob_dir holding '
                  f'exactly the backends\' blob files: {sum(shared)} in all')
    if ok:
        print(f'{LABEL} scenario {args.suite}: ok ({summary})', flush=True)
        return 0
    print(f'{LABEL} scenario {args.suite}: FAILED ({summary})', flush=True)
    return 1


if __name__ == '__main__':
    sys.exit(main())
