#!/usr/bin/env python
"""RAID-1 scenarios: real runzeo backends, real ZODB clients, one zeoraid.

Every subcommand starts its own backends (`runzeo` subprocesses, so that
they can be killed with SIGKILL, stopped with SIGSTOP and restarted on the
same port and Data.fs) and its own zeoraid, and checks what ZODB clients
(ZODB.DB over ClientStorage, each its own) see while backends fail:

  kill-one       Kill -9 one backend (of --backends N, 2 or 3) while four
                 client threads commit and load in a loop, each writing its
                 own objects: no client sees an error, raid_status goes to
                 'degraded', raid_details names the backend and a reason,
                 every transaction a client saw committed is on every
                 survivor (read from their Data.fs after stopping them), the
                 survivors' histories are identical, and the killed
                 backend's history is a prefix of theirs.
  hang           SIGSTOP one of two backends (timeouts call 2, heartbeat
                 0.5, commit 5): degraded within the timeouts, clients go on
                 without errors; after SIGCONT (and zeoraid reconnecting to
                 it) it stays degraded while clients keep committing, and it
                 gets none of the later transactions.
  restart-degraded
                 A backend killed (degraded), restarted and reachable again;
                 zeoraid restarted with the same state dir: the backend is
                 still degraded with the original reason and time, and gets
                 no new transactions. (zeoraid is restarted after SIGKILL.)
  restart-cycles Graceful stops and starts of zeoraid (--cycles N) with
                 both backends optimal and a commit each time: both stay
                 optimal (nothing is recorded as degraded by a stop).
  startup-down   Start-up with one backend's port closed and, separately,
                 with one backend that accepts TCP but never answers
                 (connect = 2): zeoraid serves within the connect timeout
                 and reports that backend 'unreachable at start-up'.
  stale-survivor Backends a and b; b disabled; more commits go to a;
                 zeoraid and a stopped; b running; zeoraid started again:
                 it must not serve b's stale data: it exits with an error
                 naming each backend's state (or refuses clients).
                 With --then-current-returns: afterwards a comes back and
                 zeoraid, started again, serves a's (current) data.
  conflict       Two clients race on one object: the loser gets a real
                 ZODB.POSException.ConflictError, both backends stay optimal.
  conflict-resolution
                 Backends with client-conflict-resolution: a BTrees.Length
                 incremented concurrently by two clients resolves (on the
                 client) and ends with the right total.
  fail-close     fail_mode "close", both backends killed: clients are
                 disconnected and new connections refused.
  fail-read-only fail_mode "read-only", min_optimal 2, one backend killed:
                 commits get ReadOnlyError while loads still work.

Options: --deadline S (the whole scenario; on expiry thread stacks and logs
are printed and everything is killed), --keep (keep the work dir), -v.

Exit status 0 on success, the last line then `raid scenario NAME: ok
(...)`. On failure the reason, then zeoraid's log and the backends' log
tails go to stderr and the exit status is 1.
"""

import argparse
import faulthandler
import io
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import zeoraid_testing as zt  # noqa: E402

import transaction  # noqa: E402
import ZODB  # noqa: E402
from BTrees.Length import Length  # noqa: E402
from ZEO.ClientStorage import ClientStorage  # noqa: E402
from ZEO.Exceptions import ClientDisconnected  # noqa: E402
from ZODB.FileStorage import FileStorage  # noqa: E402
from ZODB.POSException import ConflictError  # noqa: E402
from ZODB.POSException import ReadOnlyError  # noqa: E402
from ZODB.tests.MinPO import MinPO  # noqa: E402
from ZODB.utils import u64  # noqa: E402


VERBOSE = False
STARTED = time.monotonic()
# zeoraid's connections to each backend: one for everything, one for blob
# downloads (a backend's log counts both).
ZEORAID_LINKS = 2


def say(*args):
    if VERBOSE:
        print(f'[{time.monotonic() - STARTED:6.2f}]', *args, flush=True)


def note(*args):
    """Always printed: what the Rust test shows on success."""
    print(*args, flush=True)


ScenarioFailure = zt.ScenarioFailure
check = zt.check


def poll(predicate, timeout, what):
    """zeoraid_testing.wait_until, failing the scenario (ScenarioFailure)
    instead of raising a bare AssertionError."""
    try:
        return zt.wait_until(predicate, timeout, what=what)
    except AssertionError as error:
        raise ScenarioFailure(str(error)) from None


def tid_hex(tid):
    return tid.hex() if isinstance(tid, bytes) else repr(tid)


# --------------------------------------------------------------------------
# Backends: runzeo subprocesses

_children = set()
_children_lock = threading.Lock()


def _track(proc):
    with _children_lock:
        _children.add(proc)


def _kill_tracked():
    with _children_lock:
        procs = list(_children)
        _children.clear()
    for proc in procs:
        if proc.poll() is None:
            try:
                # A SIGSTOPped process dies of SIGKILL too.
                proc.kill()
                proc.wait(5)
            except Exception:
                pass


def kill_everything():
    _kill_tracked()
    zt.kill_children()


import atexit  # noqa: E402
atexit.register(_kill_tracked)


def runzeo_binary():
    path = os.path.join(os.path.dirname(sys.executable), 'runzeo')
    if not os.access(path, os.X_OK):
        raise RuntimeError(f'runzeo not found beside {sys.executable}')
    return path


