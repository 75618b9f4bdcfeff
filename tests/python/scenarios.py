#!/usr/bin/env python
"""End-to-end scenarios with real ZODB clients through zeoraid.

Subcommands (each starts its own backend ZEO server and zeoraid):

  invalidation  Two independent ZODB.DB/ClientStorage clients: what one
                commits, the other sees through invalidations (its cached
                object is refreshed without reconnecting), in both
                directions, within a bounded poll; a concurrent change of the
                same object is refused with a ConflictError; a third,
                read-only client sees every change and cannot write.
  reconnect     A client commits; the backend ZEO server is stopped and
                restarted on the same port with the same Data.fs; the same
                client (not recreated) commits again within a bounded time
                and reads everything back, as does a new client; the zeoraid
                process is the same throughout.

Options: --frontend-encoding msgpack|pickle, --backend-encoding
pickle|msgpack, --direct (no zeoraid: the control run), --timeout S (the
bound for each wait), -v.

Exit status 0 on success; on failure the message and zeoraid's log tail go
to stderr. The last line on success: `scenario NAME: ok (...)`.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import zeoraid_testing as zt  # noqa: E402

import transaction  # noqa: E402
import ZODB  # noqa: E402
from persistent.mapping import PersistentMapping  # noqa: E402
from ZODB.POSException import ConflictError  # noqa: E402
from ZODB.POSException import ReadOnlyError  # noqa: E402
from ZODB.tests.MinPO import MinPO  # noqa: E402

from ZEO.ClientStorage import ClientStorage  # noqa: E402


VERBOSE = False


def say(*args):
    if VERBOSE:
        print(*args, flush=True)


ScenarioFailure = zt.ScenarioFailure
check = zt.check


class Setup:
    """A backend and (unless direct) a zeoraid in front of it."""

    def __init__(self, args, workdir):
        self.args = args
        self.workdir = workdir
        self.backend = zt.Backend(
            encoding=args.backend_encoding,
            directory=os.path.join(workdir, 'backend'), keep=True)
        self.raid = None

    def start(self):
        self.backend.start()
        say(f'backend ({self.backend.encoding}) on port {self.backend.port}')
        if self.args.direct:
            return
        self.raid = zt.Zeoraid(
            backends=[('a', self.backend, self.backend.storage)],
            storage='1', encoding=self.args.frontend_encoding,
            workdir=os.path.join(self.workdir, 'zeoraid'))
        self.raid.start()
        say(f'zeoraid ({self.raid.encoding}) on port {self.raid.port}, '
            f'pid {self.raid.pid}')

    @property
    def address(self):
        return self.backend.address if self.raid is None else self.raid.address

    def client(self, **kw):
        """A ZODB.DB over a new ClientStorage connected to the front."""
        options = dict(wait=True, wait_timeout=self.args.timeout)
        options.update(kw)
        blob_dir = tempfile.mkdtemp(prefix='blobs-', dir=self.workdir)
        storage = ClientStorage(self.address, '1', blob_dir=blob_dir,
                                **options)
        return ZODB.DB(storage)

    def stop(self):
        if self.raid is not None:
            self.raid.stop()
        self.backend.stop()

    def diagnostics(self):
        if self.raid is None:
            return ''
        return (f'--- zeoraid log ({self.raid.log_path}), last lines:\n'
                f'{self.raid.log_tail(100)}')


def poll(predicate, timeout, what, on_each=None):
    """Calls on_each() then predicate() until predicate() is true."""
    deadline = time.monotonic() + timeout
    start = time.monotonic()
    delay = 0.01
    while True:
        if on_each is not None:
            on_each()
        if predicate():
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            raise ScenarioFailure(f'timed out after {timeout} s: {what}')
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)


class Client:
    """One DB + one connection with its own transaction manager."""

    def __init__(self, name, db):
        self.name = name
        self.db = db
        self.tm = transaction.TransactionManager()
        self.conn = db.open(self.tm)

    @property
    def root(self):
        return self.conn.root()

    def refresh(self):
        # Ends the current transaction; the next access starts a new one
        # that sees the invalidations received so far. No server round
        # trip: ClientStorage's server_sync is off (the default).
        self.tm.abort()

    def commit(self, note):
        txn = self.tm.get()
        txn.note(note)
        self.tm.commit()
        return self.db.storage.lastTransaction()

    def close(self):
        try:
            self.tm.abort()
            self.conn.close()
        finally:
            self.db.close()


def scenario_invalidation(setup, args):
    timeout = args.timeout
    c1 = Client('client1', setup.client())
    c2 = Client('client2', setup.client())
    c3 = Client('reader', setup.client(read_only=True))
    try:
        # client 1 creates the data
        c1.refresh()
        c1.root['shared'] = PersistentMapping({'value': 0, 'by': 'client1'})
        c1.root['counter'] = MinPO(0)
        tid1 = c1.commit('client1 creates')
        say(f'client1 committed {tid1.hex()}')

        # client 2 sees the new objects, and caches them
        poll(lambda: 'shared' in c2.root and 'counter' in c2.root, timeout,
             "client2 never saw client1's first commit", on_each=c2.refresh)
        check(c2.root['shared']['value'] == 0, 'client2 read a wrong value')
        check(c2.root['counter'].value == 0, 'client2 read a wrong counter')
        check(c2.db.storage.lastTransaction() == tid1,
              f'client2 last tid {c2.db.storage.lastTransaction().hex()} '
              f'!= {tid1.hex()}')
        shared_before = c2.root['shared']
        conn2 = c2.conn

        # client 1 changes them; client 2's cached objects get invalidated
        for i in range(1, 4):
            c1.refresh()
            c1.root['shared']['value'] = i
            c1.root['shared']['by'] = 'client1'
            c1.root['counter'].value = i
            tid = c1.commit(f'client1 change {i}')
            seconds = poll(
                lambda: (c2.root['shared']['value'] == i
                         and c2.root['counter'].value == i),
                timeout, f'client2 never saw client1 change {i} '
                         f'(invalidation of tid {tid.hex()} not received?)',
                on_each=c2.refresh)
            check(c2.db.storage.lastTransaction() == tid,
                  'client2 last tid does not follow client1 commit')
            say(f'client2 saw change {i} after {seconds * 1000:.0f} ms')
        check(c2.conn is conn2 and c2.root['shared'] is shared_before,
              'client2 reopened its connection or lost its cached object '
              '(expected an invalidation of the same object)')

        # the other direction
        c2.refresh()
        c2.root['shared']['value'] = 100
        c2.root['shared']['by'] = 'client2'
        c2.root['new'] = MinPO('from client2')
        tid2 = c2.commit('client2 change')
        seconds = poll(
            lambda: (c1.root['shared']['value'] == 100
                     and c1.root['shared']['by'] == 'client2'
                     and 'new' in c1.root),
            timeout, "client1 never saw client2's change", on_each=c1.refresh)
        check(c1.root['new'].value == 'from client2', 'client1 read wrong data')
        check(c1.db.storage.lastTransaction() == tid2,
              'client1 last tid does not follow client2 commit')
        say(f'client1 saw client2 change after {seconds * 1000:.0f} ms')

        # concurrent change of the same object: the later commit conflicts
        c1.refresh()
        c2.refresh()
        c1.root['counter'].value += 10
        c2.root['counter'].value += 20
        c1.commit('client1 wins')
        try:
            c2.commit('client2 loses')
        except ConflictError:
            c2.tm.abort()
            say('client2 got ConflictError, as it should')
        else:
            raise ScenarioFailure(
                'a concurrent change of the same object was committed '
                'twice: no ConflictError')
        poll(lambda: c2.root['counter'].value == 13, timeout,
             'client2 never saw the winning counter value 13',
             on_each=c2.refresh)

        # the read-only client sees it all
        poll(lambda: ('new' in c3.root
                      and c3.root['shared']['value'] == 100
                      and c3.root['counter'].value == 13),
             timeout, 'the read-only client never saw the changes',
             on_each=c3.refresh)
        check(c3.db.storage.isReadOnly(), 'reader storage is not read-only')
        c3.refresh()
        c3.root['counter'].value = -1
        try:
            c3.commit('must fail')
        except ReadOnlyError:
            c3.tm.abort()
        else:
            raise ScenarioFailure('a read-only client could commit')
        return 'two writers and a reader kept in sync by invalidations'
    finally:
        for c in (c1, c2, c3):
            c.close()


def scenario_reconnect(setup, args):
    timeout = args.timeout
    raid_pid = setup.raid.pid if setup.raid else None
    # min/max_disconnect_poll: the client's reconnect interval if zeoraid
    # drops it (ZEO's default is 1..30 s; keep the bound small).
    db = setup.client(min_disconnect_poll=0.2, max_disconnect_poll=1)
    client = Client('client', db)
    try:
        client.refresh()
        client.root['before'] = PersistentMapping({'value': 1})
        tid_before = client.commit('before the backend restart')
        say(f'committed {tid_before.hex()}')

        setup.backend.stop()
        say('backend stopped')
        if setup.raid is not None:
            check(setup.raid.is_running(),
                  'zeoraid exited when its backend stopped')
        setup.backend.start()  # same port (Backend keeps it), same Data.fs
        say(f'backend restarted on port {setup.backend.port}')

        start = time.monotonic()
        deadline = start + timeout
        errors = []
        while True:
            try:
                client.refresh()
                client.root['after'] = PersistentMapping({'value': 2})
                client.root['before']['value'] = 11
                tid_after = client.commit('after the backend restart')
                break
            except Exception as e:  # ClientDisconnected, StorageError, ...
                try:
                    client.tm.abort()
                except Exception:
                    pass
                desc = f'{type(e).__module__}.{type(e).__name__}: {e}'
                if not errors or errors[-1][1] != desc:
                    errors.append((round(time.monotonic() - start, 2), desc))
                if time.monotonic() >= deadline:
                    raise ScenarioFailure(
                        f'no commit succeeded within {timeout} s of the '
                        'backend restart; errors (seconds, error): '
                        f'{errors}') from None
                time.sleep(0.1)
        recovery = time.monotonic() - start
        say(f'committed {tid_after.hex()} {recovery:.2f} s after the restart'
            + (f' (errors meanwhile: {errors})' if errors else ''))
        check(tid_after > tid_before, 'tid went backwards after the restart')

        client.refresh()
        check(client.root['before']['value'] == 11, 'lost the change')
        check(client.root['after']['value'] == 2, 'lost the new object')

        # a new client reads it all back from the restarted backend
        other = Client('other', setup.client())
        try:
            other.refresh()
            check(other.root['before']['value'] == 11,
                  'a new client does not see the change')
            check(other.root['after']['value'] == 2,
                  'a new client does not see the new object')
            check(other.db.storage.lastTransaction() == tid_after,
                  'a new client has another last tid')
        finally:
            other.close()

        if setup.raid is not None:
            check(setup.raid.is_running() and setup.raid.pid == raid_pid,
                  'zeoraid did not stay the same process')
        return f'client recovered {recovery:.2f} s after the backend restart'
    finally:
        client.close()


SCENARIOS = {
    'invalidation': scenario_invalidation,
    'reconnect': scenario_reconnect,
}


def main(argv=None):
    global VERBOSE
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('scenario', choices=sorted(SCENARIOS))
    zt.add_encoding_options(parser)
    parser.add_argument('--timeout', type=float, default=30.0,
                        help='bound of each wait, in seconds')
    parser.add_argument('-v', '--verbose', action='store_true')
    parser.add_argument('--keep', action='store_true',
                        help='keep the work directory')
    args = parser.parse_args(argv)
    VERBOSE = args.verbose
    if not args.direct:
        zt.zeoraid_binary()  # fail early and clearly
    zt.exit_with_parent()
    workdir = tempfile.mkdtemp(prefix=f'zeoraid-{args.scenario}-')
    zt.quiet_logging(os.path.join(workdir, 'python.log'))
    mode = ('direct, backend ' + args.backend_encoding if args.direct else
            f'front {args.frontend_encoding}, '
            f'backend {args.backend_encoding}')
    setup = Setup(args, workdir)
    start = time.monotonic()
    ok = False
    try:
        setup.start()
        outcome = SCENARIOS[args.scenario](setup, args)
        ok = True
    except Exception as e:
        traceback.print_exc()
        print(f'scenario {args.scenario} ({mode}) FAILED: {e}',
              file=sys.stderr)
        print(setup.diagnostics(), file=sys.stderr)
        print(f'work directory kept: {workdir}', file=sys.stderr)
        sys.stderr.flush()
    finally:
        setup.stop()
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if not ok:
        return 1
    print(f'scenario {args.scenario} ({mode}): ok, {outcome} '
          f'({time.monotonic() - start:.1f}s)', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
