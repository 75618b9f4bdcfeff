"""Helpers for zeoraid's Python-side integration tests.

* `Backend`: a real ZEO server (FileStorage) in a forked process, started with
  ZEO's own test forker (`ZEO._forker.start_zeo_server`, which runs
  `ZEO.runzeo` in a `multiprocessing` child: no interpreter start-up, so it
  is up in a few milliseconds). Pickle ("Z5") or msgpack ("M5") mode.
  `kill()` SIGKILLs it (a crash).
* `Zeoraid`: writes a zeoraid TOML config into a work directory and runs the
  zeoraid binary (path from env ZEORAID_BIN, or the `binary` argument) as a
  subprocess on a free port; waits for the port; stops it (SIGTERM, then
  SIGKILL after a timeout); its stderr/stdout go to `zeoraid.log` in the work
  directory, readable with `log()` / `log_tail()` for failure messages.
  `degradations()` lists the log lines of backends it degraded.
* `stop_backends`: stops several `Backend`s at once.
* `free_port`, `wait_for_port`, `wait_until`.
* `file_digest`: the SHA-256 of a file.
* `compare_histories`: reads several FileStorage files directly (read-only,
  not through ZEO) and checks that they hold the identical history, as the
  backends of one zeoraid must; raises `HistoryMismatch` naming the first
  difference (backends, transaction, record, field).

Every zeoraid started here and still running when the interpreter exits (also
on SIGTERM, see `_install_sigterm_handler`) is killed, so a test run that is
stopped from outside leaves no zeoraid behind. Forked ZEO servers are
multiprocessing daemon children: multiprocessing terminates them at exit, and
they stop by themselves after 999 s in any case (forker's `suicide`).

This module does not import ZODB or ZEO at module level so that it can be
imported cheaply; `Backend` imports `ZEO._forker` when used.
"""

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time


# runzeo reads ZEO_MSGPACK when `msgpack` is not set in its config: a value
# inherited from the environment would silently turn "pickle" backends into
# msgpack ones. The encoding of every server here is chosen explicitly.
os.environ.pop('ZEO_MSGPACK', None)

ENCODINGS = ('msgpack', 'pickle')

_live_processes = set()


def free_port(host='127.0.0.1'):
    """A TCP port that was free a moment ago (bind port 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_accepts(port, host='127.0.0.1'):
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


class ScenarioFailure(AssertionError):
    """A scenario's expectation did not hold."""


def check(condition, message):
    """Fails the scenario with `message` unless `condition` holds."""
    if not condition:
        raise ScenarioFailure(message)


def wait_until(predicate, timeout, interval=0.01, what='condition'):
    """Polls `predicate` until it returns a true value, which is returned.

    Raises AssertionError naming `what` after `timeout` seconds. The poll
    interval starts at `interval` and backs off up to 0.1 s.
    """
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f'timed out after {timeout} s waiting for {what}')
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)


def wait_for_port(port, timeout=20.0, host='127.0.0.1', process=None,
                  what=None):
    """Waits until `host:port` accepts TCP connections.

    With `process` (a subprocess.Popen), fails early if it exits meanwhile.
    Raises RuntimeError on failure.
    """
    what = what or f'{host}:{port}'
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        if port_accepts(port, host):
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f'{what} exited with status {process.returncode} before '
                f'accepting connections on {host}:{port}')
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f'{what} did not accept connections on {host}:{port} '
                f'within {timeout} s')
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _check_encoding(encoding):
    if encoding not in ENCODINGS:
        raise ValueError(f'encoding must be one of {ENCODINGS}, not {encoding!r}')


# A relative ZEORAID_BIN is relative to the directory the tests were started
# in, not to wherever a test has since chdir'ed (ZODB's tests do).
_START_CWD = os.getcwd()


def zeoraid_binary():
    """The zeoraid binary: env ZEORAID_BIN, else target/debug/zeoraid."""
    path = os.environ.get('ZEORAID_BIN')
    if not path:
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(here, '..', '..', 'target', 'debug', 'zeoraid')
    path = os.path.abspath(os.path.join(_START_CWD, path))
    if not os.access(path, os.X_OK):
        raise RuntimeError(
            f'zeoraid binary not found at {path}: build it (cargo build) or '
            'set ZEORAID_BIN')
    return path


