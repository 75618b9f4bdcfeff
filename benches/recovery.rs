//! Online recovery throughput: how fast zeoraid rebuilds an empty backend
//! (`raid_recover`), side by side in one run with what an operator would
//! otherwise do to rebuild a replica, ZODB's `copyTransactionsFrom` from one
//! ZEO server to another, on the same data.
//!
//!     cargo bench --bench recovery
//!
//! * A source FileStorage is built once (benches/python/recovery_bench.py
//!   `build`, straight into the file) and served by runzeo A.
//! * Baseline: empty runzeo B; `ClientStorage(B).copyTransactionsFrom(
//!   ClientStorage(A))`, timed inside Python around that call alone.
//! * zeoraid: empty runzeo C; zeoraid over A and C degrades C (behind) at
//!   start-up; `raid_recover('c', {no limits})`, then `raid_recovery()`
//!   polled every 10 ms until state "done"; timed from the call to done.
//! * After each copy its runzeo (and zeoraid) is stopped and its Data.fs
//!   read back with FileStorage's iterator and compared with the source:
//!   transaction count, lastTransaction, every tid, every record's oid and
//!   data, transaction metadata. A fast broken copy fails the run.
//!
//! Environment (defaults in brackets):
//!   ZEORAID_BENCH_TRANSACTIONS [5000]  transactions in the source
//!   ZEORAID_BENCH_RECORDS_MIN/_MAX [2/8]  records per transaction
//!   ZEORAID_BENCH_SIZE_MIN/_MAX [200/4000]  bytes per record
//!   ZEORAID_BENCH_UNDO_EVERY [50]  every n-th transaction undoes the one
//!     before it (0: none)
//!   ZEORAID_BENCH_ROUNDS [1]  rounds of both copies (order alternates)
//!   ZEORAID_BENCH_PARTS [baseline,zeoraid]  which copies to run
//!   ZEORAID_BENCH_PROGRESS  set: print raid_recovery() every second
//!
//! Figures and how they were taken: docs/benchmarks.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use support::raw_client::RawClient;
use support::{ZeoServer, ZeoraidConfig, ZeoraidProcess};
use zeoraid::protocol::{Encoding, Value};

/// How long one recovery may take before the run is declared stuck.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(3600);
const POLL: Duration = Duration::from_millis(10);

struct Params {
    transactions: usize,
    records_min: usize,
    records_max: usize,
    size_min: usize,
    size_max: usize,
    undo_every: usize,
    rounds: usize,
    baseline: bool,
    zeoraid: bool,
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(text) if !text.trim().is_empty() => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
        _ => default,
    }
}

impl Params {
    fn from_env(quick: bool) -> Params {
        let parts =
            std::env::var("ZEORAID_BENCH_PARTS").unwrap_or_else(|_| "baseline,zeoraid".to_owned());
        let parts: Vec<&str> = parts.split(',').map(str::trim).collect();
        for part in &parts {
            assert!(
                ["baseline", "zeoraid"].contains(part),
                "ZEORAID_BENCH_PARTS: unknown part {part:?} (baseline, zeoraid)"
            );
        }
        let params = Params {
            transactions: env_usize("ZEORAID_BENCH_TRANSACTIONS", if quick { 100 } else { 5000 }),
            records_min: env_usize("ZEORAID_BENCH_RECORDS_MIN", 2),
            records_max: env_usize("ZEORAID_BENCH_RECORDS_MAX", 8),
            size_min: env_usize("ZEORAID_BENCH_SIZE_MIN", 200),
            size_max: env_usize("ZEORAID_BENCH_SIZE_MAX", 4000),
            undo_every: env_usize("ZEORAID_BENCH_UNDO_EVERY", 50),
            rounds: env_usize("ZEORAID_BENCH_ROUNDS", 1).max(1),
            baseline: parts.contains(&"baseline"),
            zeoraid: parts.contains(&"zeoraid"),
        };
        assert!(params.transactions >= 2, "at least 2 transactions");
        assert!(params.records_min >= 1 && params.records_min <= params.records_max);
        assert!(params.size_min <= params.size_max);
        params
    }
}

/// What `recovery_bench.py digest` (and `build`) report about a storage.
#[derive(Debug, PartialEq)]
struct Contents {
    transactions: u64,
    records: u64,
    bytes: u64,
    last_tid: String,
    last_transaction: String,
    data_digest: String,
    meta_digest: String,
}

impl Contents {
    fn from_json(json: &Json) -> Contents {
        let int = |key: &str| {
            json[key]
                .as_u64()
                .unwrap_or_else(|| panic!("{key} in {json}"))
        };
        let text = |key: &str| json[key].as_str().unwrap_or("").to_owned();
        Contents {
            transactions: int("transactions"),
            records: int("records"),
            bytes: int("bytes"),
            last_tid: text("last_tid"),
            last_transaction: text("last_transaction"),
            data_digest: text("data_digest"),
            meta_digest: text("meta_digest"),
        }
    }

