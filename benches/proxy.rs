//! What zeoraid costs on the hot path: load latency (one request in
//! flight), pipelined load throughput and small-commit latency, directly
//! against a ZEO server and through zeoraid with one and with two backends,
//! all in one run on this machine. Real runzeo servers (pickle), raw ZEO
//! clients speaking msgpack to zeoraid and pickle to ZEO.
//!
//!     cargo bench --bench proxy
//!
//! Figures and how they were taken: docs/benchmarks.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use support::raw_client::{RawClient, Z64};
use support::{ZeoServer, ZeoraidConfig, ZeoraidProcess};
use zeoraid::protocol::{Encoding, Message, MessageKind, Value};

const OBJECTS: usize = 1000;
const RECORD: usize = 512;
const SEQUENTIAL_LOADS: usize = 5000;
const PIPELINED_LOADS: usize = 50_000;
const IN_FLIGHT: usize = 64;
const COMMITS: usize = 300;

fn main() {
    // Under `cargo test --benches` only check that it runs.
    let quick = std::env::args().any(|a| a == "--test" || a == "--list");
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let scale = if quick { 20 } else { 1 };
    let binary = env!("CARGO_BIN_EXE_zeoraid");

    let lone = ZeoServer::start(false);
    let mirrored = [ZeoServer::start(false), ZeoServer::start(false)];
    let single = ZeoraidProcess::start_with(binary, quiet(ZeoraidConfig::new("msgpack", &[&lone])));
    let double = ZeoraidProcess::start_with(
        binary,
        quiet(ZeoraidConfig::new("msgpack", &[&mirrored[0], &mirrored[1]])),
    );
    let setups = [
        (
            "ZEO server, direct",
            mirrored[0].port(),
            Encoding::Pickle,
            double.port(),
        ),
        (
            "zeoraid, 1 backend",
            single.port(),
            Encoding::Msgpack,
            single.port(),
        ),
        (
            "zeoraid, 2 backends",
            double.port(),
            Encoding::Msgpack,
            double.port(),
        ),
    ];
    println!(
        "{:<22} {:>16} {:>18} {:>16}",
        "", "load latency", "pipelined loads", "commit latency"
    );
    for (label, port, encoding, populate_port) in setups {
        // Data goes in through zeoraid (a direct write would degrade a
        // mirrored backend); the direct setup reads what zeoraid wrote.
        let oids = populate(populate_port, OBJECTS / scale);
        let mut client = RawClient::registered(port, encoding);
        let latency = load_latency(&mut client, &oids, SEQUENTIAL_LOADS / scale);
        let throughput = pipelined_loads(&mut client, &oids, PIPELINED_LOADS / scale);
        let commit = if label.contains("direct") {
            // Committing directly would make zeoraid degrade the backend;
            // measure on the lone backend instead, which has no zeoraid in
            // front of it after this point.
            drop(client);
            None
        } else {
            Some(commit_latency(&mut client, COMMITS / scale))
        };
        println!(
            "{label:<22} {:>13.1} µs {:>13.0} ops/s {:>16}",
            latency.as_secs_f64() * 1e6 / (SEQUENTIAL_LOADS / scale) as f64,
            throughput,
            commit.map_or("see below".to_owned(), |d| format!(
                "{:.2} ms",
                d.as_secs_f64() * 1e3
            )),
        );
    }
    // Direct commit latency: on a server no zeoraid fronts.
    drop(single);
    let mut direct = RawClient::registered(lone.port(), Encoding::Pickle);
    let commit = commit_latency(&mut direct, COMMITS / scale);
    println!(
        "{:<22} {:>16} {:>18} {:>13.2} ms",
        "ZEO server, direct",
        "",
        "",
        commit.as_secs_f64() * 1e3
    );
}

fn quiet(mut config: ZeoraidConfig) -> ZeoraidConfig {
    config.extra_server = vec!["log_level = \"warn\"".to_owned()];
    config
}

/// Commits `count` objects of RECORD bytes in one transaction.
fn populate(port: u16, count: usize) -> Vec<Value> {
    let mut client = RawClient::registered(port, Encoding::Msgpack);
    let mut oids = Vec::new();
    while oids.len() < count {
        let batch = client.call("new_oids", vec![]).expect("new_oids");
        oids.extend(batch.as_seq().unwrap().iter().cloned());
    }
    oids.truncate(count);
    client.one_way("tpc_begin", vec![Value::Int(1)]);
    for oid in &oids {
        client.one_way(
            "storea",
            vec![
                oid.clone(),
                Value::bytes(&Z64[..]),
                Value::bytes(vec![b'x'; RECORD]),
                Value::Int(1),
            ],
        );
    }
    client.call("vote", vec![Value::Int(1)]).expect("vote");
    client
        .call("tpc_finish", vec![Value::Int(1)])
        .expect("tpc_finish");
    oids
}

fn load_args(oid: &Value) -> Vec<Value> {
    vec![
        oid.clone(),
        Value::bytes(vec![0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
    ]
}

fn load_latency(client: &mut RawClient, oids: &[Value], count: usize) -> Duration {
    let started = Instant::now();
    for i in 0..count {
        client
            .call("loadBefore", load_args(&oids[i % oids.len()]))
            .expect("load");
    }
    started.elapsed()
}

/// Loads with IN_FLIGHT requests outstanding; returns loads per second.
fn pipelined_loads(client: &mut RawClient, oids: &[Value], count: usize) -> f64 {
    let started = Instant::now();
    let mut sent = 0;
    let mut received = 0;
    while received < count {
        while sent < count && sent - received < IN_FLIGHT {
            let msgid = client.next_msgid;
            client.next_msgid += 1;
            client.send(&Message::call(
                msgid,
                "loadBefore",
                load_args(&oids[sent % oids.len()]),
            ));
            sent += 1;
        }
        let frame = client.read_frame().expect("reply");
        let message = client
            .encoding
            .decode(&Bytes::from(frame))
            .expect("decodes");
        if message.kind == MessageKind::Reply {
            received += 1;
        }
    }
    count as f64 / started.elapsed().as_secs_f64()
}

fn commit_latency(client: &mut RawClient, count: usize) -> Duration {
    let started = Instant::now();
    for txn in 0..count {
        client.commit(1000 + txn as i64, b"small");
    }
    started.elapsed() / count as u32
}