# --------------------------------------------------------------------------
# Backends: real ZEO servers in forked processes


class Backend:
    """A ZEO server serving one FileStorage, in a forked process.

    encoding: 'pickle' (Z5) or 'msgpack' (M5: `msgpack true`).
    storage: the storage name clients register with.
    path: the Data.fs; default `Data.fs` in `directory` (a new temp dir when
      not given). Relative paths are made absolute at construction.
    port: 0 picks a free one when started; `restart()` keeps the port.
    keep: keep Data.fs when stopped (needed for `restart()`; default True).
      With keep=False the forker removes the storage files on stop.
    zeo_options: extra `<zeo>` options, e.g. {'invalidation_queue_size': 2,
      'transaction_timeout': 5, 'client_conflict_resolution': 'true'}.
    storage_conf: a full storage section instead of the default
      `<filestorage NAME> path PATH </filestorage>`.
    """

    def __init__(self, encoding='pickle', storage='1', path=None, port=0,
                 directory=None, keep=True, zeo_options=None,
                 storage_conf=None, blob_dir=None):
        _check_encoding(encoding)
        self.encoding = encoding
        self.storage = storage
        if directory is None:
            directory = tempfile.mkdtemp(prefix='zeo-backend-')
        self.directory = os.path.abspath(directory)
        self.path = os.path.abspath(path or os.path.join(directory, 'Data.fs'))
        self.blob_dir = blob_dir and os.path.abspath(blob_dir)
        self.port = port
        self.keep = keep
        self.zeo_options = dict(zeo_options or {})
        self._storage_conf = storage_conf
        self._stop = None
        # The server's multiprocessing.Process, for kill().
        self.process = None

    @property
    def address(self):
        return ('127.0.0.1', self.port)

    @property
    def running(self):
        return self._stop is not None

    def storage_conf(self):
        if self._storage_conf:
            return self._storage_conf
        conf = (f'<filestorage {self.storage}>\n'
                f'  path {self.path}\n'
                f'</filestorage>\n')
        if self.blob_dir:
            conf = (f'<blobstorage {self.storage}>\n'
                    f'  blob-dir {self.blob_dir}\n'
                    f'{conf}</blobstorage>\n')
        return conf

    def start(self, timeout=33):
        """Starts the server; returns its (host, port)."""
        import multiprocessing
        from ZEO import _forker
        if self._stop is not None:
            raise RuntimeError('backend already running')
        before = {p.pid for p in multiprocessing.active_children()}
        options = dict(self.zeo_options)
        if self.encoding == 'msgpack':
            options['msgpack'] = 'true'
        zconf = _forker.ZEOConfig(('127.0.0.1', self.port), **options)
        # The forker writes its temporary config file into the cwd.
        cwd = os.getcwd()
        os.makedirs(self.directory, exist_ok=True)
        os.chdir(self.directory)
        try:
            addr, stop = _forker.start_zeo_server(
                self.storage_conf(), zconf, keep=self.keep,
                start_timeout=timeout)
        finally:
            os.chdir(cwd)
        self.port = addr[1]
        self._stop = stop
        self.process = next((p for p in multiprocessing.active_children()
                             if p.pid not in before), None)
        return self.address

    def stop(self, timeout=30):
        """Stops the server (closing its storage cleanly). Idempotent."""
        stop, self._stop = self._stop, None
        self.process = None
        if stop is not None:
            stop(timeout)

    def kill(self, timeout=10):
        """SIGKILL, as a crash: nothing is closed or cleaned up (the
        storage files, the blob dir's tmp files stay). `start()` serves them
        again on the same port."""
        process, self.process = self.process, None
        if process is None:
            raise RuntimeError('no server process to kill')
        self._stop = None
        os.kill(process.pid, signal.SIGKILL)
        process.join(timeout)

    def restart(self, timeout=33):
        """Stops and starts the server again on the same port and Data.fs."""
        if not self.keep:
            raise RuntimeError('restart() needs keep=True')
        self.stop()
        # The port was ours a moment ago; ZEO's listener sets SO_REUSEADDR.
        return self.start(timeout)

    def __enter__(self):
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def stop_backends(backends, timeout=30):
    """Stops several `Backend`s at once (each in its own thread: stopping
    one takes some tens of ms). Every backend is stopped; the first
    exception, if any, is raised afterwards."""
    import threading
    backends = list(backends)
    if len(backends) <= 1:
        for backend in backends:
            backend.stop(timeout)
        return
    errors = []

    def stop(backend):
        try:
            backend.stop(timeout)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=stop, args=(b,), daemon=True,
                                name='stop-backend') for b in backends]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