class RunZeo:
    """A real ZEO server: `runzeo -C zeo.conf` serving a FileStorage
    (`Data.fs`) in `directory`, on 127.0.0.1 at a port kept across
    restarts. Its event log is zeo.log and its own output runzeo.out."""

    def __init__(self, name, directory, encoding='pickle', extra_zeo=()):
        self.name = name
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.encoding = encoding
        self.extra_zeo = list(extra_zeo)
        self.port = None
        self.proc = None
        self.stopped = False

    @property
    def data_fs(self):
        return os.path.join(self.directory, 'Data.fs')

    @property
    def zeo_log(self):
        return os.path.join(self.directory, 'zeo.log')

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def config_text(self):
        lines = ['<zeo>', f'  address 127.0.0.1:{self.port}']
        if self.encoding == 'msgpack':
            lines.append('  msgpack true')
        lines.extend(f'  {line}' for line in self.extra_zeo)
        lines += ['</zeo>', '',
                  '<filestorage 1>', f'  path {self.data_fs}',
                  '</filestorage>', '',
                  '<eventlog>', '  level INFO', '  <logfile>',
                  f'    path {self.zeo_log}', '  </logfile>', '</eventlog>']
        return '\n'.join(lines) + '\n'

    def spawn(self):
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f'backend {self.name} already running')
        if self.port is None:
            self.port = zt.free_port()
        conf = os.path.join(self.directory, 'zeo.conf')
        with open(conf, 'w') as f:
            f.write(self.config_text())
        env = dict(os.environ)
        env.pop('ZEO_MSGPACK', None)
        with open(os.path.join(self.directory, 'runzeo.out'), 'ab') as out:
            self.proc = subprocess.Popen(
                [runzeo_binary(), '-C', conf], stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, cwd=self.directory,
                env=env)
        _track(self.proc)
        self.stopped = False

    def wait_ready(self, timeout=30):
        zt.wait_for_port(self.port, timeout, process=self.proc,
                         what=f'runzeo {self.name}')

    def start(self, timeout=30):
        self.spawn()
        self.wait_ready(timeout)

    def kill9(self):
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop(self, timeout=10):
        """Graceful: SIGTERM (runzeo closes the storage), SIGKILL after
        `timeout` s."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            if self.stopped:
                os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def sigstop(self):
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.stopped = True

    def sigcont(self):
        os.kill(self.proc.pid, signal.SIGCONT)
        self.stopped = False

    def handshakes_logged(self):
        """How many client connections the server has logged (zeoraid
        makes ZEORAID_LINKS to each backend)."""
        try:
            with open(self.zeo_log, errors='replace') as f:
                return f.read().count('received handshake')
        except FileNotFoundError:
            return 0

    def log_tail(self, lines=30):
        parts = []
        for name in ('zeo.log', 'runzeo.out'):
            path = os.path.join(self.directory, name)
            try:
                with open(path, errors='replace') as f:
                    text = f.read().splitlines()
            except FileNotFoundError:
                continue
            parts.append(f'--- backend {self.name} {path} (last {lines} '
                         f'lines):\n' + '\n'.join(text[-lines:]))
        return '\n'.join(parts)


def start_backends(rig, names, **kw):
    """Starts runzeo backends in parallel (their start-up is mostly Python
    imports)."""
    backends = [RunZeo(name, os.path.join(rig.workdir, f'backend-{name}'),
                       **kw) for name in names]
    for backend in backends:
        backend.spawn()
    for backend in backends:
        backend.wait_ready()
    rig.backends.extend(backends)
    say('backends', ', '.join(f'{b.name}:{b.port} pid {b.pid}'
                              for b in backends))
    return backends


# --------------------------------------------------------------------------
# The rig: work dir, zeoraid, clients, diagnostics


class Rig:
    def __init__(self, name, keep=False):
        self.name = name
        self.keep = keep
        self.workdir = tempfile.mkdtemp(prefix=f'zeoraid-raid-{name}-')
        self.backends = []
        self.raids = []
        self.dbs = []
        self.extra_logs = []   # (title, path)
        zt.quiet_logging(os.path.join(self.workdir, 'python.log'))

    def zeoraid(self, backends, timeouts=None, extra_server=(),
                name='zeoraid'):
        base = {'shutdown': 5}
        base.update(timeouts or {})
        raid = zt.Zeoraid(
            backends=[(b.name, b.port, '1') if isinstance(b, RunZeo) else b
                      for b in backends],
            storage='1', encoding='msgpack',
            workdir=os.path.join(self.workdir, name), port=zt.free_port(),
            timeouts=base, extra_server=extra_server)
        self.raids.append(raid)
        return raid

    def db(self, raid, wait_timeout=10, **kw):
        storage = ClientStorage(raid.address, '1', wait_timeout=wait_timeout,
                                **kw)
        db = ZODB.DB(storage)
        self.dbs.append(db)
        return db

    def close_db(self, db, timeout=10):
        """Closes a DB in a thread, at most `timeout` s."""
        if db in self.dbs:
            self.dbs.remove(db)
        done = threading.Event()

        def close():
            try:
                db.close()
            except Exception:
                pass
            done.set()
        threading.Thread(target=close, daemon=True).start()
        return done.wait(timeout)

    def diagnostics(self):
        parts = []
        for raid in self.raids:
            parts.append(f'--- zeoraid log {raid.log_path}:\n'
                         f'{raid.log_tail(400)}')
            state = os.path.join(raid.state_dir, 'raid-state.json')
            if os.path.exists(state):
                with open(state) as f:
                    parts.append(f'--- {state}:\n{f.read()}')
        for title, path in self.extra_logs:
            try:
                with open(path, errors='replace') as f:
                    parts.append(f'--- {title} {path}:\n{f.read()}')
            except FileNotFoundError:
                pass
        for backend in self.backends:
            parts.append(backend.log_tail())
        return '\n'.join(parts)

    def cleanup(self):
        for db in list(self.dbs):
            self.close_db(db, 5)
        for raid in self.raids:
            try:
                raid.stop(5)
            except Exception:
                pass
        for backend in self.backends:
            try:
                backend.kill9()
            except Exception:
                pass
        kill_everything()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def raid_status(db):
    return db.storage._call('raid_status')


def raid_details(db):
    details = db.storage._call('raid_details')
    return {str(k): str(v) for k, v in dict(details).items()}


DEGRADED = re.compile(
    r'^degraded: (?P<reason>.+) \(since (?P<since>\d{4}-\d\d-\d\dT'
    r'\d\d:\d\d:\d\dZ)\)$', re.S)


def degraded_reason(text):
    """The reason of a 'degraded: <reason> (since <time>)' text, or None."""
    match = DEGRADED.match(text)
    return match.group('reason') if match else None


def check_details(details, degraded, all_names, context):
    """Every backend in `degraded` is 'degraded: <reason> (since ...)', the
    others 'optimal'. Returns {name: reason} of the degraded ones."""
    check(sorted(details) == sorted(all_names),
          f'{context}: raid_details names {sorted(details)}, '
          f'expected {sorted(all_names)}')
    reasons = {}
    for name in all_names:
        text = details[name]
        if name in degraded:
            reason = degraded_reason(text)
            check(reason is not None and reason.strip(),
                  f'{context}: raid_details[{name!r}] is {text!r}, expected '
                  "'degraded: <reason> (since <time>)'")
            reasons[name] = reason
        else:
            check(text == 'optimal',
                  f'{context}: raid_details[{name!r}] is {text!r}, expected '
                  "'optimal'")
    return reasons


def wait_status(db, wanted, timeout, what):
    seen = []

    def ok():
        status = raid_status(db)
        if not seen or seen[-1] != status:
            seen.append(status)
        return status == wanted
    started = time.monotonic()
    try:
        poll(ok, timeout, f'{what}: raid_status never became {wanted!r} '
                          f'(seen: {seen})')
    except ScenarioFailure:
        raise
    return time.monotonic() - started


def greeting_time(port, deadline):
    """Polls until zeoraid's front end sends its handshake on a new
    connection (the listener is bound before start-up decides, but
    connections are only accepted once it serves). Returns the time it
    happened; raises ScenarioFailure at `deadline` (monotonic)."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ScenarioFailure(
                f'zeoraid on port {port} sent no handshake in time')
        try:
            with socket.create_connection(('127.0.0.1', port),
                                          timeout=remaining) as s:
                s.settimeout(max(remaining, 0.01))
                data = b''
                while len(data) < 6:
                    chunk = s.recv(6 - len(data))
                    if not chunk:
                        break
                    data += chunk
                if len(data) == 6 and data[4:] in (b'M5', b'Z5'):
                    return time.monotonic()
        except OSError:
            pass
        time.sleep(0.02)


