"""Python side of benches/recovery.rs (run with the test venv's python).

    recovery_bench.py build PATH [options]   write a source FileStorage
    recovery_bench.py copy SRC_PORT DST_PORT  the baseline: ZODB's
        copyTransactionsFrom from ClientStorage(SRC) to ClientStorage(DST)
    recovery_bench.py digest PATH             what a FileStorage holds

Every subcommand prints one JSON object on its last line of stdout.
"""

import argparse
import base64
import hashlib
import json
import logging
import os
import pickle
import random
import sys
import time

import ZEO.ClientStorage
import ZODB.FileStorage
import ZODB.POSException
from persistent.mapping import PersistentMapping
from ZODB.Connection import TransactionMetaData
from ZODB.utils import p64, z64


def tid_hex(tid):
    return tid.hex() if tid else None


def record_data(size, rng):
    """A valid ZODB record (class pickle + state pickle) of about `size`
    bytes: a PersistentMapping holding random bytes."""
    head = pickle.dumps(PersistentMapping, 3)
    payload = rng.randbytes(max(0, size - len(head) - 40))
    return head + pickle.dumps({'data': {'payload': payload}}, 3)


def build(args):
    """Writes args.transactions transactions into a new FileStorage: each
    stores records_min..records_max records of size_min..size_max bytes
    (a third new objects, the rest new revisions of existing ones); every
    undo_every-th transaction undoes the one before it instead."""
    for suffix in ('', '.index', '.lock', '.tmp'):
        if os.path.exists(args.path + suffix):
            os.remove(args.path + suffix)
    rng = random.Random(args.seed)
    storage = ZODB.FileStorage.FileStorage(args.path)
    serials = {}  # oid -> current serial
    existing = []  # the oids in serials but the root's, for rng.choice
    next_oid = 1
    undos = 0
    last_tid = None
    started = time.time()
    for number in range(args.transactions):
        txn = TransactionMetaData(
            user='bench', description='txn %d' % number,
            extension={'number': number})
        if number == 0:
            # The root, so that the result opens as a ZODB database.
            storage.tpc_begin(txn)
            storage.store(z64, z64, record_data(200, rng), '', txn)
            storage.tpc_vote(txn)
            last_tid = storage.tpc_finish(txn)
            serials[z64] = last_tid
            continue
        if args.undo_every and number % args.undo_every == 0:
            txn.description = 'undo of %s' % last_tid.hex()
            storage.tpc_begin(txn)
            # undo() takes undoLog()'s id: the tid in base64.
            _, oids = storage.undo(
                base64.encodebytes(last_tid).rstrip(b'\n'), txn)
            storage.tpc_vote(txn)
            last_tid = storage.tpc_finish(txn)
            undos += 1
            for oid in oids:
                try:
                    serials[oid] = storage.load(oid)[1]
                except ZODB.POSException.POSKeyError:
                    serials.pop(oid, None)  # its creation was undone
            existing = [oid for oid in serials if oid != z64]
            continue
        storage.tpc_begin(txn)
        stored = set()
        for _ in range(rng.randint(args.records_min, args.records_max)):
            if existing and rng.random() >= 1 / 3:
                oid = rng.choice(existing)
                if oid in stored:
                    continue
                serial = serials[oid]
            else:
                oid, serial = p64(next_oid), z64
                next_oid += 1
            stored.add(oid)
            size = rng.randint(args.size_min, args.size_max)
            storage.store(oid, serial, record_data(size, rng), '', txn)
        storage.tpc_vote(txn)
        last_tid = storage.tpc_finish(txn)
        for oid in stored:
            if oid not in serials:
                existing.append(oid)
            serials[oid] = last_tid
    storage.close()
    result = summarize(ZODB.FileStorage.FileStorage(args.path, read_only=True))
    result['undo_transactions'] = undos
    result['objects'] = len(serials)
    result['build_seconds'] = time.time() - started
    print(json.dumps(result))


def summarize(storage):
    """Counts, sizes and digests of everything `storage` holds, in
    transaction order. `data` covers tids and every record's oid and data;
    `meta` the transactions' status, user, description and extension."""
    data_digest = hashlib.sha256()
    meta_digest = hashlib.sha256()
    transactions = records = size = 0
    first = last = None
    iterator = storage.iterator()
    try:
        for txn in iterator:
            transactions += 1
            first = first or txn.tid
            last = txn.tid
            data_digest.update(b'T' + txn.tid)
            meta_digest.update(b'T' + txn.tid + txn.status.encode())
            for part in (txn.user, txn.description):
                part = part if isinstance(part, bytes) else part.encode()
                meta_digest.update(b'%d:' % len(part) + part)
            extension = getattr(txn, 'extension', None)
            if extension is None:
                extension = getattr(txn, '_extension', {})
            meta_digest.update(repr(sorted(extension.items())).encode())
            for record in txn:
                records += 1
                if record.data is None:
                    data_digest.update(b'R' + record.oid + b'N')
                else:
                    size += len(record.data)
                    data_digest.update(b'R' + record.oid + b'D%d:'
                                       % len(record.data) + record.data)
    finally:
        close = getattr(iterator, 'close', None)
        if close is not None:
            close()
    last_transaction = storage.lastTransaction()
    storage.close()
    return {
        'transactions': transactions,
        'records': records,
        'bytes': size,
        'first_tid': tid_hex(first),
        'last_tid': tid_hex(last),
        'last_transaction': tid_hex(last_transaction),
        'data_digest': data_digest.hexdigest(),
        'meta_digest': meta_digest.hexdigest(),
    }


def client(port, read_only=False):
    return ZEO.ClientStorage.ClientStorage(
        ('127.0.0.1', port), storage='1', read_only=read_only, wait=True,
        wait_timeout=30)


def copy(args):
    source = client(args.source, read_only=True)
    destination = client(args.destination)
    if destination.lastTransaction() != z64:
        sys.exit('the destination is not empty: last transaction %s'
                 % destination.lastTransaction().hex())
    started = time.perf_counter()
    destination.copyTransactionsFrom(source)
    seconds = time.perf_counter() - started
    source.close()
    destination.close()
    print(json.dumps({'seconds': seconds}))


def digest(args):
    storage = ZODB.FileStorage.FileStorage(args.path, read_only=True)
    print(json.dumps(summarize(storage)))


def main():
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest='command', required=True)
    p = commands.add_parser('build')
    p.add_argument('path')
    p.add_argument('--transactions', type=int, default=5000)
    p.add_argument('--records-min', type=int, default=2)
    p.add_argument('--records-max', type=int, default=8)
    p.add_argument('--size-min', type=int, default=200)
    p.add_argument('--size-max', type=int, default=4000)
    p.add_argument('--undo-every', type=int, default=50)
    p.add_argument('--seed', type=int, default=4)
    p.set_defaults(run=build)
    p = commands.add_parser('copy')
    p.add_argument('source', type=int)
    p.add_argument('destination', type=int)
    p.set_defaults(run=copy)
    p = commands.add_parser('digest')
    p.add_argument('path')
    p.set_defaults(run=digest)
    args = parser.parse_args()
    args.run(args)


if __name__ == '__main__':
    main()