# --------------------------------------------------------------------------
# zeoraid


def _kill_live_processes():
    for proc in list(_live_processes):
        if proc.poll() is None:
            try:
                proc.kill()
                proc.wait(5)
            except Exception:
                pass
    _live_processes.clear()


atexit.register(_kill_live_processes)


def _install_sigterm_handler():
    """Turns SIGTERM into SystemExit so that atexit handlers run."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        def handler(signum, frame):
            raise SystemExit(128 + signum)
        try:
            signal.signal(signal.SIGTERM, handler)
        except ValueError:   # not the main thread
            pass


_install_sigterm_handler()


def kill_children():
    """Kills every zeoraid started here and every forked ZEO server
    (multiprocessing child) still running."""
    _kill_live_processes()
    import multiprocessing
    for child in multiprocessing.active_children():
        try:
            child.kill()
        except Exception:
            pass


def exit_with_parent(interval=0.5):
    """Starts a daemon thread that ends this process (and its zeoraid and
    ZEO server children) when its parent goes away, e.g. a test binary
    killed by a timeout: an orphaned test run must not go on for minutes."""
    import threading
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                print('parent process gone: stopping', file=sys.stderr,
                      flush=True)
                kill_children()
                os._exit(4)

    threading.Thread(target=watch, name='exit-with-parent',
                     daemon=True).start()


def _toml_string(value):
    escaped = (str(value).replace('\\', '\\\\').replace('"', '\\"')
               .replace('\n', '\\n'))
    return f'"{escaped}"'


def _toml_value(value):
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (int, float)):
        return repr(float(value)) if isinstance(value, float) else str(value)
    return _toml_string(value)


class Zeoraid:
    """A zeoraid process in front of one or more backends.

    backends: list of (name, address, storage); address is a port number, a
      (host, port) tuple, a "host:port" string or a `Backend`.
    storage: the storage name clients register with.
    encoding: what the front end announces: 'msgpack' (M5) or 'pickle' (Z5).
    workdir: where the config, state dir and log go (a new temp dir if None;
      `cleanup()` removes a temp dir created here).
    port: listen port (a free one if None).
    timeouts: dict for the [timeouts] table, e.g. {'connect': 5, 'call': 30}.
    extra_server: raw TOML lines appended to [server].
    tables: more TOML tables, {table: {key: value}}, written after
      [timeouts], e.g. {'recovery': {'transactions_per_second': 100}}
      (ints stay ints, floats floats, bools booleans, the rest strings).
    backend_options: more keys per backend, {name: {key: value}}, e.g.
      {'a': {'blob_dir': '/srv/a/blobs'}}.
    env: extra environment; RUST_LOG defaults to "info" unless set.
    """

    def __init__(self, backends, storage='1', encoding='msgpack', workdir=None,
                 port=None, timeouts=None, extra_server=(), binary=None,
                 env=None, tables=None, backend_options=None):
        _check_encoding(encoding)
        self.binary = binary or zeoraid_binary()
        self.backends = [self._backend_entry(b) for b in backends]
        self.storage = storage
        self.encoding = encoding
        self._own_workdir = workdir is None
        self.workdir = os.path.abspath(
            workdir or tempfile.mkdtemp(prefix='zeoraid-'))
        os.makedirs(self.workdir, exist_ok=True)
        self.config_path = os.path.join(self.workdir, 'zeoraid.toml')
        self.state_dir = os.path.join(self.workdir, 'state')
        self.log_path = os.path.join(self.workdir, 'zeoraid.log')
        self._fixed_port = port
        self.port = port
        self.timeouts = dict(timeouts or {})
        self.extra_server = list(extra_server)
        self.tables = {name: dict(values)
                       for name, values in (tables or {}).items()}
        self.env = dict(env or {})
        self.backend_options = {name: dict(values) for name, values
                                in (backend_options or {}).items()}
        self.process = None

    @staticmethod
    def _backend_entry(entry):
        name, address, storage = entry
        if isinstance(address, Backend):
            address = address.address
        if isinstance(address, int):
            address = f'127.0.0.1:{address}'
        elif isinstance(address, tuple):
            address = '%s:%s' % address
        return name, address, storage

    @property
    def address(self):
        return ('127.0.0.1', self.port)

    @property
    def pid(self):
        return self.process.pid if self.process else None

    def config_text(self):
        lines = [
            '[server]',
            f'listen = {_toml_string(f"127.0.0.1:{self.port}")}',
            f'storage = {_toml_string(self.storage)}',
            f'state_dir = {_toml_string(self.state_dir)}',
            f'encoding = {_toml_string(self.encoding)}',
        ]
        lines.extend(self.extra_server)
        if self.timeouts:
            lines.append('')
            lines.append('[timeouts]')
            for key, value in self.timeouts.items():
                lines.append(f'{key} = {_toml_value(float(value))}')
        for table, values in self.tables.items():
            lines.append('')
            lines.append(f'[{table}]')
            for key, value in values.items():
                lines.append(f'{key} = {_toml_value(value)}')
        for name, address, storage in self.backends:
            lines.extend([
                '',
                '[[backend]]',
                f'name = {_toml_string(name)}',
                f'address = {_toml_string(address)}',
                f'storage = {_toml_string(storage)}',
            ])
            for key, value in self.backend_options.get(name, {}).items():
                lines.append(f'{key} = {_toml_value(value)}')
        return '\n'.join(lines) + '\n'

    def start(self, timeout=20.0):
        """Writes the config, spawns zeoraid, waits for its port.

        Returns (host, port). On failure raises RuntimeError carrying the
        log. A port that someone else took between our probe and zeoraid's
        bind is retried with another free port (twice).
        """
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError('zeoraid already running')
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            if not self._fixed_port:
                self.port = free_port()
            self._spawn()
            try:
                wait_for_port(self.port, timeout, process=self.process,
                              what='zeoraid')
                return self.address
            except RuntimeError as e:
                exited = self.process.poll() is not None
                self.kill()
                log = self.log()
                if (exited and attempt + 1 < attempts
                        and 'in use' in log.lower()):
                    continue
                raise RuntimeError(
                    f'{e}\n--- config {self.config_path}:\n'
                    f'{self.config_text()}--- log {self.log_path}:\n'
                    f'{log}') from None

    def _spawn(self):
        os.makedirs(self.state_dir, exist_ok=True)
        with open(self.config_path, 'w') as f:
            f.write(self.config_text())
        env = dict(os.environ)
        env.setdefault('RUST_LOG', 'info')
        env.update(self.env)
        # Appends: a restart keeps the earlier run's log.
        with open(self.log_path, 'ab') as log:
            self.process = subprocess.Popen(
                [self.binary, 'serve', '--config', self.config_path],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=self.workdir)
        _live_processes.add(self.process)

    def is_running(self):
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout=10.0):
        """SIGTERM, then SIGKILL after `timeout` s. Returns the exit status
        (None if it was never started). Idempotent."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _live_processes.discard(proc)
        return proc.returncode

    def kill(self):
        """SIGKILL, no grace."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _live_processes.discard(proc)
        return proc.returncode

    def log(self):
        try:
            with open(self.log_path, 'rb') as f:
                return f.read().decode('utf-8', 'replace')
        except FileNotFoundError:
            return ''

    def log_tail(self, lines=60):
        text = self.log().splitlines()
        tail = text[-lines:]
        head = [f'[... {len(text) - lines} earlier lines in {self.log_path}]'
                ] if len(text) > lines else []
        return '\n'.join(head + tail)

    def degradations(self, include_shutdown=False):
        """The log lines saying that a backend was degraded, e.g. because it
        answered differently from the others or timed out. Those logged
        while zeoraid shuts down (its backends are disconnected then) are
        left out unless include_shutdown."""
        lines = []
        for line in self.log().splitlines():
            if not include_shutdown and 'SIGTERM received' in line:
                break
            if 'backend degraded' in line and (
                    include_shutdown or 'shutting down' not in line):
                lines.append(line)
        return lines

    def cleanup(self):
        """Stops zeoraid and removes the work dir if it was created here."""
        self.stop()
        if self._own_workdir:
            import shutil
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


# --------------------------------------------------------------------------
# Backend histories, compared from the files


class HistoryMismatch(AssertionError):
    """Backends' FileStorages that do not hold the identical history."""