def wait_serving(raid, timeout=15, what='zeoraid'):
    """Waits until a started zeoraid serves (sends its handshake on a new
    connection); fails at once, with its exit status, if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        code = raid.process.poll() if raid.process else None
        if code is not None:
            raise ScenarioFailure(f'{what} exited with status {code} '
                                  'instead of serving')
        try:
            return greeting_time(raid.port, min(deadline,
                                                time.monotonic() + 0.5))
        except ScenarioFailure:
            if time.monotonic() >= deadline:
                raise ScenarioFailure(f'{what} did not serve within '
                                      f'{timeout} s')


def record_value(data):
    """The `value` attribute of a MinPO record (two pickles: class, state)."""
    unpickler = pickle.Unpickler(io.BytesIO(data))
    unpickler.persistent_load = lambda ref: ref
    unpickler.load()
    state = unpickler.load()
    return state['value']


def read_history(path, repair=False):
    """[(tid, [(oid, data), ...]), ...] of a FileStorage file. With
    `repair` the file is copied and opened writable (FileStorage then
    truncates a transaction a SIGKILL left half-written)."""
    if repair:
        copy = path + '.copy'
        shutil.copyfile(path, copy)
        path = copy
    fs = FileStorage(path, read_only=not repair)
    try:
        history = []
        for txn in fs.iterator():
            records = sorted((rec.oid, rec.data) for rec in txn)
            history.append((txn.tid, records))
        return history
    finally:
        fs.close()


def check_committed_on(history, committed, backend_name):
    """Every (tid, oid, value) a client saw committed is in `history`."""
    by_tid = {tid: dict(records) for tid, records in history}
    missing = [(tid, oid) for tid, oid, _ in committed if tid not in by_tid
               or oid not in by_tid[tid]]
    check(not missing,
          f'{len(missing)} of {len(committed)} transactions clients saw '
          f'committed are missing on backend {backend_name}: first '
          f'{[(tid_hex(t), u64(o)) for t, o in missing[:5]]}; backend has '
          f'{len(history)} transactions, last '
          f'{tid_hex(history[-1][0]) if history else None}')
    wrong = [(tid, oid, value, record_value(by_tid[tid][oid]))
             for tid, oid, value in committed
             if record_value(by_tid[tid][oid]) != value]
    check(not wrong,
          f'backend {backend_name} has other data than clients committed: '
          f'{[(tid_hex(t), u64(o), v, got) for t, o, v, got in wrong[:5]]}')


def check_same_history(histories, context):
    names = list(histories)
    first = histories[names[0]]
    for name in names[1:]:
        other = histories[name]
        if other != first:
            tids_a = [t for t, _ in first]
            tids_b = [t for t, _ in other]
            differ = next((i for i, (x, y) in enumerate(zip(first, other))
                           if x != y), min(len(first), len(other)))
            raise ScenarioFailure(
                f'{context}: backends {names[0]} and {name} differ: '
                f'{len(tids_a)} vs {len(tids_b)} transactions, first '
                f'difference at #{differ}: '
                f'{tid_hex(tids_a[differ]) if differ < len(tids_a) else "-"}'
                f' vs {tid_hex(tids_b[differ]) if differ < len(tids_b) else "-"}')


def check_prefix(short, long, context):
    check(long[:len(short)] == short,
          f'{context}: {len(short)} transactions are not a prefix of the '
          f'{len(long)} of the survivor (first difference at #'
          f'{next((i for i, (x, y) in enumerate(zip(short, long)) if x != y), len(long))})')


# --------------------------------------------------------------------------
# Client load: threads, each with its own DB/ClientStorage, writing only
# their own objects


class Worker(threading.Thread):
    """Commits its own MinPO objects in a loop and loads (its own records
    by serial, other clients' objects, histories) between commits."""

    def __init__(self, rig, raid, index, own_oids, other_oids, stop,
                 deadline):
        super().__init__(name=f'client-{index}', daemon=True)
        self.rig = rig
        self.raid = raid
        self.index = index
        self.own_oids = own_oids
        self.other_oids = other_oids
        self.stop_event = stop
        self.deadline = deadline
        self.committed = []     # (tid, oid, value)
        self.commit_times = []  # (monotonic end, seconds)
        self.conflicts = 0
        self.loads = 0
        self.error = None
        self.ready = threading.Event()

    def run(self):
        try:
            db = self.rig.db(self.raid)
            tm = transaction.TransactionManager()
            conn = db.open(tm)
            self.ready.set()
            seq = 0
            while (not self.stop_event.is_set()
                   and time.monotonic() < self.deadline):
                seq += 1
                oid = self.own_oids[seq % len(self.own_oids)]
                obj = conn.get(oid)
                value = (self.index, seq)
                obj.value = value
                tm.get().note(f'client {self.index} seq {seq}')
                started = time.monotonic()
                try:
                    tm.commit()
                except ConflictError:
                    tm.abort()
                    self.conflicts += 1
                    continue
                ended = time.monotonic()
                self.commit_times.append((ended, ended - started))
                tid = obj._p_serial
                self.committed.append((tid, oid, value))
                # Loads that go to the server: a record by serial, a
                # history, and other clients' objects (invalidated by
                # their commits, so reloaded).
                got = record_value(db.storage.loadSerial(oid, tid))
                if got != value:
                    raise ScenarioFailure(
                        f'client {self.index}: loadSerial({u64(oid)}, '
                        f'{tid_hex(tid)}) gave {got!r}, committed {value!r}')
                history = db.storage.history(oid, 2)
                if not history or history[0]['tid'] != tid:
                    raise ScenarioFailure(
                        f'client {self.index}: history({u64(oid)}) is '
                        f'{history!r}, expected {tid_hex(tid)} first')
                tm.abort()
                conn.cacheMinimize()
                for other in self.other_oids[seq % 3::3]:
                    seen = conn.get(other).value
                    if seen is not None and not isinstance(seen, tuple):
                        raise ScenarioFailure(
                            f'client {self.index}: object {u64(other)} '
                            f'has value {seen!r}')
                self.loads += 3
                tm.abort()
            conn.close()
            self.rig.close_db(db)
        except BaseException:
            self.error = traceback.format_exc()
            self.ready.set()


def create_objects(rig, raid, count):
    """Commits `count` MinPO objects; returns their oids."""
    db = rig.db(raid)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    root = conn.root()
    objs = [MinPO(None) for _ in range(count)]
    root['objects'] = objs
    tm.get().note('create objects')
    tm.commit()
    oids = [obj._p_oid for obj in objs]
    conn.close()
    return db, oids


def thread_stacks():
    frames = sys._current_frames()
    parts = []
    for thread in threading.enumerate():
        frame = frames.get(thread.ident)
        if frame is not None:
            parts.append(f'thread {thread.name}:\n'
                         + ''.join(traceback.format_stack(frame)))
    return '\n'.join(parts)


class Load:
    """`clients` Worker threads over disjoint objects."""

    def __init__(self, rig, raid, clients=4, objects_each=3, limit=60):
        self.rig = rig
        self.monitor, oids = create_objects(rig, raid,
                                            clients * objects_each)
        self.stop = threading.Event()
        deadline = time.monotonic() + limit
        self.workers = []
        for i in range(clients):
            own = oids[i * objects_each:(i + 1) * objects_each]
            others = [o for o in oids if o not in own]
            self.workers.append(Worker(rig, raid, i, own, others, self.stop,
                                       deadline))

    def start(self):
        for worker in self.workers:
            worker.start()
        for worker in self.workers:
            check(worker.ready.wait(20),
                  f'client {worker.index} did not connect within 20 s')
        self.check_errors()

    def commits(self):
        return sum(len(w.committed) for w in self.workers)

    def check_errors(self):
        errors = [(w.index, w.error) for w in self.workers if w.error]
        if errors:
            raise ScenarioFailure(
                'clients saw errors:\n' + '\n'.join(
                    f'--- client {i}:\n{e}' for i, e in errors))

    def run_until(self, min_commits, min_seconds, limit, what):
        """Lets the clients work until `min_commits` more commits and
        `min_seconds` passed; fails after `limit` s or on a client error."""
        start_commits = self.commits()
        started = time.monotonic()
        while True:
            self.check_errors()
            dead = [w.index for w in self.workers if not w.is_alive()]
            check(not dead, f'{what}: clients {dead} stopped early')
            elapsed = time.monotonic() - started
            done = self.commits() - start_commits
            if done >= min_commits and elapsed >= min_seconds:
                return done
            check(elapsed < limit,
                  f'{what}: only {done} commits in {limit} s (clients '
                  'stuck?)\n' + thread_stacks())
            time.sleep(0.05)

    def finish(self, timeout=30):
        self.stop.set()
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            worker.join(max(0.1, deadline - time.monotonic()))
        alive = [w.index for w in self.workers if w.is_alive()]
        check(not alive, f'clients {alive} did not finish within {timeout} '
                         's\n' + thread_stacks())
        self.check_errors()

    def committed(self):
        return [c for w in self.workers for c in w.committed]

    def last_values(self):
        last = {}
        for worker in self.workers:
            for tid, oid, value in worker.committed:
                last[oid] = value
        return last

    def max_commit_time(self, after=0.0):
        times = [t for w in self.workers for end, t in w.commit_times
                 if end >= after]
        return max(times) if times else 0.0


def check_values_through(rig, raid, load, context):
    """A new client reads every object's last committed value."""
    db = rig.db(raid)
    conn = db.open(transaction.TransactionManager())
    try:
        for oid, value in load.last_values().items():
            got = conn.get(oid).value
            check(got == value, f'{context}: object {u64(oid)} reads {got!r}'
                                f' through zeoraid, last committed {value!r}')
    finally:
        conn.close()
        rig.close_db(db)


# --------------------------------------------------------------------------
# Scenarios


def scenario_kill_one(rig, args):
    names = 'abc'[:args.backends]
    victim = 'b'
    backends = start_backends(rig, names)
    by_name = {b.name: b for b in backends}
    raid = rig.zeoraid(backends)
    raid.start()
    load = Load(rig, raid)
    monitor = load.monitor
    check(raid_status(monitor) == 'optimal',
          f'status before the kill: {raid_status(monitor)}')
    load.start()
    before = load.run_until(30, 1.5, 30, 'before the kill')
    killed_at = time.monotonic()
    by_name[victim].kill9()
    say(f'killed backend {victim} after {before} commits')
    seconds = wait_status(monitor, 'degraded', 10, f'after kill -9 {victim}')
    after = load.run_until(30, 2.5, 30, 'after the kill')
    load.finish()
    survivors = [n for n in names if n != victim]
    reasons = check_details(raid_details(monitor), [victim], names,
                            'after the kill')
    check_values_through(rig, raid, load, 'after the kill')
    committed = load.committed()
    rig.close_db(monitor)
    code = raid.stop()
    check(code == 0, f'zeoraid exited with {code} on SIGTERM')
    for name in survivors:
        by_name[name].stop()
    histories = {name: read_history(by_name[name].data_fs)
                 for name in survivors}
    for name in survivors:
        check_committed_on(histories[name], committed, name)
    check_same_history(histories, 'survivors')
    killed_history = read_history(by_name[victim].data_fs, repair=True)
    check_prefix(killed_history, histories[survivors[0]],
                 f'killed backend {victim}')
    note(f'{len(backends)} backends, 4 clients: {before} commits before '
         f'kill -9 of {victim}, {after} after; degraded after {seconds:.2f} '
         f's: {reasons[victim]!r}; longest commit after the kill '
         f'{load.max_commit_time(killed_at):.2f} s; {len(committed)} '
         f'commits on every survivor, {len(killed_history)} of '
         f'{len(histories[survivors[0]])} transactions on {victim}')


def scenario_hang(rig, args):
    timeouts = {'call': 2, 'heartbeat': 0.5, 'commit': 5, 'connect': 2}
    a, b = start_backends(rig, 'ab')
    raid = rig.zeoraid([a, b], timeouts=timeouts)
    raid.start()
    load = Load(rig, raid, clients=3)
    monitor = load.monitor
    load.start()
    load.run_until(20, 1.0, 30, 'before SIGSTOP')
    stopped_at = time.monotonic()
    b.sigstop()
    say('SIGSTOP b')
    limit = timeouts['commit'] + timeouts['call'] + timeouts['heartbeat'] + 3
    seconds = wait_status(monitor, 'degraded', limit, 'after SIGSTOP of b')
    reasons = check_details(raid_details(monitor), ['b'], 'ab',
                            'after SIGSTOP')
    degraded_text = raid_details(monitor)['b']
    during = load.run_until(20, 1.0, 30, 'while b hangs')
    worst = load.max_commit_time(stopped_at)
    check(worst <= timeouts['commit'] + 3,
          f'a commit took {worst:.2f} s while b hung (commit timeout '
          f'{timeouts["commit"]} s)')
    handshakes = b.handshakes_logged()
    b.sigcont()
    resumed_at = time.monotonic()
    say('SIGCONT b')
    # zeoraid reconnects to b (its backend client retries); b must stay
    # degraded meanwhile and afterwards, while clients commit.
    statuses = set()
    texts = set()

    def reconnected():
        statuses.add(raid_status(monitor))
        texts.add(raid_details(monitor)['b'])
        return b.handshakes_logged() >= handshakes + ZEORAID_LINKS
    poll(reconnected, 15, 'zeoraid never connected to b again after '
                          'SIGCONT (so "stays degraded" could not be seen)')
    reconnect_seconds = time.monotonic() - resumed_at
    until = time.monotonic() + 2.0
    commits_at_resume = load.commits()
    while time.monotonic() < until:
        statuses.add(raid_status(monitor))
        texts.add(raid_details(monitor)['b'])
        load.check_errors()
        time.sleep(0.1)
    load.run_until(20, 0.5, 30, 'after SIGCONT')
    statuses.add(raid_status(monitor))
    texts.add(raid_details(monitor)['b'])
    check(statuses == {'degraded'},
          f'after SIGCONT raid_status was {sorted(statuses)}, expected only '
          "'degraded'")
    check(texts == {degraded_text},
          f'after SIGCONT raid_details["b"] was {sorted(texts)}, expected '
          f'{degraded_text!r} throughout')
    after_resume = load.commits() - commits_at_resume
    load.finish()
    check_values_through(rig, raid, load, 'after SIGCONT')
    committed = load.committed()
    rig.close_db(monitor)
    raid.stop()
    a.stop()
    b.stop()
    history_a = read_history(a.data_fs)
    history_b = read_history(b.data_fs)
    check_committed_on(history_a, committed, 'a')
    check_prefix(history_b, history_a, 'hung backend b')
    check(len(history_b) < len(history_a),
          'b has every transaction although it hung')
    note(f'degraded {seconds:.2f} s after SIGSTOP ({reasons["b"]!r}); '
         f'{during} commits while b hung, longest commit {worst:.2f} s; '
         f'zeoraid reconnected to b {reconnect_seconds:.2f} s after SIGCONT, '
         f'b stayed degraded over {after_resume} more commits; b has '
         f'{len(history_b)} of {len(history_a)} transactions')


def commit_value(db, key, value, note_text):
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        root = conn.root()
        if key in root:
            root[key].value = value
        else:
            root[key] = MinPO(value)
        tm.get().note(note_text)
        tm.commit()
        return root[key]._p_serial
    finally:
        tm.abort()
        conn.close()


def read_value(db, key):
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        return conn.root()[key].value
    finally:
        tm.abort()
        conn.close()


def scenario_restart_degraded(rig, args):
    a, b = start_backends(rig, 'ab')
    raid = rig.zeoraid([a, b], timeouts={'connect': 2, 'heartbeat': 0.5,
                                         'call': 2})
    raid.start()
    db = rig.db(raid)
    tids = [commit_value(db, 'obj', i, f'before {i}') for i in range(3)]
    b.kill9()
    wait_status(db, 'degraded', 10, 'after kill -9 of b')
    tids.append(commit_value(db, 'obj', 3, 'after the kill'))
    reasons = check_details(raid_details(db), ['b'], 'ab', 'after the kill')
    original = raid_details(db)['b']
    # b comes back, reachable, with its (now stale) Data.fs.
    handshakes = b.handshakes_logged()
    b.start()
    poll(lambda: b.handshakes_logged() >= handshakes + ZEORAID_LINKS, 15,
         'zeoraid never connected to the restarted b')
    check(raid_details(db)['b'] == original,
          f'after b came back: {raid_details(db)["b"]!r}, expected '
          f'{original!r}')
    rig.close_db(db)
    # A crash and restart (SIGKILL: a graceful stop may itself record
    # backends as degraded, which restart-cycles tests on its own).
    raid.kill()
    raid.start()
    wait_serving(raid, 15, 'zeoraid restarted with b degraded and a optimal')
    db = rig.db(raid)
    status = raid_status(db)
    details = raid_details(db)
    check(status == 'degraded',
          f'after the restart raid_status is {status!r} (details {details})')
    check(details['b'] == original,
          f'after the restart raid_details["b"] is {details["b"]!r}, '
          f'expected the original {original!r}')
    check(details['a'] == 'optimal',
          f'after the restart raid_details["a"] is {details["a"]!r}')
    check(read_value(db, 'obj') == 3,
          f'after the restart obj reads {read_value(db, "obj")!r}, '
          'expected 3')
    later = [commit_value(db, 'obj', 4 + i, f'after restart {i}')
             for i in range(3)]
    check(raid_details(db)['b'] == original,
          f'after commits raid_details["b"] is {raid_details(db)["b"]!r}')
    check(raid_status(db) == 'degraded', 'status changed after commits')
    rig.close_db(db)
    raid.stop()
    a.stop()
    b.stop()
    history_a = read_history(a.data_fs)
    history_b = read_history(b.data_fs)
    tids_a = {t for t, _ in history_a}
    tids_b = {t for t, _ in history_b}
    check(set(tids + later) <= tids_a, 'a misses committed transactions')
    check(not (set(later) | {tids[-1]}) & tids_b,
          'b got transactions committed after it was degraded')
    note(f'b degraded ({reasons["b"]!r}), back and reachable, zeoraid '
         f'restarted: still {original!r}; {len(later)} commits after the '
         'restart went to a only')


def scenario_startup_down(rig, args):
    connect = 2.0
    (a,) = start_backends(rig, 'a')
    results = []
    # 1. b's port is closed: nothing listens there.
    closed_port = zt.free_port()
    # 2. b accepts TCP connections and never answers (a black hole).
    hole = socket.socket()
    hole.bind(('127.0.0.1', 0))
    hole.listen(16)
    hole_port = hole.getsockname()[1]
    try:
        for label, port, bound in (('port closed', closed_port, connect),
                                   ('no answer', hole_port, connect + 1.0)):
            raid = rig.zeoraid([a, ('b', port, '1')],
                               timeouts={'connect': connect},
                               name=f'zeoraid-{label.replace(" ", "-")}')
            t0 = time.monotonic()
            raid.start()
            served = greeting_time(raid.port, t0 + 20) - t0
            db = rig.db(raid)
            status = raid_status(db)
            details = raid_details(db)
            check(status == 'degraded',
                  f'{label}: raid_status {status!r} (details {details})')
            reasons = check_details(details, ['b'], 'ab', label)
            check(reasons['b'].startswith('unreachable at start-up'),
                  f'{label}: b is {details["b"]!r}, expected '
                  "'degraded: unreachable at start-up...'")
            commit_value(db, 'obj', label, label)
            check(read_value(db, 'obj') == label, f'{label}: commit lost')
            check(served <= bound,
                  f'{label}: zeoraid served after {served:.2f} s, more than '
                  f'{bound} s (connect timeout {connect} s)')
            results.append(f'{label}: served after {served:.2f} s '
                           f'({reasons["b"]!r})')
            rig.close_db(db)
            raid.stop()
    finally:
        hole.close()
    note('; '.join(results))


def run_until_exit(rig, raid, timeout):
    """Runs `zeoraid serve` with raid's config, stderr and stdout in files
    of their own. Returns (exit status or None if still running after
    `timeout`, stderr text, seconds, process)."""
    os.makedirs(raid.state_dir, exist_ok=True)
    with open(raid.config_path, 'w') as f:
        f.write(raid.config_text())
    run = len([t for t, _ in rig.extra_logs if t.startswith('run')])
    err_path = os.path.join(raid.workdir, f'run{run}.stderr')
    out_path = os.path.join(raid.workdir, f'run{run}.stdout')
    rig.extra_logs.append((f'run{run} stderr', err_path))
    env = dict(os.environ)
    env.setdefault('RUST_LOG', 'info')
    started = time.monotonic()
    with open(err_path, 'wb') as err, open(out_path, 'wb') as out:
        proc = subprocess.Popen(
            [raid.binary, 'serve', '--config', raid.config_path],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
            cwd=raid.workdir)
    _track(proc)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        code = None
    seconds = time.monotonic() - started
    with open(err_path, errors='replace') as f:
        stderr = f.read()
    return code, stderr, seconds, proc


def refuses_clients(port, seconds):
    """True if no ClientStorage gets connected within `seconds`."""
    storage = ClientStorage(('127.0.0.1', port), '1', wait=False,
                            wait_timeout=seconds)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if storage.is_connected():
                return False
            time.sleep(0.05)
        return True
    finally:
        closer = threading.Thread(target=storage.close, daemon=True)
        closer.start()
        closer.join(5)


def read_state(raid):
    path = os.path.join(raid.state_dir, 'raid-state.json')
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def scenario_restart_cycles(rig, args):
    """Graceful stops and starts of zeoraid with every backend optimal
    leave every backend optimal."""
    cycles = args.cycles
    backends = start_backends(rig, 'ab')
    raid = rig.zeoraid(backends)
    for cycle in range(1, cycles + 1):
        raid.start()
        wait_serving(raid, 15, f'zeoraid at start {cycle} (after {cycle - 1} '
                               'graceful stops with both backends optimal)')
        db = rig.db(raid)
        details = raid_details(db)
        check_details(details, [], 'ab', f'start {cycle}')
        commit_value(db, 'obj', cycle, f'cycle {cycle}')
        rig.close_db(db)
        code = raid.stop()
        check(code == 0, f'zeoraid exited with {code} on SIGTERM (stop '
                         f'{cycle})')
        degraded = read_state(raid).get('degraded', {})
        check(not degraded,
              f'after graceful stop {cycle} the state file records '
              f'{degraded}, although every backend was optimal and '
              'reachable')
    note(f'{cycles} graceful stop/start cycles with commits: both backends '
         'optimal throughout')


def scenario_stale_survivor(rig, args):
    connect = 2.0
    a, b = start_backends(rig, 'ab')
    raid = rig.zeoraid([a, b], timeouts={'connect': connect})
    raid.start()
    db = rig.db(raid)
    commit_value(db, 'obj', 'both', 'on both')
    answer = db.storage._call('raid_disable', 'b')
    say('raid_disable:', answer)
    details = raid_details(db)
    check_details(details, ['b'], 'ab', 'after raid_disable("b")')
    b_reason = degraded_reason(details['b'])
    for i in range(3):
        commit_value(db, 'obj', f'a only {i}', f'a only {i}')
    rig.close_db(db)
    code = raid.stop()
    check(code == 0, f'zeoraid exited with {code} on SIGTERM')
    a.stop()
    b_size = os.path.getsize(b.data_fs)
    # Only the stale b is reachable now.
    bound = connect + 5
    code, stderr, seconds, proc = run_until_exit(rig, raid, bound)
    if code is None:
        # Still running: it must refuse clients, and never serve b.
        refused = refuses_clients(raid.port, 3)
        proc.kill()
        proc.wait(5)
        check(refused, 'zeoraid started with only the stale backend b '
                       'reachable and accepted a client')
        outcome = 'kept running and refused clients'
    else:
        check(code != 0, f'zeoraid exited with status 0 although it cannot '
                         f'serve: stderr:\n{stderr}')
        lines = [line for line in stderr.splitlines()
                 if re.search(r'\ba\b', line) and re.search(r'\bb\b', line)
                 and 'degraded' in line]
        check(lines, 'zeoraid exited without a message naming both '
                     f'backends and their state; stderr:\n{stderr}')
        line = lines[-1]
        for name in 'ab':
            check(re.search(rf'\b{name}\b\W+degraded: \S', line),
                  f'the error does not name {name} as degraded with a '
                  f'reason: {line}')
        check(b_reason in line,
              f'the error does not give b\'s reason {b_reason!r}: {line}')
        outcome = (f'exited with status {code} after {seconds:.2f} s: '
                   f'{line.strip()}')
    check(os.path.getsize(b.data_fs) == b_size,
          'the stale backend b was written to')
    note(f'a and b, b disabled ({b_reason!r}), 3 commits to a, a down: '
         f'zeoraid {outcome}')
    if not args.then_current_returns:
        return
    # a (with every transaction) is back: zeoraid must serve again, from a.
    a.start()
    code, stderr, seconds, proc = run_until_exit(rig, raid, connect + 3)
    check(code is None,
          f'a, which has every committed transaction, is back, but zeoraid '
          f'exits again (status {code}): a was recorded as degraded by the '
          f'refused start-up. stderr:\n{stderr}')
    raid.process = proc
    wait_serving(raid, 10, 'zeoraid with a back')
    db = rig.db(raid)
    details = raid_details(db)
    check_details(details, ['b'], 'ab', 'after a came back')
    check(degraded_reason(details['b']) == b_reason,
          f'b is {details["b"]!r}, expected the reason {b_reason!r}')
    value = read_value(db, 'obj')
    check(value == 'a only 2', f'obj reads {value!r}, expected a\'s '
                               "latest 'a only 2'")
    commit_value(db, 'obj', 'again', 'after a came back')
    rig.close_db(db)
    note(f'a back: zeoraid serves a\'s data, b still {details["b"]!r}')


def scenario_conflict(rig, args):
    backends = start_backends(rig, 'ab')
    raid = rig.zeoraid(backends)
    raid.start()
    db1 = rig.db(raid)
    db2 = rig.db(raid)
    commit_value(db1, 'obj', 0, 'create')
    # 1. Sequential: both load, both change, both commit.
    tm1, tm2 = (transaction.TransactionManager() for _ in range(2))
    c1, c2 = db1.open(tm1), db2.open(tm2)
    poll(lambda: (tm2.abort() or 'obj' in c2.root()), 10,
         'client 2 never saw obj')
    o1, o2 = c1.root()['obj'], c2.root()['obj']
    check((o1.value, o2.value) == (0, 0), 'both should read 0')
    o1.value = 1
    o2.value = 2
    tm1.commit()
    try:
        tm2.commit()
    except ConflictError as e:
        error = e
    else:
        error = None
    check(error is not None,
          'the second commit of a concurrently changed object succeeded')
    check(type(error) is ConflictError,
          f'the loser got {type(error).__module__}.{type(error).__name__}: '
          f'{error}, expected ZODB.POSException.ConflictError')
    check(error.oid == o1._p_oid,
          f'the ConflictError names oid {error.oid!r}, expected '
          f'{o1._p_oid!r}')
    message = str(error)
    tm2.abort()
    check(read_value(db2, 'obj') == 1, 'the loser\'s change was stored')
    # The loser retries and wins.
    o2 = c2.root()['obj']
    o2.value = o2.value + 10
    tm2.commit()
    c1.close()
    c2.close()
    # 2. Concurrent: rounds of two threads committing at once.
    rounds = 15
    outcomes = []
    barrier = threading.Barrier(2, timeout=20)
    failures = []

    def racer(db, index):
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        try:
            for r in range(rounds):
                tm.abort()
                obj = conn.root()['obj']
                obj.value = (index, r)
                barrier.wait()
                try:
                    tm.commit()
                    outcomes.append((r, index, 'ok'))
                except ConflictError:
                    tm.abort()
                    outcomes.append((r, index, 'conflict'))
                barrier.wait()
        except BaseException:
            failures.append(traceback.format_exc())
            barrier.abort()
        finally:
            tm.abort()
            conn.close()
    threads = [threading.Thread(target=racer, args=(db, i), daemon=True)
               for i, db in ((1, db1), (2, db2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    check(not any(t.is_alive() for t in threads),
          'racing clients hung\n' + thread_stacks())
    check(not failures, 'racing clients failed:\n' + '\n'.join(failures))
    wins = sum(1 for _, _, o in outcomes if o == 'ok')
    conflicts = sum(1 for _, _, o in outcomes if o == 'conflict')
    check(wins >= rounds, f'only {wins} commits in {rounds} rounds')
    check(conflicts >= 1, f'no conflict in {rounds} racing rounds')
    status = raid_status(db1)
    check(status == 'optimal',
          f'after conflicts raid_status is {status!r}: '
          f'{raid_details(db1)}')
    rig.close_db(db1)
    rig.close_db(db2)
    raid.stop()
    for backend in backends:
        backend.stop()
    check_same_history({b.name: read_history(b.data_fs) for b in backends},
                       'after conflicts')
    note(f'the loser got ConflictError ({message}); {rounds} racing rounds: '
         f'{wins} commits, {conflicts} ConflictErrors; both backends '
         'optimal and identical')


def scenario_conflict_resolution(rig, args):
    backends = start_backends(
        rig, 'ab', extra_zeo=['client-conflict-resolution true'])
    raid = rig.zeoraid(backends)
    raid.start()
    resolved = []
    original = Length._p_resolveConflict

    def counting(self, old, committed, new):
        resolved.append(threading.current_thread().name)
        return original(self, old, committed, new)
    Length._p_resolveConflict = counting
    db1 = rig.db(raid)
    db2 = rig.db(raid)
    tm = transaction.TransactionManager()
    conn = db1.open(tm)
    conn.root()['length'] = Length(0)
    tm.commit()
    conn.close()
    rounds = 20
    barrier = threading.Barrier(2, timeout=20)
    failures = []
    errors = []

    def incrementer(db, index):
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        try:
            poll(lambda: tm.abort() or 'length' in conn.root(), 10,
                 f'client {index} never saw the Length')
            for r in range(rounds):
                tm.abort()
                length = conn.root()['length']
                length.change(1)
                barrier.wait()
                try:
                    tm.commit()
                except ConflictError as e:
                    tm.abort()
                    errors.append(f'round {r} client {index}: {e!r}')
        except BaseException:
            failures.append(traceback.format_exc())
            barrier.abort()
        finally:
            tm.abort()
            conn.close()
    threads = [threading.Thread(target=incrementer, args=(db, i),
                                name=f'incrementer-{i}', daemon=True)
               for i, db in ((1, db1), (2, db2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    Length._p_resolveConflict = original
    check(not any(t.is_alive() for t in threads),
          'incrementing clients hung\n' + thread_stacks())
    check(not failures, 'incrementing clients failed:\n'
          + '\n'.join(failures))
    check(not errors, f'{len(errors)} increments failed with ConflictError '
                      f'although Length resolves conflicts: {errors[:3]}')
    db3 = rig.db(raid)
    tm = transaction.TransactionManager()
    conn = db3.open(tm)
    total = conn.root()['length'].value
    conn.close()
    check(total == 2 * rounds,
          f'the Length reads {total} after {2 * rounds} increments')
    check(resolved, f'no conflict was resolved on the client in {rounds} '
                    'racing rounds (the race did not happen?)')
    status = raid_status(db3)
    check(status == 'optimal',
          f'after conflict resolution raid_status is {status!r}: '
          f'{raid_details(db3)}')
    for db in (db1, db2, db3):
        rig.close_db(db)
    raid.stop()
    for backend in backends:
        backend.stop()
    histories = {b.name: read_history(b.data_fs) for b in backends}
    check_same_history(histories, 'after conflict resolution')
    note(f'{2 * rounds} concurrent increments -> {total}; {len(resolved)} '
         'conflicts resolved on the clients; both backends optimal and '
         'identical')


class RawClient:
    """A bare ZEO 5 client speaking msgpack (M5) to zeoraid."""

    def __init__(self, port, timeout=5):
        self.sock = socket.create_connection(('127.0.0.1', port),
                                             timeout=timeout)
        self.sock.settimeout(timeout)
        self.msgid = 0

    def close(self):
        self.sock.close()

    def frame(self):
        """The next frame, or None when zeoraid closed the connection."""
        def exactly(n):
            data = b''
            while len(data) < n:
                try:
                    chunk = self.sock.recv(n - len(data))
                except ConnectionResetError:
                    return None
                if not chunk:
                    return None
                data += chunk
            return data
        head = exactly(4)
        return None if head is None else exactly(int.from_bytes(head, 'big'))

    def send(self, payload):
        self.sock.sendall(len(payload).to_bytes(4, 'big') + payload)

    def handshake(self):
        greeting = self.frame()
        check(greeting == b'M5', f'zeoraid announced {greeting!r}')
        self.send(greeting)

    def call(self, method, *args):
        """(True, result) or (False, error) of a call; None if zeoraid
        closed the connection instead of answering."""
        import msgpack
        self.msgid += 1
        self.send(msgpack.packb((self.msgid, False, method, args),
                                use_bin_type=True))
        while True:
            body = self.frame()
            if body is None:
                return None
            msgid, flags, name, result = msgpack.unpackb(body, raw=False)
            if msgid == self.msgid and name == '.reply':
                # ZEO marks error replies with flag 2 (exception).
                if flags & 2:
                    return False, result
                return True, result


def raw_register_refused(port, timeout=5):
    """Registers writable over a bare connection; True if zeoraid closes
    the connection or answers with an error (refuses the client)."""
    client = RawClient(port, timeout)
    try:
        client.handshake()
        answer = client.call('register', '1', False)
        return answer is None or not answer[0]
    except socket.timeout:
        return False
    finally:
        client.close()


def raw_raid_status(port, timeout=5):
    """raid_status over a bare read-only registration (as monitoring
    asks), or a description of what prevented it."""
    client = RawClient(port, timeout)
    try:
        client.handshake()
        answer = client.call('register', '1', True)
        if answer is None or not answer[0]:
            return f'<read-only register refused: {answer!r}>'
        answer = client.call('raid_status')
        if answer is None or not answer[0]:
            return f'<raid_status failed: {answer!r}>'
        return answer[1]
    except socket.timeout:
        return '<timed out>'
    finally:
        client.close()


def scenario_fail_close(rig, args):
    a, b = start_backends(rig, 'ab')
    raid = rig.zeoraid([a, b])
    raid.start()
    db = rig.db(raid, wait_timeout=3)
    commit_value(db, 'obj', 1, 'before')
    a.kill9()
    wait_status(db, 'degraded', 10, 'after kill -9 of a')
    commit_value(db, 'obj', 2, 'with b only')
    b.kill9()
    started = time.monotonic()
    poll(lambda: not db.storage.is_connected(), 10,
         'the client is still connected 10 s after every backend died')
    disconnected = time.monotonic() - started
    # It stays disconnected: its reconnect attempts are refused.
    for _ in range(20):
        check(not db.storage.is_connected(),
              'the client got connected again although no backend is up')
        time.sleep(0.1)
    tm = transaction.TransactionManager()
    t0 = time.monotonic()
    try:
        conn = db.open(tm)
        conn.root()['obj'].value = 3
        tm.commit()
    except ClientDisconnected:
        pass
    except Exception as e:
        raise ScenarioFailure(f'a commit with every backend gone raised '
                              f'{type(e).__name__}: {e}, expected '
                              'ClientDisconnected')
    else:
        raise ScenarioFailure('a commit succeeded with every backend gone')
    finally:
        tm.abort()
    commit_seconds = time.monotonic() - t0
    check(refuses_clients(raid.port, 2), 'a new client got connected')
    check(raw_register_refused(raid.port),
          'zeoraid registered a new writable client with no backend')
    check(raid.is_running(), 'zeoraid exited')
    status = raw_raid_status(raid.port)
    check(status == 'failed',
          f'raid_status (read-only client) is {status!r}, expected failed')
    refused = raid.log().count('refusing')
    note(f'both backends killed: client disconnected after '
         f'{disconnected:.2f} s, a commit failed with ClientDisconnected '
         f'after {commit_seconds:.2f} s, new clients refused, raid_status '
         f'{status!r} (zeoraid logged {refused} refusals meanwhile)')


def scenario_fail_read_only(rig, args):
    a, b = start_backends(rig, 'ab')
    raid = rig.zeoraid([a, b], extra_server=['fail_mode = "read-only"',
                                             'min_optimal = 2'])
    raid.start()
    db = rig.db(raid)
    tids = [commit_value(db, f'obj{i}', i, f'create {i}') for i in range(3)]
    b.kill9()
    wait_status(db, 'degraded', 10, 'after kill -9 of b')
    check_details(raid_details(db), ['b'], 'ab', 'after kill -9 of b')
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    conn.root()['obj0'].value = 'changed'
    try:
        tm.commit()
    except ReadOnlyError:
        pass
    except Exception as e:
        raise ScenarioFailure(f'the commit raised {type(e).__name__}: {e}, '
                              'expected ReadOnlyError')
    else:
        raise ScenarioFailure('a commit succeeded with 1 of min_optimal 2 '
                              'backends')
    finally:
        tm.abort()
    conn.close()
    check(db.storage.is_connected(), 'the client was disconnected')
    # Loads: through the cache-less paths, and a new client without cache.
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    conn.cacheMinimize()
    for i in range(3):
        obj = conn.root()[f'obj{i}']
        check(obj.value == i, f'obj{i} reads {obj.value!r}')
        oid = obj._p_oid
        check(record_value(db.storage.loadSerial(oid, tids[i])) == i,
              f'loadSerial of obj{i}')
    tm.abort()
    conn.close()
    db2 = rig.db(raid)
    for i in range(3):
        check(read_value(db2, f'obj{i}') == i, f'new client: obj{i}')
    try:
        commit_value(db2, 'obj0', 'new client', 'new client')
    except ReadOnlyError:
        pass
    else:
        raise ScenarioFailure('a new client committed with 1 of min_optimal '
                              '2 backends')
    check(raid_status(db2) == 'degraded', 'status')
    note('b killed with min_optimal 2, fail_mode read-only: commits get '
         'ReadOnlyError, loads work (connected client and new client)')


SCENARIOS = {
    'kill-one': scenario_kill_one,
    'hang': scenario_hang,
    'restart-degraded': scenario_restart_degraded,
    'startup-down': scenario_startup_down,
    'restart-cycles': scenario_restart_cycles,
    'stale-survivor': scenario_stale_survivor,
    'conflict': scenario_conflict,
    'conflict-resolution': scenario_conflict_resolution,
    'fail-close': scenario_fail_close,
    'fail-read-only': scenario_fail_read_only,
}


def start_watchdog(seconds, rig):
    def fire():
        print(f'DEADLINE: the scenario ran longer than {seconds} s; thread '
              'stacks, then the logs:', file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        try:
            print(rig.diagnostics(), file=sys.stderr, flush=True)
            print(f'work dir: {rig.workdir}', file=sys.stderr, flush=True)
        except Exception:
            pass
        kill_everything()
        os._exit(3)
    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()


def run_scenario(rig, scenario, args):
    """Runs `scenario(rig, args)` and cleans the rig up; on failure prints
    the reason and the rig's diagnostics, keeps its work dir and returns
    False."""
    try:
        scenario(rig, args)
    except BaseException as e:
        if isinstance(e, ScenarioFailure):
            print(f'FAIL: {e}', file=sys.stderr)
        else:
            print('ERROR:\n' + traceback.format_exc(), file=sys.stderr)
        print(rig.diagnostics(), file=sys.stderr)
        print(f'work dir: {rig.workdir}', file=sys.stderr, flush=True)
        rig.keep = True
        rig.cleanup()
        return False
    rig.cleanup()
    return True


def main(argv=None):
    global VERBOSE
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('scenario', choices=sorted(SCENARIOS))
    parser.add_argument('--backends', type=int, default=2, choices=(2, 3))
    parser.add_argument('--then-current-returns', action='store_true')
    parser.add_argument('--cycles', type=int, default=15)
    parser.add_argument('--deadline', type=float, default=100.0)
    parser.add_argument('--keep', action='store_true')
    parser.add_argument('-v', '--verbose', action='store_true')
    args = parser.parse_args(argv)
    VERBOSE = args.verbose
    zt.exit_with_parent()
    rig = Rig(args.scenario, keep=args.keep)
    start_watchdog(args.deadline, rig)
    started = time.monotonic()
    if not run_scenario(rig, SCENARIOS[args.scenario], args):
        return 1
    extra = ''
    if args.scenario == 'kill-one':
        extra = f', {args.backends} backends'
    print(f'raid scenario {args.scenario}: ok ({time.monotonic() - started:.1f}'
          f' s{extra})', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
