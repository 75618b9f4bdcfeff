#!/usr/bin/env python
"""Online recovery scenarios: real runzeo backends, real ZODB clients, one
zeoraid, and `raid_recover` / `raid_recovery` called as ZEO extension
methods (see docs/recovery.md for the interface).

Every subcommand starts its own backends (`runzeo` subprocesses named a, b,
c, as in raid_scenarios.py, so that they can be killed with SIGKILL and
restarted on the same port and Data.fs) and its own zeoraid. Histories are
written by `Writer`: transactions changing several objects with user,
description and extension set, undos of them (records with data_txn
back-pointers) and undone creations (records without data). At the end the
backends' FileStorages are compared record by record with
zeoraid_testing.compare_histories.

  incremental_under_load
                 b killed (-9) and degraded; 2000 transactions committed to
                 a alone; b restarted on its Data.fs and recovered while
                 three clients (Writers, each on its own ClientStorage) keep
                 committing: raid_status goes back to 'optimal', no client
                 saw an error, raid_recovery() says done, 1 transaction
                 verified, at least every transaction committed while b was
                 away copied and not the whole history; the data read
                 through zeoraid is right and a's and b's histories are
                 identical.
  empty_target   a with a few hundred transactions (with undos), b a fresh
                 empty FileStorage, degraded at start-up: the recovery
                 verifies 0 transactions and copies every one of a's;
                 histories identical.
  diverged_refused
                 b degraded, a transaction committed straight to b's
                 runzeo, more through zeoraid: the recovery fails naming
                 b's newest tid and "empty storage", b's Data.fs is byte for
                 byte unchanged and b stays degraded ('recovery failed:
                 ...'); given an empty storage, b is then recovered.
                 With --full-verify: a's history written directly; c an
                 exact prefix of it and b the same prefix with one record
                 changed three transactions before b's newest: full_verify
                 of c verifies all of c's transactions and copies the rest;
                 full_verify of b fails naming the changed transaction's
                 tid without writing to b; an incremental recovery of b
                 (newest transaction only) then passes, leaving the earlier
                 difference, which compare_histories finds.
  rate_limit     [recovery] transactions_per_second = 100 in the config
                 (and progress_interval = 1: progress lines in the log),
                 400 transactions to copy: the recovery takes at least
                 400/100 s minus 1 s, raid_recovery() reports the limit and
                 a rate near it and an ETA, raid_details says 'recovering:
                 ...'. With --under-load: a limit of 20 transactions/s
                 (raid_recover's option, over the config's) while three
                 clients commit at --load-rate each, together well above
                 the limit: the recovery still finishes (live commits earn
                 it credit), histories identical.
  refusals       a, b, c with b and c degraded; while b's (rate-limited)
                 recovery runs: raid_status 'recovering'; recovering c (or
                 b again) refused naming b; recovering optimal a refused;
                 an unknown backend refused; a pack refused with an error
                 naming b and 'recover'. While a pack runs (b held with
                 SIGSTOP), recovering c is refused naming the pack. Then c
                 (whose history the pack made differ) is recovered from an
                 empty storage, and a pack goes through.
  kill_target    kill -9 of b mid-copy (rate-limited, two clients
                 committing): the recovery fails, b is degraded with
                 'recovery failed: ...', the clients see no error; b
                 restarted and recovered again: done (1 transaction
                 verified; all of b's if its FileStorage cut off a torn
                 transaction it still reports as its last), histories
                 identical.
  kill_source    --backends 3: c recovered from an optimal backend, which
                 is killed (-9) mid-copy while two clients commit: the
                 recovery goes on from the other optimal backend and
                 finishes; the survivors' histories are identical.
                 --backends 2: a (the only source) killed mid-copy: the
                 recovery fails, zeoraid reports 'failed', b's history is a
                 prefix of a's.
  restart_resume zeoraid stopped (SIGTERM) mid-copy and started again with
                 the same state dir: b is still degraded; a new recovery
                 verifies 1 transaction and copies exactly the transactions
                 after b's newest at the restart (nothing twice); histories
                 identical.
  torn_target    b's Data.fs ends inside one of a's transactions (as after
                 a kill mid-write): FileStorage cuts it off but reports it
                 as b's last; the recovery verifies all of b, finds where
                 it really ends, copies the rest: histories identical.
  blob_refused   a's history (written directly, with a blob dir) holds a
                 transaction storing a ZODB blob, but a's runzeo serves it
                 without the blob dir, so it cannot send the blob's file:
                 recovering an empty b copies the transactions before it,
                 then fails naming the blob transaction; b stays degraded
                 (nothing is copied without its blob file; blob_scenarios
                 recover_empty copies blobs). empty_target also checks
                 that the recovered backend's own oid counter is above
                 every oid it holds.

Clients committing during a recovery are paced (--load-rate, transactions
a second each; 0 = flat out): the recovery copies one transaction at a time
and, with a debug zeoraid on two cores, cannot outrun two or more clients
committing flat out (with a release build it can).

Options: --transactions N (the history each scenario writes), --load-rate,
--deadline S (the whole scenario; on expiry thread stacks and logs are
printed and everything is killed), --keep (keep the work dir), -v.

Exit status 0 on success, the last line then `recovery scenario NAME: ok
(...)`. On failure the reason, then zeoraid's log and the backends' log
tails go to stderr and the exit status is 1.
"""

import argparse
import base64
import io
import os
import re
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import raid_scenarios as rs  # noqa: E402
import zeoraid_testing as zt  # noqa: E402

import transaction  # noqa: E402
import ZODB  # noqa: E402
import zodbpickle.pickle  # noqa: E402
from ZEO.ClientStorage import ClientStorage  # noqa: E402
from ZEO.Exceptions import ServerException  # noqa: E402
from ZODB.FileStorage import FileStorage  # noqa: E402
from ZODB.tests.MinPO import MinPO  # noqa: E402


STARTED = time.monotonic()
ScenarioFailure = zt.ScenarioFailure
check = zt.check
poll = rs.poll
note = rs.note


def say(*args):
    if rs.VERBOSE:
        print(f'[{time.monotonic() - STARTED:6.2f}]', *args, flush=True)


# --------------------------------------------------------------------------
# The rig: raid_scenarios' Rig, with a [recovery] table for zeoraid


class Rig(rs.Rig):
    def zeoraid(self, backends, timeouts=None, recovery=None,
                name='zeoraid'):
        """A zeoraid (not started) over `backends` (RunZeo), with
        `recovery` as its [recovery] table."""
        base = {'shutdown': 5}
        base.update(timeouts or {})
        raid = zt.Zeoraid(
            backends=[(b.name, b.port, '1') for b in backends],
            storage='1', encoding='msgpack',
            workdir=os.path.join(self.workdir, name), port=zt.free_port(),
            timeouts=base,
            tables={'recovery': recovery} if recovery else None)
        self.raids.append(raid)
        return raid

    def direct_db(self, backend):
        """A DB over a ClientStorage connected straight to a backend."""
        storage = ClientStorage(('127.0.0.1', backend.port), '1',
                                wait_timeout=10)
        db = ZODB.DB(storage)
        self.dbs.append(db)
        return db


def new_backends(rig, names):
    """RunZeo backends (not started) in the rig's work dir."""
    backends = [rs.RunZeo(name, os.path.join(rig.workdir, f'backend-{name}'))
                for name in names]
    rig.backends.extend(backends)
    return backends


def start_all(backends):
    for backend in backends:
        backend.spawn()
    for backend in backends:
        backend.wait_ready()
    say('backends', ', '.join(f'{b.name}:{b.port} pid {b.pid}'
                              for b in backends))


def wait_connected(rig, backend, handshakes_before, what):
    """Waits until zeoraid has connected to a (re)started backend."""
    poll(lambda: backend.handshakes_logged()
         >= handshakes_before + rs.ZEORAID_LINKS, 20,
         f'{what}: zeoraid never connected to backend {backend.name}')


# --------------------------------------------------------------------------
# The recovery's extension methods