class HistoryComparison:
    """What `compare_histories` compared.

    names: the backends' names, the reference first.
    transactions, records: how many transactions and data records were
      compared (counted once, not once per backend).
    last_tid: the (common) last tid, 8 bytes.
    byte_identical: whether the files are byte for byte identical too (None
      if not checked). The history can agree while the bytes do not, e.g.
      after packs that ran at different moments relative to commits.
    """

    def __init__(self, names):
        self.names = list(names)
        self.transactions = 0
        self.records = 0
        self.last_tid = None
        self.byte_identical = None

    def __repr__(self):
        return (f'<HistoryComparison {",".join(self.names)}: '
                f'{self.transactions} transactions, {self.records} records, '
                f'last tid {format_tid(self.last_tid)}, '
                f'byte_identical={self.byte_identical}>')


def format_tid(tid):
    """A tid as hex plus its UTC time, e.g. `03ef...(2024-05-01 10:00:00.5)`."""
    if tid is None:
        return 'None'
    if not isinstance(tid, bytes) or len(tid) != 8:
        return repr(tid)
    try:
        from ZODB.TimeStamp import TimeStamp
        ts = TimeStamp(tid)
        when = '%04d-%02d-%02d %02d:%02d:%09.6f' % (
            ts.year(), ts.month(), ts.day(), ts.hour(), ts.minute(),
            ts.second())
        return f'{tid.hex()} ({when})'
    except Exception:
        return tid.hex()


