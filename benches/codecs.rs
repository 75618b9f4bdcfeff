//! Encode/decode cost of the two hottest messages, in both encodings: the
//! reply to a `loadBefore` (every cache miss of every client) and a
//! one-way `storea` (every object written). Run: `cargo bench --bench codecs`.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use zeoraid::protocol::{Encoding, Message, Value};

const RECORD_SIZES: [usize; 2] = [512, 64 * 1024];

fn oid(n: u64) -> Value {
    Value::bytes(n.to_be_bytes().to_vec())
}

fn load_before_reply(record: &Bytes) -> Message {
    let tid = oid(0x040d_53da_e1d4_ba88);
    Message::reply(
        Value::Tuple(vec![oid(42), oid(0x7fff_ffff_ffff_ffff)]),
        Value::Tuple(vec![Value::Bytes(record.clone()), tid, Value::None]),
    )
}

fn storea(record: &Bytes) -> Message {
    Message::one_way(
        "storea",
        vec![
            oid(42),
            oid(0x040d_53da_e1d4_ba88),
            Value::Bytes(record.clone()),
            Value::Int(140_250_773_104_720),
        ],
    )
}

fn codecs(c: &mut Criterion) {
    for size in RECORD_SIZES {
        let record = Bytes::from(vec![b'x'; size]);
        for (label, message) in [
            ("loadBefore-reply", load_before_reply(&record)),
            ("storea", storea(&record)),
        ] {
            let mut group = c.benchmark_group(format!("{label}/{size}B"));
            group.throughput(Throughput::Bytes(size as u64));
            for encoding in [Encoding::Msgpack, Encoding::Pickle] {
                let mut buffer = BytesMut::with_capacity(size + 128);
                group.bench_with_input(
                    BenchmarkId::new("encode", format!("{encoding:?}")),
                    &message,
                    |b, message| {
                        b.iter(|| {
                            buffer.clear();
                            encoding.encode(message, &mut buffer);
                            buffer.len()
                        })
                    },
                );
                let mut encoded = BytesMut::new();
                encoding.encode(&message, &mut encoded);
                let frame = encoded.freeze();
                group.bench_with_input(
                    BenchmarkId::new("decode", format!("{encoding:?}")),
                    &frame,
                    |b, frame| b.iter(|| encoding.decode(frame).expect("decodes")),
                );
            }
            group.finish();
        }
    }
}

criterion_group!(benches, codecs);
criterion_main!(benches);