    /// Panics, saying what differs, unless `copy` holds what `self` does.
    fn check_copy(&self, copy: &Contents, what: &str) {
        if copy == self {
            return;
        }
        let mut differences = Vec::new();
        if copy.transactions != self.transactions {
            differences.push(format!(
                "{} transactions instead of {}",
                copy.transactions, self.transactions
            ));
        }
        if copy.last_transaction != self.last_transaction || copy.last_tid != self.last_tid {
            differences.push(format!(
                "lastTransaction {} (last iterated {}) instead of {}",
                copy.last_transaction, copy.last_tid, self.last_transaction
            ));
        }
        if copy.records != self.records || copy.bytes != self.bytes {
            differences.push(format!(
                "{} records of {} bytes instead of {} of {}",
                copy.records, copy.bytes, self.records, self.bytes
            ));
        }
        if copy.data_digest != self.data_digest {
            differences.push("tids, oids or record data differ".to_owned());
        }
        if copy.meta_digest != self.meta_digest {
            differences.push(
                "transaction metadata (status, user, description, extension) differ".to_owned(),
            );
        }
        panic!(
            "{what}: the copy is not the source: {}",
            differences.join("; ")
        );
    }
}

struct Bench {
    python: PathBuf,
    script: PathBuf,
}

impl Bench {
    /// Runs `recovery_bench.py <args>`; its last stdout line as JSON.
    fn run(&self, args: &[String]) -> Json {
        support::run_json_script(&self.python, &self.script, args)
    }

    /// What `server` holds: stops it and reads its FileStorage.
    fn digest(&self, server: &mut ZeoServer) -> Contents {
        server.stop();
        Contents::from_json(&self.run(&[
            "digest".to_owned(),
            server.data_fs().to_string_lossy().into_owned(),
        ]))
    }
}

struct Row {
    label: &'static str,
    seconds: f64,
    transactions: u64,
    bytes: u64,
    note: String,
}

fn main() {
    // Under `cargo test --benches` only check that it runs, on little data.
    let quick = std::env::args().any(|a| a == "--test" || a == "--list");
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let params = Params::from_env(quick);
    let binary = env!("CARGO_BIN_EXE_zeoraid");
    let bench = Bench {
        python: support::python(),
        script: support::manifest_dir()
            .join("benches")
            .join("python")
            .join("recovery_bench.py"),
    };

    // The source: built straight into A's FileStorage while A is down.
    let mut source_server = ZeoServer::start(false);
    source_server.stop();
    let built = bench.run(&[
        "build".to_owned(),
        source_server.data_fs().to_string_lossy().into_owned(),
        format!("--transactions={}", params.transactions),
        format!("--records-min={}", params.records_min),
        format!("--records-max={}", params.records_max),
        format!("--size-min={}", params.size_min),
        format!("--size-max={}", params.size_max),
        format!("--undo-every={}", params.undo_every),
    ]);
    source_server.restart();
    let source = Contents::from_json(&built);
    println!(
        "source: {} transactions ({} undo), {} records, {:.1} MB of record data, \
         {} objects; built in {:.1} s",
        source.transactions,
        built["undo_transactions"],
        source.records,
        source.bytes as f64 / 1e6,
        built["objects"],
        built["build_seconds"].as_f64().unwrap_or(0.0)
    );

    let mut rows = Vec::new();
    for round in 0..params.rounds {
        let zeoraid_first = round % 2 == 1;
        for part in if zeoraid_first {
            ["zeoraid", "baseline"]
        } else {
            ["baseline", "zeoraid"]
        } {
            if part == "baseline" && params.baseline {
                rows.push(baseline(&bench, &source_server, &source));
            } else if part == "zeoraid" && params.zeoraid {
                rows.push(recovery(&bench, binary, &source_server, &source));
            }
        }
    }

    println!();
    println!(
        "{:<34} {:>9} {:>12} {:>9}  notes",
        "", "seconds", "txns/s", "MB/s"
    );
    for row in &rows {
        println!(
            "{:<34} {:>9.2} {:>12.0} {:>9.2}  {}",
            row.label,
            row.seconds,
            row.transactions as f64 / row.seconds,
            row.bytes as f64 / 1e6 / row.seconds,
            row.note
        );
    }
    let seconds = |label: &str| -> Vec<f64> {
        rows.iter()
            .filter(|r| r.label == label)
            .map(|r| r.seconds)
            .collect()
    };
    let (baselines, recoveries) = (seconds(BASELINE), seconds(ZEORAID));
    if !baselines.is_empty() && !recoveries.is_empty() {
        let best = |all: &[f64]| all.iter().copied().fold(f64::INFINITY, f64::min);
        println!();
        if params.rounds > 1 {
            let per_round: Vec<String> = baselines
                .iter()
                .zip(&recoveries)
                .map(|(b, z)| format!("{:.2}x", b / z))
                .collect();
            println!(
                "zeoraid / baseline throughput: {:.2}x (best round of each); per round {}",
                best(&baselines) / best(&recoveries),
                per_round.join(", ")
            );
        } else {
            println!(
                "zeoraid / baseline throughput: {:.2}x",
                baselines[0] / recoveries[0]
            );
        }
    }
}