def _format_value(value):
    if isinstance(value, bytes):
        if len(value) <= 48:
            return repr(value)
        import hashlib
        digest = hashlib.sha1(value).hexdigest()[:12]
        return f'<{len(value)} bytes, sha1 {digest}, starts {value[:32]!r}>'
    if value is None:
        return 'None'
    return repr(value)


def _format_field(field, value):
    text = _format_value(value)
    if field in ('tid', 'oid', 'data_txn') and isinstance(value, bytes):
        text = format_tid(value) if field != 'oid' else value.hex()
    if field == 'extension' and isinstance(value, bytes) and value:
        try:
            import zodbpickle.pickle
            text += f' = {zodbpickle.pickle.loads(value)!r}'
        except Exception:
            pass
    return text


_TXN_FIELDS = ('tid', 'status', 'user', 'description', 'extension')
_RECORD_FIELDS = ('oid', 'tid', 'data', 'data_txn')


def _txn_fields(txn):
    return {
        'tid': txn.tid,
        'status': txn.status,
        'user': txn.user,
        'description': txn.description,
        # The raw bytes stored in the file (what FileIterator read).
        'extension': txn.extension_bytes,
    }


def _record_fields(record):
    return {
        'oid': record.oid,
        'tid': record.tid,
        'data': record.data,
        'data_txn': record.data_txn,
    }