def normalize(value):
    """msgpack may hand back bytes for str; the interface speaks str."""
    if isinstance(value, bytes):
        return value.decode('utf-8', 'replace')
    if isinstance(value, dict):
        return {normalize(k): normalize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    return value


def recover(db, name, **options):
    """raid_recover(name, options): zeoraid's confirmation text."""
    return normalize(db.storage._call('raid_recover', name, options))


def recovery_info(db):
    """raid_recovery(): None or the dict about the current/last recovery."""
    info = db.storage._call('raid_recovery')
    return None if info is None else normalize(info)


def word(name, text):
    """Whether backend `name` appears in `text` as a word of its own."""
    pattern = rf'(?<![\w-]){re.escape(name)}(?![\w-])'
    return re.search(pattern, text) is not None


INFO_KEYS = {'backend', 'source', 'state', 'phase', 'full_verify',
             'transactions_verified', 'transactions_copied', 'bytes_copied',
             'tid', 'transactions_per_second', 'bytes_per_second',
             'eta_seconds', 'limits', 'started', 'finished', 'error'}


def check_info_shape(info, context):
    check(isinstance(info, dict),
          f'{context}: raid_recovery() returned {info!r}, expected a dict')
    missing = INFO_KEYS - set(info)
    check(not missing, f'{context}: raid_recovery() lacks {sorted(missing)}:'
                       f' {info}')
    check(info['state'] in ('running', 'done', 'failed'),
          f'{context}: state {info["state"]!r}, expected running, done or '
          'failed')
    check(info['phase'] in ('verifying', 'copying', 'finishing', 'done',
                            'failed'),
          f'{context}: phase {info["phase"]!r} is not one of the documented')
    check(re.fullmatch(r'[0-9a-f]{16}', str(info['tid'])) is not None,
          f'{context}: tid {info["tid"]!r}, expected 16 hex digits')


class Recovery:
    """One raid_recover call and what raid_recovery() said about it."""

    def __init__(self, db, name, **options):
        self.db = db
        self.name = name
        self.options = options
        self.samples = []   # (monotonic, info)
        self.called_wall = time.time()
        self.called = time.monotonic()
        self.message = recover(db, name, **options)
        say(f'raid_recover({name!r}, {options}) -> {self.message!r}')
        check(isinstance(self.message, str) and word(name, self.message),
              f'raid_recover({name!r}) answered {self.message!r}, expected '
              f'a confirmation naming {name}')
        self.ended = None
        self.info = None

    def sample(self):
        info = recovery_info(self.db)
        check(info is not None,
              f'raid_recovery() is None after raid_recover({self.name!r})')
        check_info_shape(info, f'recovery of {self.name}')
        check(info['backend'] == self.name,
              f'raid_recovery() is about {info["backend"]!r}, expected '
              f'{self.name!r}: {info}')
        # A recovery started before this one (the same backend's) is not
        # this one.
        if info['started'] < self.called_wall - 1.0:
            return None
        self.samples.append((time.monotonic(), info))
        return info

    def wait_copying(self, at_least, timeout=30):
        """Waits until the recovery is copying and has copied `at_least`
        transactions; fails if it ends first."""
        def copying():
            info = self.sample()
            if info is None:
                return None
            if info['state'] != 'running':
                raise ScenarioFailure(
                    f'the recovery of {self.name} ended ({info["state"]}) '
                    f'before copying {at_least} transactions: {info}')
            return info if info['transactions_copied'] >= at_least else None
        return poll(copying, timeout,
                    f'recovery of {self.name} copying {at_least} '
                    'transactions')

    def wait_end(self, timeout, what=''):
        """Waits until the recovery is done or failed; returns the info."""
        def ended():
            info = self.sample()
            if info is not None and info['state'] in ('done', 'failed'):
                return info
            return None
        self.info = poll(ended, timeout,
                         f'the recovery of {self.name} to end{what}')
        self.ended = time.monotonic()
        say(f'recovery of {self.name} ended after '
            f'{self.ended - self.called:.2f} s: {self.info}')
        return self.info

    def wait_done(self, timeout):
        info = self.wait_end(timeout)
        check(info['state'] == 'done' and info['phase'] == 'done',
              f'the recovery of {self.name} ended with state '
              f'{info["state"]!r}, phase {info["phase"]!r}, expected done: '
              f'error {info["error"]!r}; {info}')
        check(info['error'] is None,
              f'a done recovery has error {info["error"]!r}')
        check(info['finished'] is not None and
              info['finished'] >= info['started'],
              f'a done recovery has started {info["started"]!r}, finished '
              f'{info["finished"]!r}')
        return info

    def wait_failed(self, timeout):
        info = self.wait_end(timeout)
        check(info['state'] == 'failed',
              f'the recovery of {self.name} ended with state '
              f'{info["state"]!r}, expected failed: {info}')
        check(info['error'],
              f'a failed recovery has no error text: {info}')
        return info

    def seconds(self):
        return self.ended - self.called

    def rates(self):
        """The transactions_per_second values reported while copying."""
        return [info['transactions_per_second'] for _, info in self.samples
                if info['state'] == 'running' and info['phase'] == 'copying']


def server_error(error):
    """(class name, message) of an error reply as a ZEO client raises it:
    the exception itself, or (for classes ZEO's msgpack client does not
    rebuild, e.g. ValueError) a ServerException(class name, args)."""
    if isinstance(error, ServerException) and len(error.args) == 2:
        class_name, args = error.args
        message = args[0] if isinstance(args, (list, tuple)) and args else args
        return str(class_name), str(message)
    cls = type(error)
    return f'{cls.__module__}.{cls.__qualname__}', str(error)


def expect_refusal(call, class_name, needles, what):
    """Runs `call`, which must fail with an error reply of `class_name`
    (e.g. 'builtins.ValueError') whose message has every one of `needles`
    (one-letter backend names as words, other text as substrings). Returns
    the message."""
    try:
        result = call()
    except Exception as error:
        got, text = server_error(error)
        check(got == class_name,
              f'{what}: raised {got}: {text}, expected {class_name}')
        for needle in needles:
            found = (word(needle, text) if len(needle) == 1
                     else needle in text)
            check(found, f'{what}: the error {text!r} does not name '
                         f'{needle!r}')
        return text
    raise ScenarioFailure(f'{what}: accepted ({result!r}), expected a '
                          f'{class_name} refusal')


def raw_call(port, method, *args, attempts=3):
    """`method` over a bare read-only registration (works while zeoraid is
    failed and refuses writable clients). Returns its result. A connection
    zeoraid closes unanswered is tried again: registered a moment before
    the RAID failed, it was closed with every other client."""
    for attempt in range(attempts):
        client = rs.RawClient(port)
        try:
            client.handshake()
            answer = client.call('register', '1', True)
            if answer is not None:
                check(answer[0], f'read-only register refused: {answer!r}')
                answer = client.call(method, *args)
        finally:
            client.close()
        if answer is not None:
            check(answer[0], f'{method} over a read-only registration '
                             f'failed: {answer!r}')
            return normalize(answer[1])
        time.sleep(0.05)
    raise ScenarioFailure(f'{method} over a read-only registration: zeoraid '
                          f'closed the connection {attempts} times')


def wait_degraded(details, name, reason_prefix, context, timeout=5):
    """Waits until `details()[name]` is 'degraded: <reason_prefix>... (since
    ...)' and returns the reason. A failed recovery is to leave its target
    so; other texts seen first (raid_recovery() may say 'failed' a moment
    before raid_details does) are printed."""
    seen = []

    def degraded():
        text = str(details().get(name, ''))
        reason = rs.degraded_reason(text)
        if reason is not None and reason.startswith(reason_prefix):
            return reason
        if text not in seen:
            seen.append(text)
        return None
    started = time.monotonic()
    try:
        reason = poll(degraded, timeout, f'{context}: {name} degraded')
    except ScenarioFailure:
        raise ScenarioFailure(
            f'{context}: raid_details[{name!r}] is {seen[-1]!r} {timeout} s '
            f'after the recovery failed, expected "degraded: '
            f'{reason_prefix}... (since ...)"') from None
    if seen:
        note(f'(raid_details[{name!r}] was {seen} for '
             f'{time.monotonic() - started:.2f} s after raid_recovery() '
             'said failed)')
    return reason


def check_degraded(db, name, reason_prefix, context):
    """wait_degraded over a ClientStorage's raid_details."""
    return wait_degraded(lambda: rs.raid_details(db), name, reason_prefix,
                         context)


def wait_optimal(db, timeout, what):
    """Waits for raid_status 'optimal'; returns the statuses seen."""
    statuses = []

    def optimal():
        status = rs.raid_status(db)
        if not statuses or statuses[-1] != status:
            statuses.append(status)
        return status == 'optimal'
    try:
        poll(optimal, timeout, f'{what}: raid_status optimal')
    except ScenarioFailure as failure:
        raise ScenarioFailure(
            f'{failure} (statuses seen: {statuses}; raid_recovery(): '
            f'{recovery_info(db)})') from None
    return statuses


# --------------------------------------------------------------------------
# Histories: a Writer commits a varied one


def undo_id(tid):
    """The undo id of a transaction (FileStorage's: the tid, base64)."""
    return base64.encodebytes(tid)[:-1]


class Writer:
    """Commits a varied history through one DB (zeoraid, a backend, or an
    in-process FileStorage), one thread at a time.

    Every step is one or two transactions, each with user, description and
    extension: most change `per_txn` of `objects` MinPO objects; every 25th
    step is a change and the undo of it (records with data_txn
    back-pointers); every 40th step creates an object and undoes that
    (records without data). `transactions` counts the transactions
    committed; `values` the objects' current values.
    """

    def __init__(self, db, name='w', objects=12, per_txn=3):
        self.db = db
        self.name = name
        self.per_txn = per_txn
        self.tm = transaction.TransactionManager()
        self.conn = db.open(self.tm)
        root = self.conn.root()
        self.pool = [MinPO(None) for _ in range(objects)]
        self.slots = [MinPO(None) for _ in range(4)]
        root[f'{name}-pool'] = self.pool
        root[f'{name}-slots'] = self.slots
        self.steps = 0
        self.transactions = 0
        self.undos = 0
        self.uncreations = 0
        self.values = [None] * objects
        self.commit_times = []  # (monotonic end, seconds) of each commit
        self._commit('create', 0)

    def _commit(self, kind, step):
        txn = self.tm.get()
        txn.note(f'{self.name} {kind} {step}')
        txn.setUser(f'user-{self.name}')
        txn.setExtendedInfo('kind', kind)
        txn.setExtendedInfo('step', step)
        started = time.monotonic()
        self.tm.commit()
        ended = time.monotonic()
        self.commit_times.append((ended, ended - started))
        self.transactions += 1

    def _undo(self, tid, kind, step):
        self.db.undo(undo_id(tid), self.tm.get())
        self._commit(kind, step)
        # A new transaction: the undone objects are invalidated.
        self.tm.abort()

    def step(self):
        step = self.steps
        self.steps += 1
        if step % 40 == 39:
            slot = self.slots[step % len(self.slots)]
            slot.value = MinPO(('created', step))
            self._commit('create', step)
            self._undo(slot._p_serial, 'undo-create', step)
            self.uncreations += 1
            return
        n = len(self.pool)
        indexes = [(step * self.per_txn + j) % n for j in range(self.per_txn)]
        old = [self.values[i] for i in indexes]
        for j, i in enumerate(indexes):
            self.pool[i].value = (self.name, step, j)
        self._commit('change', step)
        for j, i in enumerate(indexes):
            self.values[i] = (self.name, step, j)
        if step % 25 == 24:
            self._undo(self.pool[indexes[0]]._p_serial, 'undo', step)
            for i, value in zip(indexes, old):
                self.values[i] = value
            self.undos += 1

    def run(self, transactions):
        """Commits at least `transactions` more transactions."""
        target = self.transactions + transactions
        while self.transactions < target:
            self.step()

    def check_values(self, db, context):
        """A new connection of `db` reads every object's current value."""
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        try:
            pool = conn.root()[f'{self.name}-pool']
            for i, obj in enumerate(pool):
                check(obj.value == self.values[i],
                      f'{context}: {self.name} object #{i} reads '
                      f'{obj.value!r}, expected {self.values[i]!r}')
            for i, slot in enumerate(conn.root()[f'{self.name}-slots']):
                check(slot.value is None,
                      f'{context}: {self.name} slot #{i} reads '
                      f'{slot.value!r}, expected None (creations undone)')
        finally:
            tm.abort()
            conn.close()

    def close(self):
        self.tm.abort()
        self.conn.close()


class Client(threading.Thread):
    """A Writer committing in a loop in a thread of its own: at most `rate`
    transactions a second (None: flat out), until stopped, `transactions`
    more are committed or `limit` seconds passed. Errors are kept, not
    raised: `finish()` (or `check()`) fails the scenario with them."""

    def __init__(self, writer, rate=None, transactions=None, limit=120):
        super().__init__(name=f'client-{writer.name}', daemon=True)
        self.writer = writer
        self.rate = rate
        self.target = (None if transactions is None
                       else writer.transactions + transactions)
        self.stop_event = threading.Event()
        self.deadline = time.monotonic() + limit
        self.error = None

    @property
    def transactions(self):
        return self.writer.transactions

    def run(self):
        due = time.monotonic()
        try:
            while (not self.stop_event.is_set()
                   and time.monotonic() < self.deadline
                   and (self.target is None
                        or self.writer.transactions < self.target)):
                self.writer.step()
                if self.rate:
                    due += 1.0 / self.rate
                    pause = due - time.monotonic()
                    if pause > 0:
                        self.stop_event.wait(pause)
                    else:
                        due = time.monotonic()
        except BaseException:
            self.error = traceback.format_exc()

    def check(self):
        check(self.error is None,
              f'client {self.writer.name} saw an error:\n{self.error}')
        check(self.is_alive() or self.stop_event.is_set()
              or self.target is not None,
              f'client {self.writer.name} stopped early')

    def finish(self, timeout=30):
        self.stop_event.set()
        self.join(timeout)
        check(not self.is_alive(), f'client {self.writer.name} did not stop '
                                   f'within {timeout} s\n'
                                   + rs.thread_stacks())
        self.check()


class Clients:
    """Client threads, each with its own DB (ClientStorage to zeoraid) and
    Writer (created one after the other: they all add to the root)."""

    def __init__(self, rig, raid, names, rate=None, transactions=None,
                 limit=120):
        self.rig = rig
        self.clients = [Client(Writer(rig.db(raid), name), rate,
                               transactions, limit) for name in names]

    def start(self):
        for client in self.clients:
            client.start()
        return self

    def commits(self):
        return sum(c.transactions for c in self.clients)

    def check(self):
        for client in self.clients:
            client.check()

    def run_until(self, commits, what, timeout=30):
        """Waits until the clients made `commits` more transactions."""
        target = self.commits() + commits

        def enough():
            self.check()
            return self.commits() >= target
        poll(enough, timeout, f'{commits} commits by the clients {what}')

    def join(self, timeout=120):
        """Waits for clients started with `transactions`."""
        deadline = time.monotonic() + timeout
        for client in self.clients:
            client.join(max(0.1, deadline - time.monotonic()))
        for client in self.clients:
            check(not client.is_alive(),
                  f'client {client.writer.name} not done within {timeout} s')
            client.check()

    def finish(self, timeout=30):
        for client in self.clients:
            client.stop_event.set()
        for client in self.clients:
            client.finish(timeout)

    def check_values(self, db, context):
        for client in self.clients:
            client.writer.check_values(db, context)

    def longest_commit(self, start, end):
        """The longest commit that ended between `start` and `end`
        (monotonic), seconds."""
        return max((seconds for c in self.clients
                    for ended, seconds in c.writer.commit_times
                    if start <= ended <= end), default=0.0)

    def close(self):
        for client in self.clients:
            client.writer.close()
            self.rig.close_db(client.writer.db)


def write_history(path, transactions, name='w'):
    """Writes a Writer history of at least `transactions` transactions into
    a new FileStorage at `path`, in-process (fast). Returns the Writer
    (closed) with its values."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    db = ZODB.DB(FileStorage(path, create=True))
    try:
        writer = Writer(db, name)
        writer.run(transactions - 1)
        writer.close()
        return writer
    finally:
        db.close()


class _TxnMeta:
    """What FileStorage.tpc_begin reads of a transaction."""

    def __init__(self, txn):
        self.user = txn.user
        self.description = txn.description
        self.extension_bytes = txn.extension_bytes


def changed_record(data, value):
    """A MinPO record (class pickle, state pickle) with another value."""
    stream = io.BytesIO(data)
    unpickler = zodbpickle.pickle.Unpickler(stream)
    unpickler.persistent_load = lambda ref: ref
    unpickler.load()
    return (data[:stream.tell()]
            + zodbpickle.pickle.dumps({'value': value}, 3))


def copy_prefix(source_path, target_path, count, change_index=None):
    """Copies the first `count` transactions of a FileStorage into a new one
    with the same tids, as copyTransactionsFrom does; with `change_index`,
    that transaction's first record gets another value."""
    os.makedirs(os.path.dirname(target_path), exist_ok=True)
    source = FileStorage(source_path, read_only=True)
    target = FileStorage(target_path, create=True)
    try:
        for index, txn in enumerate(source.iterator()):
            if index >= count:
                break
            meta = _TxnMeta(txn)
            target.tpc_begin(meta, txn.tid, txn.status)
            for position, record in enumerate(txn):
                data = record.data
                if index == change_index and position == 0:
                    data = changed_record(data, ('changed', index))
                target.restore(record.oid, record.tid, data, '',
                               record.data_txn, meta)
            target.tpc_vote(meta)
            target.tpc_finish(meta)
    finally:
        source.close()
        target.close()


def history_facts(path):
    """(tids, kinds, back-pointer records, records without data) of a
    FileStorage file; kinds from the Writer's descriptions ('' else)."""
    fs = FileStorage(path, read_only=True)
    try:
        tids, kinds = [], []
        backpointers = uncreations = 0
        for txn in fs.iterator():
            tids.append(txn.tid)
            parts = txn.description.decode('utf-8', 'replace').split()
            kinds.append(parts[1] if len(parts) == 3 else '')
            for record in txn:
                if record.data is None:
                    uncreations += 1
                elif record.data_txn is not None:
                    backpointers += 1
        return tids, kinds, backpointers, uncreations
    finally:
        fs.close()


def count_transactions(path):
    """Transactions in a FileStorage a SIGKILL may have left with a torn
    tail (a copy is opened writable, so that FileStorage repairs it)."""
    return len(rs.read_history(path, repair=True))


def zeo_tids(backend):
    """Every tid a running backend holds (iterated over ZEO, read-only)."""
    storage = ClientStorage(('127.0.0.1', backend.port), '1', read_only=True,
                            wait_timeout=10)
    try:
        return [txn.tid for txn in storage.iterator()]
    finally:
        storage.close()


def zeo_last_transaction(backend):
    storage = ClientStorage(('127.0.0.1', backend.port), '1', read_only=True,
                            wait_timeout=10)
    try:
        return storage.lastTransaction()
    finally:
        storage.close()


def compare(backends, context):
    """compare_histories of stopped backends, as a ScenarioFailure."""
    try:
        return zt.compare_histories([(b.name, b.data_fs) for b in backends],
                                    check_bytes=False)
    except zt.HistoryMismatch as error:
        raise ScenarioFailure(f'{context}: {error}') from None


def stop_all(rig, raid, backends, dbs=()):
    for db in dbs:
        rig.close_db(db)
    code = raid.stop()
    check(code == 0, f'zeoraid exited with {code} on SIGTERM')
    for backend in backends:
        backend.stop()


def check_undo_records(path, context):
    """The history holds back-pointer records and records without data."""
    _, _, backpointers, uncreations = history_facts(path)
    check(backpointers > 0 and uncreations > 0,
          f'{context}: {backpointers} back-pointer records and {uncreations}'
          ' records without data; the Writer should have made both')
    return backpointers, uncreations


# --------------------------------------------------------------------------
# Scenarios


def b_disabled(rig, first=10, recovery=None, **db_options):
    """Backends a and b, a zeoraid over them (`recovery`: its [recovery]
    table), `first` transactions by a Writer on both, then b disabled:
    (a, b, raid, db, writer)."""
    a, b = new_backends(rig, 'ab')
    start_all([a, b])
    raid = rig.zeoraid([a, b], recovery=recovery)
    raid.start()
    db = rig.db(raid, **db_options)
    writer = Writer(db, 'w')
    writer.run(first)
    db.storage._call('raid_disable', 'b')
    rs.wait_status(db, 'degraded', 10, 'after raid_disable b')
    return a, b, raid, db, writer


def scenario_incremental_under_load(rig, args):
    a, b = new_backends(rig, 'ab')
    start_all([a, b])
    raid = rig.zeoraid([a, b])
    raid.start()
    db = rig.db(raid)
    writer = Writer(db, 'w')
    writer.run(50)
    b.kill9()
    rs.wait_status(db, 'degraded', 10, 'after kill -9 of b')
    b_before = count_transactions(b.data_fs)
    # While b is away: a client committing flat out.
    t0 = time.monotonic()
    away = Clients(rig, raid, ['x'], transactions=args.transactions).start()
    away.join(120)
    away_count = away.commits()
    away_seconds = time.monotonic() - t0
    away.close()
    say(f'{away_count} transactions committed with b away in '
        f'{away_seconds:.1f} s')
    handshakes = b.handshakes_logged()
    b.start()
    wait_connected(rig, b, handshakes, 'after b restarted')
    check(rs.raid_status(db) == 'degraded',
          f'with b back but not recovered raid_status is '
          f'{rs.raid_status(db)!r}')
    check(recovery_info(db) is None,
          f'raid_recovery() before any recovery is {recovery_info(db)!r}')
    # During the recovery: three clients, each at most `load_rate`/s.
    load = Clients(rig, raid, ['p', 'q', 'r'], rate=args.load_rate).start()
    load.run_until(20, 'before the recovery')
    at_start = load.commits()
    recovery = Recovery(db, 'b')
    statuses = wait_optimal(db, 90, 'recovery of b under load')
    info = recovery.wait_done(10)
    during = load.commits() - at_start
    longest = load.longest_commit(recovery.called, time.monotonic())
    load.run_until(20, 'after the recovery')
    load.finish()
    check('recovering' in statuses,
          f'raid_status never said recovering while b was recovered (seen '
          f'{statuses})')
    check(info['source'] == 'a', f'the source was {info["source"]!r}')
    check(info['full_verify'] is False,
          f'full_verify is {info["full_verify"]!r} without the option')
    check(info['transactions_verified'] == 1,
          f'{info["transactions_verified"]} transactions verified, expected '
          f'1 (b merely behind: only its newest is compared)')
    copied = info['transactions_copied']
    check(copied >= away_count,
          f'{copied} transactions copied, but {away_count} were committed '
          'while b was away')
    details = rs.raid_details(db)
    check(details == {'a': 'optimal', 'b': 'optimal'},
          f'after the recovery raid_details is {details}')
    check_db = rig.db(raid)
    for w in [writer] + [c.writer for c in away.clients + load.clients]:
        w.check_values(check_db, 'after the recovery')
    writer.close()
    load.close()
    stop_all(rig, raid, [a, b], [db, check_db])
    result = compare([a, b], 'after the recovery')
    check(b_before + copied <= result.transactions,
          f'b had {b_before} transactions, {copied} were copied, but there '
          f'are only {result.transactions}: something was copied twice')
    check(copied < result.transactions,
          f'{copied} transactions copied of {result.transactions}: the '
          'whole history, not only the missing part')
    backpointers, uncreations = check_undo_records(a.data_fs, 'a')
    note(f'b away for {away_count} transactions (committed in '
         f'{away_seconds:.1f} s); recovered in {recovery.seconds():.1f} s '
         f'while 3 clients made {during} commits (longest '
         f'{longest:.2f} s); {copied} copied, '
         f'{info["bytes_copied"]} bytes; {result.transactions} transactions '
         f'({result.records} records, {backpointers} back-pointers, '
         f'{uncreations} undone creations) identical on a and b')


def scenario_empty_target(rig, args):
    a, b = new_backends(rig, 'ab')
    writer = write_history(a.data_fs, args.transactions)
    tids, _, _, _ = history_facts(a.data_fs)
    start_all([a, b])
    raid = rig.zeoraid([a, b])
    raid.start()
    db = rig.db(raid)
    check(rs.raid_status(db) == 'degraded',
          f'with b empty raid_status is {rs.raid_status(db)!r}')
    rs.check_details(rs.raid_details(db), ['b'], 'ab', 'b empty')
    recovery = Recovery(db, 'b')
    info = recovery.wait_done(60)
    check(info['source'] == 'a', f'the source was {info["source"]!r}')
    check(info['transactions_verified'] == 0,
          f'{info["transactions_verified"]} transactions verified of an '
          'empty b, expected 0')
    check(info['transactions_copied'] == len(tids),
          f'{info["transactions_copied"]} transactions copied, a has '
          f'{len(tids)}')
    check(info['tid'] == tids[-1].hex(),
          f'raid_recovery() tid is {info["tid"]}, a\'s last is '
          f'{tids[-1].hex()}')
    check(info['bytes_copied'] > 0, f'bytes_copied is {info["bytes_copied"]}')
    wait_optimal(db, 10, 'after the recovery of b')
    writer.check_values(db, 'after the recovery')
    check_oid_counter(b, a.data_fs)
    writer2 = Writer(db, 'after')
    writer2.run(5)
    writer2.close()
    stop_all(rig, raid, [a, b], [db])
    result = compare([a, b], 'after the recovery of an empty b')
    check(result.transactions == len(tids) + writer2.transactions,
          f'{result.transactions} transactions after the recovery, expected '
          f'{len(tids)} + {writer2.transactions}')
    backpointers, uncreations = check_undo_records(b.data_fs, 'b')
    note(f'empty b recovered from a in {recovery.seconds():.2f} s: '
         f'{info["transactions_copied"]} transactions ({backpointers} '
         f'back-pointers, {uncreations} undone creations), '
         f'{info["bytes_copied"]} bytes; histories identical')


def check_oid_counter(backend, reference_path):
    """The recovered backend's own oid counter is level with the history
    it now holds: a new_oid asked of it directly is above every oid in
    `reference_path` (so new_oids stays unique even when zeoraid's state
    and the source are gone)."""
    fs = FileStorage(reference_path, read_only=True)
    try:
        highest = max(record.oid for txn in fs.iterator() for record in txn)
    finally:
        fs.close()
    storage = ClientStorage(('127.0.0.1', backend.port), '1',
                            wait_timeout=10)
    try:
        fresh = storage.new_oid()
    finally:
        storage.close()
    check(fresh > highest,
          f'backend {backend.name} hands out oid {fresh.hex()} after the '
          f'recovery, but oid {highest.hex()} is in its history')


def write_history_with_blob(path, blob_dir, before, after):
    """Writes `before` plain transactions, one storing a ZODB blob, and
    `after` plain ones into a new FileStorage (with a blob dir); returns
    the blob transaction's tid."""
    import ZODB.blob
    storage = ZODB.blob.BlobStorage(blob_dir, FileStorage(path))
    db = ZODB.DB(storage)
    try:
        conn = db.open()
        root = conn.root()
        for i in range(before):
            root[f'plain-{i}'] = MinPO(i)
            transaction.commit()
        blob = ZODB.blob.Blob()
        with blob.open('w') as f:
            f.write(b'the blob a recovery must not lose' * 100)
        root['blob'] = blob
        transaction.commit()
        blob_tid = root._p_serial
        for i in range(after):
            root[f'later-{i}'] = MinPO(i)
            transaction.commit()
        conn.close()
        return blob_tid
    finally:
        db.close()


def scenario_blob_refused(rig, args):
    """A blob record whose file the source cannot send stops the recovery
    with an error naming its transaction; what came before is copied."""
    a, b = new_backends(rig, 'ab')
    os.makedirs(os.path.dirname(a.data_fs), exist_ok=True)
    blob_tid = write_history_with_blob(
        a.data_fs, os.path.join(rig.workdir, 'blobs-a'), 20, 5)
    tids, _, _, _ = history_facts(a.data_fs)
    before = tids[:tids.index(blob_tid)]
    start_all([a, b])
    raid = rig.zeoraid([a, b])
    raid.start()
    db = rig.db(raid)
    recovery = Recovery(db, 'b')
    info = recovery.wait_failed(30)
    check('blob' in info['error'] and blob_tid.hex() in info['error'],
          f'the recovery failed with {info["error"]!r}, expected an error '
          f'naming the blob transaction {blob_tid.hex()}')
    check(info['transactions_copied'] == len(before),
          f'{info["transactions_copied"]} transactions copied, expected the '
          f'{len(before)} before the blob transaction')
    check_degraded(db, 'b', 'recovery failed', 'after the blob refusal')
    check(zeo_last_transaction(b) == before[-1],
          f'b ends at {zeo_last_transaction(b).hex()}, expected the '
          f'transaction before the blob one, {before[-1].hex()}')
    stop_all(rig, raid, [a, b], [db])
    note(f'blob transaction {blob_tid.hex()} refused after '
         f'{len(before)} transactions copied; b left degraded')


def remove_storage(backend):
    for suffix in ('', '.index', '.lock', '.tmp', '.old'):
        path = backend.data_fs + suffix
        if os.path.exists(path):
            os.remove(path)


def scenario_diverged_refused(rig, args):
    if args.full_verify:
        return scenario_diverged_full_verify(rig, args)
    a, b, raid, db, writer = b_disabled(rig, first=30)
    # b's own transaction, committed straight to its runzeo.
    direct = rig.direct_db(b)
    diverging = rs.commit_value(direct, 'diverging', 1, 'only on b')
    rig.close_db(direct)
    writer.run(20)
    b_last = zeo_last_transaction(b)
    check(b_last == diverging,
          f"b's last transaction is {b_last.hex()}, expected the diverging "
          f'{diverging.hex()}')
    digest = zt.file_digest(b.data_fs)
    size = os.path.getsize(b.data_fs)
    recovery = Recovery(db, 'b')
    info = recovery.wait_failed(30)
    error = info['error']
    check(diverging.hex() in error,
          f'the error {error!r} does not name b\'s diverging tid '
          f'{diverging.hex()}')
    check('empty storage' in error,
          f'the error {error!r} does not say to give b an empty storage')
    check(info['transactions_copied'] == 0,
          f'{info["transactions_copied"]} transactions copied to a diverged'
          ' b')
    check(zt.file_digest(b.data_fs) == digest,
          f"b's Data.fs changed ({size} -> {os.path.getsize(b.data_fs)} "
          'bytes) although its recovery was refused')
    reason = check_degraded(db, 'b', 'recovery failed',
                            'after the refused recovery')
    check(rs.raid_status(db) == 'degraded',
          f'after the refused recovery raid_status is '
          f'{rs.raid_status(db)!r}')
    writer.run(5)
    check(zt.file_digest(b.data_fs) == digest,
          "b's Data.fs changed by commits after the refused recovery")
    # As the error says: an empty storage, and recover again.
    b.stop()
    remove_storage(b)
    handshakes = b.handshakes_logged()
    b.start()
    wait_connected(rig, b, handshakes, 'after b got an empty storage')
    again = Recovery(db, 'b')
    info2 = again.wait_done(60)
    check(info2['transactions_verified'] == 0,
          f'{info2["transactions_verified"]} transactions verified on the '
          'empty b')
    wait_optimal(db, 10, 'after the recovery of the emptied b')
    writer.check_values(db, 'after the recovery')
    writer.close()
    stop_all(rig, raid, [a, b], [db])
    result = compare([a, b], 'after the recovery of the emptied b')
    check(result.transactions == info2['transactions_copied'],
          f'{info2["transactions_copied"]} copied to the empty b, a has '
          f'{result.transactions}')
    note(f'diverged b refused in {recovery.seconds():.2f} s ({reason!r}), '
         'its Data.fs unchanged; emptied, recovered in '
         f'{again.seconds():.2f} s ({result.transactions} transactions)')


def scenario_diverged_full_verify(rig, args):
    a, b, c = new_backends(rig, 'abc')
    writer = write_history(a.data_fs, args.transactions)
    tids, kinds, _, _ = history_facts(a.data_fs)
    # b's newest (prefix - 1) and the two before it are plain changes, so
    # that no back-pointer of the prefix points into the changed one.
    prefix = next(m for m in range(len(tids) * 2 // 3, len(tids) - 5)
                  if all(k == 'change' for k in kinds[m - 3:m]))
    changed = prefix - 3
    copy_prefix(a.data_fs, c.data_fs, prefix)
    copy_prefix(a.data_fs, b.data_fs, prefix, change_index=changed)
    start_all([a, b, c])
    raid = rig.zeoraid([a, b, c])
    raid.start()
    db = rig.db(raid)
    rs.check_details(rs.raid_details(db), ['b', 'c'], 'abc',
                     'b and c behind at start-up')
    missing = len(tids) - prefix
    # c, an exact prefix: every transaction compared, the rest copied.
    recovery_c = Recovery(db, 'c', full_verify=True)
    info = recovery_c.wait_done(60)
    check(info['full_verify'] is True,
          f'full_verify is {info["full_verify"]!r} with the option')
    check(info['transactions_verified'] == prefix,
          f'full_verify of c verified {info["transactions_verified"]} '
          f'transactions, c has {prefix}')
    check(info['transactions_copied'] == missing,
          f'{info["transactions_copied"]} transactions copied to c, '
          f'{missing} missing')
    # b: the same prefix with transaction #changed different.
    digest = zt.file_digest(b.data_fs)
    recovery_b = Recovery(db, 'b', full_verify=True)
    info = recovery_b.wait_failed(60)
    error = info['error']
    check(tids[changed].hex() in error,
          f'the error {error!r} does not name the changed transaction '
          f'{tids[changed].hex()} (#{changed} of {prefix})')
    check('empty storage' in error,
          f'the error {error!r} does not say to give b an empty storage')
    check(info['transactions_copied'] == 0,
          f'{info["transactions_copied"]} transactions copied to b')
    check(zt.file_digest(b.data_fs) == digest,
          "b's Data.fs changed although its full verification failed")
    check_degraded(db, 'b', 'recovery failed', 'after full_verify failed')
    # Incremental: only b's newest transaction is compared, and it agrees.
    incremental = Recovery(db, 'b')
    info = incremental.wait_done(60)
    check(info['transactions_verified'] == 1,
          f'the incremental recovery verified '
          f'{info["transactions_verified"]} transactions, expected 1')
    check(info['transactions_copied'] == missing,
          f'{info["transactions_copied"]} transactions copied to b, '
          f'{missing} missing')
    wait_optimal(db, 10, 'after the recoveries')
    writer.check_values(db, 'after the recoveries')
    stop_all(rig, raid, [a, b, c], [db])
    result = compare([a, c], 'a and c after full_verify')
    try:
        zt.compare_histories([('a', a.data_fs), ('b', b.data_fs)],
                             check_bytes=False)
    except zt.HistoryMismatch as mismatch:
        found = str(mismatch)
    else:
        raise ScenarioFailure(
            'a and b are identical although b\'s transaction '
            f'#{changed} was changed')
    check(tids[changed].hex() in found,
          f'compare_histories found {found!r}, expected the difference at '
          f'{tids[changed].hex()}')
    note(f'c (prefix of {prefix}) full_verify: {prefix} verified, {missing}'
         f' copied, identical ({result.transactions}); b with transaction '
         f'#{changed} changed: full_verify failed naming it '
         f'({recovery_b.seconds():.2f} s), b unchanged; incremental passed '
         '(1 verified), leaving the earlier difference')


def scenario_rate_limit(rig, args):
    if args.under_load:
        return scenario_rate_limit_under_load(rig, args)
    limit = 100
    todo = args.transactions
    a, b, raid, db, writer = b_disabled(
        rig, recovery={'transactions_per_second': limit,
                       'progress_interval': 1})
    before = writer.transactions
    writer.run(todo)
    todo = writer.transactions - before
    details_seen = []
    recovery = Recovery(db, 'b')
    while True:
        info = recovery.sample()
        if info is not None and info['state'] != 'running':
            break
        details_seen.append(rs.raid_details(db)['b'])
        time.sleep(0.2)
        check(time.monotonic() - recovery.called < 60,
              f'the recovery of {todo} transactions at {limit}/s takes over '
              '60 s')
    info = recovery.wait_done(5)
    seconds = info['finished'] - info['started']
    minimum = todo / limit - 1.0
    check(recovery.seconds() >= minimum and seconds >= minimum,
          f'{todo} transactions copied in {recovery.seconds():.2f} s '
          f'(zeoraid says {seconds:.2f} s) with a limit of {limit}/s: '
          f'expected at least {minimum:.1f} s')
    check(info['transactions_copied'] == todo,
          f'{info["transactions_copied"]} transactions copied, {todo} '
          'missing')
    check(info['limits'] == {'transactions_per_second': limit,
                             'bytes_per_second': 0},
          f'limits {info["limits"]}, expected {limit} transactions/s from '
          'the config and no byte limit')
    rates = recovery.rates()
    check(rates and max(rates) > 0,
          f'no rate reported while copying: {rates}')
    check(max(rates) <= limit * 1.5,
          f'reported rates {rates} exceed the limit {limit}/s by more than '
          'half')
    check(any(limit * 0.5 <= r for r in rates),
          f'reported rates {rates} never came near the limit {limit}/s')
    etas = [info['eta_seconds'] for _, info in recovery.samples
            if info['state'] == 'running' and info['phase'] == 'copying']
    check(any(isinstance(eta, (int, float)) and eta > 0 for eta in etas),
          f'no eta_seconds reported while copying at {limit}/s: {etas}')
    check(any(t.startswith('recovering:') for t in details_seen),
          f'raid_details["b"] never said "recovering: ..." while copying: '
          f'{sorted(set(details_seen))[:5]}')
    wait_optimal(db, 10, 'after the recovery')
    # progress_interval = 1: a progress line about every second.
    logged = [line for line in raid.log().splitlines()
              if 'recovering backend=b progress=copying from a' in line]
    check(len(logged) >= int(seconds) - 2,
          f'{len(logged)} progress lines logged in a {seconds:.1f} s '
          f'recovery with progress_interval 1: {logged[:3]}')
    writer.check_values(db, 'after the recovery')
    writer.close()
    stop_all(rig, raid, [a, b], [db])
    compare([a, b], 'after the rate-limited recovery')
    note(f'{todo} transactions at {limit}/s: {recovery.seconds():.2f} s '
         f'(at least {minimum:.1f} s expected), reported rates '
         f'{min(rates):.0f}..{max(rates):.0f}/s, {len(logged)} progress '
         'lines logged; histories identical')


def scenario_rate_limit_under_load(rig, args):
    limit = 20
    # The config's limit is overridden by raid_recover's option.
    a, b, raid, db, writer = b_disabled(
        rig, recovery={'transactions_per_second': 1000})
    writer.run(args.transactions)
    load = Clients(rig, raid, ['p', 'q', 'r'], rate=args.load_rate).start()
    load.run_until(3 * limit, 'before the recovery')
    at_start = load.commits()
    recovery = Recovery(db, 'b', transactions_per_second=limit)
    wait_optimal(db, 60, f'recovery at {limit}/s under a heavier load')
    info = recovery.wait_done(10)
    during = load.commits() - at_start
    longest = load.longest_commit(recovery.called, time.monotonic())
    load.run_until(5, 'after the recovery')
    load.finish()
    commit_rate = during / recovery.seconds()
    check(commit_rate > limit,
          f'the clients committed {commit_rate:.0f}/s during the recovery, '
          f'not above the limit {limit}/s: no overload was tested')
    check(info['limits']['transactions_per_second'] == limit,
          f'limits {info["limits"]}, expected the option\'s {limit}/s')
    check(info['transactions_copied'] >= args.transactions,
          f'{info["transactions_copied"]} transactions copied, at least '
          f'{args.transactions} were missing')
    load.check_values(db, 'after the recovery')
    writer.check_values(db, 'after the recovery')
    writer.close()
    load.close()
    stop_all(rig, raid, [a, b], [db])
    result = compare([a, b], 'after the recovery under load')
    note(f'limit {limit}/s, clients committing {commit_rate:.0f}/s (longest '
         f'commit {longest:.2f} s): '
         f'recovered in {recovery.seconds():.1f} s, '
         f'{info["transactions_copied"]} copied; {result.transactions} '
         'transactions identical')


def scenario_refusals(rig, args):
    a, b, c = new_backends(rig, 'abc')
    start_all([a, b, c])
    raid = rig.zeoraid([a, b, c])
    raid.start()
    db = rig.db(raid)
    writer = Writer(db, 'w')
    writer.run(10)
    for name in 'bc':
        db.storage._call('raid_disable', name)
    rs.check_details(rs.raid_details(db), ['b', 'c'], 'abc',
                     'b and c disabled')
    writer.run(120)
    expect_refusal(lambda: recover(db, 'a'), 'builtins.ValueError',
                   ['a', 'optimal'], 'raid_recover of optimal a')
    expect_refusal(lambda: recover(db, 'x'), 'builtins.ValueError', ['x'],
                   'raid_recover of an unknown backend x')
    recovery = Recovery(db, 'b', transactions_per_second=20)
    recovery.wait_copying(1, 15)
    status = rs.raid_status(db)
    check(status == 'recovering',
          f'while b is recovered raid_status is {status!r}')
    details = rs.raid_details(db)
    check(details['b'].startswith('recovering:'),
          f'while b is recovered raid_details["b"] is {details["b"]!r}')
    check(details['c'].startswith('degraded'),
          f'while b is recovered raid_details["c"] is {details["c"]!r}')
    second = expect_refusal(lambda: recover(db, 'c'), 'builtins.ValueError',
                            ['b', 'already running'],
                            'raid_recover of c while b is recovered')
    expect_refusal(lambda: recover(db, 'b'), 'builtins.ValueError',
                   ['b'],
                   'raid_recover of b while b is recovered')
    expect_refusal(lambda: recover(db, 'a'), 'builtins.ValueError',
                   ['a'],
                   'raid_recover of optimal a while b is recovered')
    pack = expect_refusal(lambda: db.pack(), 'ZODB.POSException.StorageError',
                          ['b', 'recover'], 'pack while b is recovered')
    info = recovery.sample()
    check(info['state'] == 'running',
          f'the refusals ended the recovery of b: {info}')
    writer.run(5)
    recovery.wait_done(60)
    # And the other way round: a recovery is refused while a pack runs
    # (b held with SIGSTOP keeps the pack running).
    b.sigstop()
    packing = threading.Thread(target=db.pack, daemon=True)
    try:
        packing.start()
        time.sleep(0.5)
        during_pack = expect_refusal(
            lambda: recover(db, 'c'), 'builtins.ValueError', ['pack'],
            'raid_recover of c while a pack runs')
    finally:
        b.sigcont()
    packing.join(30)
    check(not packing.is_alive(), 'the pack did not end after SIGCONT of b')
    # The pack dropped transactions c (degraded meanwhile) still holds:
    # its history is no longer a prefix of the others', so it starts from
    # an empty storage.
    c.stop()
    remove_storage(c)
    handshakes = c.handshakes_logged()
    c.start()
    wait_connected(rig, c, handshakes, 'after c got an empty storage')
    recovery_c = Recovery(db, 'c')
    recovery_c.wait_done(30)
    wait_optimal(db, 10, 'after b and c were recovered')
    db.pack()
    writer.check_values(db, 'after the pack')
    writer.close()
    stop_all(rig, raid, [a, b, c], [db])
    compare([a, b, c], 'after both recoveries and a pack')
    note(f'refused while b was recovered: c ({second!r}), pack ({pack!r}),'
         f' optimal a, unknown x; while a pack ran: c ({during_pack!r}); '
         'then c recovered and the pack went through')


def scenario_kill_target(rig, args):
    a, b, raid, db, writer = b_disabled(rig)
    writer.run(args.transactions)
    load = Clients(rig, raid, ['p', 'q'], rate=args.load_rate).start()
    recovery = Recovery(db, 'b', transactions_per_second=50)
    at_kill = recovery.wait_copying(40, 20)
    b.kill9()
    killed_at = time.monotonic()
    info = recovery.wait_failed(20)
    failed_after = time.monotonic() - killed_at
    reason = check_degraded(db, 'b', 'recovery failed',
                            'after b was killed mid-copy')
    check(rs.raid_status(db) == 'degraded',
          f'with b killed raid_status is {rs.raid_status(db)!r}')
    load.run_until(10, 'after b was killed mid-copy')
    handshakes = b.handshakes_logged()
    b.start()
    wait_connected(rig, b, handshakes, 'after b restarted')
    again = Recovery(db, 'b')
    wait_optimal(db, 60, 'the second recovery of b')
    info2 = again.wait_done(10)
    # Killed mid-write, b's FileStorage may have cut off a torn transaction
    # at its restart yet still report it as its last: then zeoraid finds
    # where b really ends by verifying all of it.
    torn = 'does not hold the transaction it reports as its last' in raid.log()
    if torn:
        check(info2['transactions_verified'] > 1,
              f'b reported a torn last transaction, but the second recovery '
              f'verified only {info2["transactions_verified"]}')
    else:
        check(info2['transactions_verified'] == 1,
              f'the second recovery verified {info2["transactions_verified"]} '
              'transactions, expected 1')
    load.run_until(5, 'after the second recovery')
    load.finish()
    load.check_values(db, 'after the second recovery')
    writer.check_values(db, 'after the second recovery')
    writer.close()
    load.close()
    stop_all(rig, raid, [a, b], [db])
    result = compare([a, b], 'after the second recovery')
    note(f'b killed after {at_kill["transactions_copied"]} copied: failed '
         f'{failed_after:.2f} s later ({info["error"]!r}; b {reason!r}); '
         f'the clients went on ({load.commits()} commits); recovered '
         f'again: {info2["transactions_copied"]} copied, '
         f'{result.transactions} transactions identical')


def scenario_kill_source(rig, args):
    if args.backends == 2:
        return scenario_kill_only_source(rig, args)
    backends = new_backends(rig, 'abc')
    by_name = {b.name: b for b in backends}
    start_all(backends)
    raid = rig.zeoraid(backends)
    raid.start()
    db = rig.db(raid)
    writer = Writer(db, 'w')
    writer.run(10)
    db.storage._call('raid_disable', 'c')
    rs.wait_status(db, 'degraded', 10, 'after raid_disable c')
    writer.run(args.transactions)
    load = Clients(rig, raid, ['p', 'q'], rate=args.load_rate).start()
    recovery = Recovery(db, 'c', transactions_per_second=50)
    at_kill = recovery.wait_copying(40, 20)
    source = at_kill['source']
    check(source in ('a', 'b'), f'the source is {source!r}, expected a or b')
    other = 'b' if source == 'a' else 'a'
    by_name[source].kill9()
    say(f'killed the source {source}')
    info = recovery.wait_end(60, ' after its source was killed')
    check(info['state'] == 'done',
          f'the recovery of c ended {info["state"]!r} after its source '
          f'{source} was killed (with {other} still optimal): '
          f'{info["error"]!r}')
    check(info['source'] == other,
          f'after {source} was killed the source is {info["source"]!r}, '
          f'expected {other}')
    sources = {i['source'] for _, i in recovery.samples}
    load.run_until(10, 'after the recovery')
    load.finish()
    details = rs.raid_details(db)
    rs.check_details(details, [source], 'abc', 'after the recovery')
    load.check_values(db, 'after the recovery')
    writer.check_values(db, 'after the recovery')
    writer.close()
    load.close()
    survivors = [by_name[other], by_name['c']]
    stop_all(rig, raid, survivors, [db])
    result = compare(survivors, 'survivors after the recovery')
    note(f'source {source} killed after {at_kill["transactions_copied"]} '
         f'copied; sources seen {sorted(sources)}; done from {other} '
         f'({info["transactions_copied"]} copied); {result.transactions} '
         f'transactions identical on {other} and c')


def scenario_kill_only_source(rig, args):
    a, b, raid, db, writer = b_disabled(rig, wait_timeout=3)
    writer.run(args.transactions)
    writer.close()
    recovery = Recovery(db, 'b', transactions_per_second=50)
    at_kill = recovery.wait_copying(40, 20)
    a.kill9()
    killed_at = time.monotonic()

    def ended():
        info = raw_call(raid.port, 'raid_recovery')
        return info if info and info['state'] != 'running' else None
    info = poll(ended, 30, 'the recovery to end after its only source died')
    failed_after = time.monotonic() - killed_at
    check(info['state'] == 'failed',
          f'the recovery ended {info["state"]!r} with its only source '
          f'killed: {info}')
    check(info['error'], f'the failed recovery has no error: {info}')
    wait_degraded(lambda: raw_call(raid.port, 'raid_details'), 'b',
                  'recovery failed', 'after its only source died')
    status = raw_call(raid.port, 'raid_status')
    check(status == 'failed',
          f'with a killed and b not recovered raid_status is {status!r}')
    details = raw_call(raid.port, 'raid_details')
    check(rs.degraded_reason(str(details['a'])) is not None,
          f"raid_details['a'] is {details['a']!r}, expected degraded")
    check(raid.is_running(), 'zeoraid exited when its last source died')
    rig.close_db(db)
    code = raid.stop()
    check(code == 0, f'zeoraid exited with {code} on SIGTERM')
    b.stop()
    history_a = rs.read_history(a.data_fs, repair=True)
    history_b = rs.read_history(b.data_fs)
    rs.check_prefix(history_b, history_a, 'b after the failed recovery')
    note(f'a killed after {at_kill["transactions_copied"]} copied: the '
         f'recovery failed {failed_after:.2f} s later ({info["error"]!r}); '
         f'raid_status failed; b holds {len(history_b)} of '
         f'{len(history_a)} transactions, a prefix')


def scenario_torn_target(rig, args):
    """b's Data.fs ends inside one of a's transactions, as after a kill
    mid-write: its FileStorage cuts the torn transaction off at start-up
    but still reports it as its last. The recovery finds where b really
    ends (verifying all of it) and copies the rest."""
    a, b, raid, db, writer = b_disabled(rig)
    writer.run(args.transactions)
    b.stop()
    fs = FileStorage(a.data_fs, read_only=True)
    try:
        txns = [(t.tid, t._tpos, t._tend) for t in fs.iterator()]
    finally:
        fs.close()
    kept = len(txns) // 2
    torn_tid, start, end = txns[kept]
    with open(a.data_fs, 'rb') as source, open(b.data_fs, 'wb') as target:
        target.write(source.read(start + (end - start) // 2))
    for suffix in ('.index', '.lock', '.tmp'):
        if os.path.exists(b.data_fs + suffix):
            os.remove(b.data_fs + suffix)
    handshakes = b.handshakes_logged()
    b.start()
    wait_connected(rig, b, handshakes, 'after b got a torn Data.fs')
    check(zeo_last_transaction(b) == torn_tid,
          f'b reports {zeo_last_transaction(b).hex()} as its last, expected '
          f'the torn {torn_tid.hex()} (FileStorage no longer misreports: '
          'this scenario tests nothing then)')
    recovery = Recovery(db, 'b')
    info = recovery.wait_done(60)
    check(info['transactions_verified'] == kept,
          f'{info["transactions_verified"]} transactions verified, expected '
          f'the {kept} b really holds')
    check(info['transactions_copied'] == len(txns) - kept,
          f'{info["transactions_copied"]} copied, expected '
          f'{len(txns) - kept}')
    wait_optimal(db, 10, 'after the recovery of the torn b')
    writer.check_values(db, 'after the recovery')
    writer.close()
    stop_all(rig, raid, [a, b], [db])
    result = compare([a, b], 'after the recovery of the torn b')
    note(f'b cut inside transaction {kept + 1} of {len(txns)} (reporting '
         f'{torn_tid.hex()}): {kept} verified, '
         f'{info["transactions_copied"]} copied; {result.transactions} '
         'transactions identical')


def scenario_restart_resume(rig, args):
    a, b, raid, db, writer = b_disabled(rig)
    b_last_before = zeo_last_transaction(b)
    writer.run(args.transactions)
    writer.close()
    recovery = Recovery(db, 'b', transactions_per_second=50)
    recovery.wait_copying(60, 20)
    copied_before = recovery.sample()['transactions_copied']
    rig.close_db(db)
    code = raid.stop()
    check(code == 0, f'zeoraid exited with {code} on SIGTERM mid-copy')
    a_tids = zeo_tids(a)
    b_last = zeo_last_transaction(b)
    check(b_last in a_tids,
          f"b's last transaction {b_last.hex()} after the stop is not one "
          "of a's")
    missing = sum(1 for t in a_tids if t > b_last_before)
    remaining = sum(1 for t in a_tids if t > b_last)
    check(missing - remaining >= copied_before,
          f'raid_recovery() said {copied_before} copied, but b has only '
          f'{missing - remaining} of the {missing} missing')
    raid.start()
    rs.wait_serving(raid, 15, 'zeoraid restarted mid-recovery')
    db = rig.db(raid)
    check(rs.raid_status(db) == 'degraded',
          f'after the restart raid_status is {rs.raid_status(db)!r}')
    reasons = rs.check_details(rs.raid_details(db), ['b'], 'ab',
                               'after the restart')
    check(recovery_info(db) is None,
          f'after the restart raid_recovery() is {recovery_info(db)!r}, '
          'expected None (no recovery since start)')
    resumed = Recovery(db, 'b')
    info = resumed.wait_done(60)
    check(info['transactions_verified'] == 1,
          f'the resumed recovery verified {info["transactions_verified"]} '
          'transactions, expected 1')
    check(info['transactions_copied'] == remaining,
          f'the resumed recovery copied {info["transactions_copied"]} '
          f'transactions; b had {missing - remaining} of the {missing} '
          f'missing at the restart, so {remaining} remained')
    wait_optimal(db, 10, 'after the resumed recovery')
    writer.check_values(db, 'after the resumed recovery')
    stop_all(rig, raid, [a, b], [db])
    result = compare([a, b], 'after the resumed recovery')
    note(f'zeoraid stopped after {copied_before} of {missing} copied (b '
         f'then had {missing - remaining}); after the restart b is degraded '
         f'({reasons["b"]!r}); resumed: 1 verified, '
         f'{remaining} copied; {result.transactions} transactions identical')


SCENARIOS = {
    'incremental_under_load': scenario_incremental_under_load,
    'empty_target': scenario_empty_target,
    'diverged_refused': scenario_diverged_refused,
    'rate_limit': scenario_rate_limit,
    'refusals': scenario_refusals,
    'kill_target': scenario_kill_target,
    'kill_source': scenario_kill_source,
    'restart_resume': scenario_restart_resume,
    'blob_refused': scenario_blob_refused,
    'torn_target': scenario_torn_target,
}

# Transactions each scenario writes (--transactions overrides).
DEFAULT_TRANSACTIONS = {
    'incremental_under_load': 2000,
    'empty_target': 300,
    'diverged_refused': 150,
    'rate_limit': 400,
    'refusals': 120,
    'kill_target': 300,
    'kill_source': 300,
    'restart_resume': 400,
    'blob_refused': 0,
    'torn_target': 60,
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('scenario', choices=sorted(SCENARIOS))
    parser.add_argument('--backends', type=int, default=3, choices=(2, 3),
                        help='kill_source: 3 (another source remains) or 2')
    parser.add_argument('--full-verify', action='store_true',
                        help='diverged_refused: the full_verify variant')
    parser.add_argument('--under-load', action='store_true',
                        help='rate_limit: clients committing above the limit')
    parser.add_argument('--transactions', type=int, default=None,
                        help='transactions to write (scenario default)')
    parser.add_argument('--load-rate', type=float, default=15.0,
                        help='transactions/s of each client committing '
                             'during a recovery (0: flat out)')
    parser.add_argument('--deadline', type=float, default=100.0)
    parser.add_argument('--keep', action='store_true')
    parser.add_argument('-v', '--verbose', action='store_true')
    args = parser.parse_args(argv)
    if args.transactions is None:
        args.transactions = DEFAULT_TRANSACTIONS[args.scenario]
        if args.under_load:
            # At the limit's net rate (live commits add as much work as
            # credit), this takes a few seconds.
            args.transactions = 80
    rs.VERBOSE = args.verbose
    zt.exit_with_parent()
    rig = Rig(f'recovery-{args.scenario}', keep=args.keep)
    rs.start_watchdog(args.deadline, rig)
    started = time.monotonic()
    if not rs.run_scenario(rig, SCENARIOS[args.scenario], args):
        return 1
    variant = ''
    if args.scenario == 'kill_source':
        variant = f', {args.backends} backends'
    elif args.full_verify:
        variant = ', full_verify'
    elif args.under_load:
        variant = ', under load'
    print(f'recovery scenario {args.scenario}: ok '
          f'({time.monotonic() - started:.1f} s{variant})', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