const BASELINE: &str = "copyTransactionsFrom, ZEO to ZEO";
const ZEORAID: &str = "zeoraid raid_recover";

fn baseline(bench: &Bench, source_server: &ZeoServer, source: &Contents) -> Row {
    let mut target = ZeoServer::start(false);
    let result = bench.run(&[
        "copy".to_owned(),
        source_server.port().to_string(),
        target.port().to_string(),
    ]);
    let seconds = result["seconds"].as_f64().expect("seconds");
    source.check_copy(&bench.digest(&mut target), BASELINE);
    Row {
        label: BASELINE,
        seconds,
        transactions: source.transactions,
        bytes: source.bytes,
        note: "verified".to_owned(),
    }
}

fn recovery(bench: &Bench, binary: &str, source_server: &ZeoServer, source: &Contents) -> Row {
    let mut target = ZeoServer::start(false);
    let mut config = ZeoraidConfig::new("msgpack", &[source_server, &target]);
    // Named after the servers: A the source, C the empty one.
    config.backends[1].0 = "c".to_owned();
    config.extra_server = vec!["log_level = \"warn\"".to_owned()];
    let mut zeoraid = ZeoraidProcess::start_with(binary, config);
    let mut client = RawClient::registered(zeoraid.port(), Encoding::Msgpack);

    // C is empty, so zeoraid degrades it at start-up.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let details = client.call("raid_details", vec![]).expect("raid_details");
        let c = details
            .dict_get("c")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if c.starts_with("degraded") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "zeoraid did not degrade the empty backend c: {}\n{}",
            details.summary(),
            zeoraid.log()
        );
        thread::sleep(Duration::from_millis(50));
    }

    let unlimited = Value::Dict(vec![
        (Value::str("transactions_per_second"), Value::Int(0)),
        (Value::str("bytes_per_second"), Value::Int(0)),
    ]);
    let started = Instant::now();
    let reply = client.call("raid_recover", vec![Value::str("c"), unlimited]);
    if let Err((class, detail)) = &reply {
        panic!(
            "raid_recover('c') refused: {class}: {}\n{}",
            detail.summary(),
            zeoraid.log()
        );
    }
    let trace = std::env::var_os("ZEORAID_BENCH_PROGRESS").is_some();
    let mut traced = Instant::now();
    let status = loop {
        let status = client.call("raid_recovery", vec![]).expect("raid_recovery");
        if trace && traced.elapsed() >= Duration::from_secs(1) {
            traced = Instant::now();
            let field = |key: &str| match status.dict_get(key) {
                Some(Value::Str(text)) => text.clone(),
                Some(Value::Int(n)) => n.to_string(),
                Some(Value::Float(x)) => format!("{x:.0}"),
                Some(other) => other.summary(),
                None => "-".to_owned(),
            };
            eprintln!(
                "{:6.1} s  {} {} transactions copied, {} bytes, at {} transactions/s",
                started.elapsed().as_secs_f64(),
                field("phase"),
                field("transactions_copied"),
                field("bytes_copied"),
                field("transactions_per_second"),
            );
        }
        let state = status
            .dict_get("state")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        match state.as_str() {
            "done" => break status,
            "failed" => panic!(
                "the recovery failed: {}\n{}",
                status.summary(),
                zeoraid.log()
            ),
            _ => {}
        }
        assert!(
            started.elapsed() < RECOVERY_TIMEOUT,
            "no recovery done after {RECOVERY_TIMEOUT:?}: {}",
            status.summary()
        );
        thread::sleep(POLL);
    };
    let seconds = started.elapsed().as_secs_f64();
    let int = |key: &str| status.dict_get(key).and_then(Value::as_int);
    let float = |key: &str| match status.dict_get(key) {
        Some(Value::Float(f)) => Some(*f),
        Some(Value::Int(i)) => Some(*i as f64),
        _ => None,
    };
    let copied = int("transactions_copied");
    let bytes_copied = int("bytes_copied");
    let own = match (float("started"), float("finished")) {
        (Some(from), Some(to)) => format!("{:.2} s by zeoraid's clock", to - from),
        _ => "no started/finished".to_owned(),
    };
    let raid_status = client.call("raid_status", vec![]).expect("raid_status");
    assert_eq!(
        raid_status.as_str(),
        Some("optimal"),
        "zeoraid is not optimal after the recovery: {}",
        status.summary()
    );
    drop(client);
    zeoraid.stop(Duration::from_secs(10));
    source.check_copy(&bench.digest(&mut target), ZEORAID);
    assert_eq!(
        copied,
        Some(source.transactions as i64),
        "transactions_copied: {}",
        status.summary()
    );
    Row {
        label: ZEORAID,
        seconds,
        transactions: source.transactions,
        bytes: source.bytes,
        note: format!(
            "verified; {own}; reports {} transactions, {} bytes copied",
            copied.unwrap_or(-1),
            match bytes_copied {
                Some(b) if b == source.bytes as i64 => "all record".to_owned(),
                Some(b) => format!("{b} (source: {})", source.bytes),
                None => "no".to_owned(),
            }
        ),
    }
}