def compare_histories(backends, check_bytes=True):
    """Checks that FileStorage files hold the identical history.

    backends: a list of (name, path), e.g. [('a', '/x/a/Data.fs'), ...]; the
      first is the reference. The files are opened with
      `ZODB.FileStorage.FileStorage(path, read_only=True)`, so the servers
      writing them should be stopped (or at least quiescent).

    Compared, in file order: every transaction's (tid, status, user,
    description, extension bytes) and, per transaction, every data record's
    (oid, tid, data, data_txn); then the storages' lastTransaction(). With
    check_bytes, the files are also compared byte for byte, which only sets
    `byte_identical` in the result (not an error).

    Returns a `HistoryComparison`; raises `HistoryMismatch` describing the
    first difference (earliest transaction, then record, then field).
    """
    from ZODB.FileStorage import FileStorage
    if len(backends) < 1:
        raise ValueError('compare_histories needs at least one backend')
    names = [name for name, _ in backends]
    result = HistoryComparison(names)
    storages = []
    try:
        for name, path in backends:
            if not os.path.exists(path):
                raise HistoryMismatch(f'backend {name}: no file {path}')
            storages.append(FileStorage(path, read_only=True))
        iterators = [iter(fs.iterator()) for fs in storages]
        ref = names[0]
        index = 0
        while True:
            txns = [next(it, None) for it in iterators]
            if all(t is None for t in txns):
                break
            if any(t is None for t in txns):
                present = [(n, t) for n, t in zip(names, txns) if t is not None]
                absent = [n for n, t in zip(names, txns) if t is None]
                raise HistoryMismatch(
                    f'transaction #{index}: backend(s) {", ".join(absent)} '
                    f'end after {index} transactions, but '
                    + '; '.join(f'{n} has tid {format_tid(t.tid)}'
                                for n, t in present))
            fields = [_txn_fields(t) for t in txns]
            for field in _TXN_FIELDS:
                ref_value = fields[0][field]
                for name, f in zip(names[1:], fields[1:]):
                    if f[field] != ref_value:
                        raise HistoryMismatch(
                            f'transaction #{index} (tid on {ref} '
                            f'{format_tid(fields[0]["tid"])}): field '
                            f'{field!r} differs: {ref}={_format_field(field, ref_value)}'
                            f' {name}={_format_field(field, f[field])}')
            tid = fields[0]['tid']
            records = [list(t) for t in txns]
            counts = [len(r) for r in records]
            for r_index in range(max(counts)):
                row = [r[r_index] if r_index < len(r) else None
                       for r in records]
                if any(r is None for r in row):
                    raise HistoryMismatch(
                        f'transaction #{index} (tid {format_tid(tid)}): '
                        'record counts differ: '
                        + ', '.join(f'{n}={c}' for n, c in zip(names, counts))
                        + f'; first unmatched record #{r_index}: '
                        + ', '.join(
                            f'{n} oid {r.oid.hex()}' if r is not None
                            else f'{n} none'
                            for n, r in zip(names, row)))
                rfields = [_record_fields(r) for r in row]
                for field in _RECORD_FIELDS:
                    ref_value = rfields[0][field]
                    for name, f in zip(names[1:], rfields[1:]):
                        if f[field] != ref_value:
                            raise HistoryMismatch(
                                f'transaction #{index} (tid {format_tid(tid)}'
                                f'), record #{r_index} (oid on {ref} '
                                f'{rfields[0]["oid"].hex()}): field {field!r} '
                                f'differs: {ref}={_format_field(field, ref_value)}'
                                f' {name}={_format_field(field, f[field])}')
            result.transactions += 1
            result.records += counts[0]
            index += 1
        last = [fs.lastTransaction() for fs in storages]
        for name, tid in zip(names[1:], last[1:]):
            if tid != last[0]:
                raise HistoryMismatch(
                    f'lastTransaction differs: {ref}={format_tid(last[0])} '
                    f'{name}={format_tid(tid)}')
        result.last_tid = last[0]
    finally:
        for fs in storages:
            try:
                fs.close()
            except Exception:
                pass
    if check_bytes:
        import filecmp
        result.byte_identical = all(
            filecmp.cmp(backends[0][1], path, shallow=False)
            for _, path in backends[1:])
    return result


def file_digest(path):
    """The SHA-256 of a file's bytes (hex), e.g. to show that a backend's
    Data.fs was not written to."""
    import hashlib
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def add_encoding_options(parser, direct=True):
    """The CLI options shared by conformance.py and scenarios.py."""
    parser.add_argument('--frontend-encoding', choices=ENCODINGS,
                        default='msgpack',
                        help="what zeoraid's front end announces "
                             '(msgpack = M5, pickle = Z5)')
    parser.add_argument('--backend-encoding', choices=ENCODINGS,
                        default='pickle',
                        help='the backend ZEO servers\' encoding')
    if direct:
        parser.add_argument('--direct', action='store_true',
                            help='no zeoraid: clients connect straight to '
                                 'the backend (control run)')


def quiet_logging(path=None, level='WARNING'):
    """Sends Python logging (also that of forked ZEO servers, which inherit
    it) to `path`, or nowhere, instead of stderr."""
    import logging
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if path:
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter(
            '%(asctime)s %(process)d %(levelname)s %(name)s %(message)s'))
    else:
        handler = logging.NullHandler()
    root.addHandler(handler)
    root.setLevel(level)


def fail(message):
    print(message, file=sys.stderr)
    sys.stderr.flush()
    sys.exit(1)
