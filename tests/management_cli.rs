//! The management commands as an operator or a monitoring system runs
//! them: the real `zeoraid` binary against an in-process fake zeoraid that
//! speaks ZEO 5 (msgpack or pickle), answers the `raid_*` methods with
//! canned values, and records how the client registered and what it
//! called.

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use zeoraid::protocol::framing::{frame_reader, FrameWriter};
use zeoraid::protocol::{Encoding, Message, Tid, Value, ZeoError};

/// The canned answers of one fake zeoraid.
#[derive(Clone)]
struct Canned {
    encoding: Encoding,
    status: Value,
    details: Value,
    /// The answers to successive `raid_recovery` calls; the last one
    /// repeats.
    recoveries: Vec<Value>,
}

/// What the fake saw.
#[derive(Default)]
struct Seen {
    /// `(storage, read_only)` of every `register`.
    registrations: Vec<(String, bool)>,
    /// Every other call, with its arguments.
    calls: Vec<(String, Vec<Value>)>,
    /// A client handshake that did not echo the server's.
    bad_handshakes: Vec<Vec<u8>>,
}

/// Starts a fake zeoraid on a free port; returns its address.
async fn fake_zeoraid(canned: Canned) -> (String, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let recorder = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, canned.clone(), recorder.clone()));
        }
    });
    (address, seen)
}

async fn serve(stream: TcpStream, canned: Canned, seen: Arc<Mutex<Seen>>) {
    let encoding = canned.encoding;
    let (read, write) = stream.into_split();
    let mut frames = frame_reader(read, 1 << 20);
    let mut writer = FrameWriter::new(write, 1 << 20);
    writer.push_raw(encoding.handshake());
    if writer.flush(Duration::from_secs(1)).await.is_err() {
        return;
    }
    match frames.next().await {
        Some(Ok(answer)) if &answer[..] == encoding.handshake() => {}
        Some(Ok(answer)) => return seen.lock().bad_handshakes.push(answer.to_vec()),
        _ => return,
    }
    while let Some(Ok(frame)) = frames.next().await {
        let message = encoding.decode(&frame.freeze()).unwrap();
        let args = message.args.into_seq().unwrap();
        let answer = match message.name.as_str() {
            "register" => {
                let storage = args[0].as_str().unwrap().to_owned();
                seen.lock()
                    .registrations
                    .push((storage.clone(), args[1].is_truthy()));
                if storage == "1" {
                    Ok(Tid(0x03d4_0000_0000_0001).to_value())
                } else {
                    Err(ZeoError::value_error(format!("unknown storage: {storage}")))
                }
            }
            name => {
                seen.lock().calls.push((name.to_owned(), args.clone()));
                match name {
                    "raid_status" => Ok(canned.status.clone()),
                    "raid_details" => Ok(canned.details.clone()),
                    "raid_disable" if args[0] == Value::str("c") => {
                        Ok(Value::str("backend c disabled"))
                    }
                    "raid_disable" => Err(ZeoError::value_error(format!(
                        "no backend named {}",
                        args[0].as_str().unwrap()
                    ))),
                    "raid_recover" if args[0] == Value::str("b") => {
                        Ok(Value::str("recovery of b started from a"))
                    }
                    "raid_recover" => Err(ZeoError::value_error(format!(
                        "{} is optimal; only a degraded backend can be recovered",
                        args[0].as_str().unwrap()
                    ))),
                    "raid_recovery" => {
                        let polls = seen.lock().calls.iter().filter(|c| c.0 == name).count();
                        Ok(canned.recoveries[(polls - 1).min(canned.recoveries.len() - 1)].clone())
                    }
                    other => Err(ZeoError::attribute_error(other)),
                }
            }
        };
        // Another client's commit lands just before every reply: the
        // management client must skip the invalidation, as ClientStorage's
        // cache would take it.
        let oid = Value::bytes(&[0u8, 0, 0, 0, 0, 0, 0, 7][..]);
        let invalidation = Message::one_way(
            "invalidateTransaction",
            vec![
                Tid(0x03d4_0000_0000_0002).to_value(),
                Value::List(vec![oid]),
            ],
        );
        let reply = match answer {
            Ok(value) => Message::reply(message.msgid, value),
            Err(error) => error.into_reply(message.msgid),
        };
        let pushed = writer
            .push(encoding, &invalidation)
            .and_then(|()| writer.push(encoding, &reply));
        if pushed.is_err() || writer.flush(Duration::from_secs(1)).await.is_err() {
            return;
        }
    }
}

fn details(entries: &[(&str, &str)]) -> Value {
    Value::Dict(
        entries
            .iter()
            .map(|(name, text)| (Value::str(*name), Value::str(*text)))
            .collect(),
    )
}

fn canned(encoding: Encoding, status: &str, entries: &[(&str, &str)]) -> Canned {
    Canned {
        encoding,
        status: Value::str(status),
        details: details(entries),
        recoveries: vec![Value::None],
    }
}

/// A fake whose recovery of b goes through `recoveries`.
fn recovering(encoding: Encoding, recoveries: Vec<Value>) -> Canned {
    Canned {
        recoveries,
        ..canned(encoding, "recovering", &[])
    }
}

/// A `raid_recovery` answer about the recovery of b from a.
fn recovery(state: &str, phase: &str, copied: i64, error: Option<&str>) -> Value {
    let fields = [
        ("backend", Value::str("b")),
        ("source", Value::str("a")),
        ("state", Value::str(state)),
        ("phase", Value::str(phase)),
        ("full_verify", Value::Bool(false)),
        ("transactions_verified", Value::Int(1)),
        ("transactions_copied", Value::Int(copied)),
        ("bytes_copied", Value::Int(copied * 2048)),
        ("tid", Value::str(format!("03ed4a5b{copied:08x}"))),
        ("transactions_per_second", Value::Float(copied as f64 / 2.0)),
        ("bytes_per_second", Value::Float(copied as f64 * 1024.0)),
        (
            "eta_seconds",
            if state == "running" {
                Value::Float(75.0)
            } else {
                Value::None
            },
        ),
        (
            "limits",
            Value::Dict(vec![
                (Value::str("transactions_per_second"), Value::Int(0)),
                (Value::str("bytes_per_second"), Value::Int(0)),
            ]),
        ),
        ("started", Value::Float(1_790_000_000.0)),
        (
            "finished",
            if state == "running" {
                Value::None
            } else {
                Value::Float(1_790_000_002.5)
            },
        ),
        ("error", error.map_or(Value::None, Value::str)),
    ];
    Value::Dict(
        fields
            .into_iter()
            .map(|(key, value)| (Value::str(key), value))
            .collect(),
    )
}

/// Runs the binary with `args`, without blocking the fake server's tasks.
async fn zeoraid(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_zeoraid"))
            .args(&args)
            .output()
            .expect("the zeoraid binary runs")
    })
    .await
    .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts the fake saw exactly one connection, registered read-only.
fn assert_one_read_only_registration(seen: &Mutex<Seen>) {
    let seen = seen.lock();
    assert!(seen.bad_handshakes.is_empty(), "{:?}", seen.bad_handshakes);
    assert_eq!(seen.registrations, [("1".to_owned(), true)]);
}

/// An address where nothing listens.
async fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

#[tokio::test]
async fn status_optimal_is_one_ok_line() {
    let (server, seen) = fake_zeoraid(canned(
        Encoding::Msgpack,
        "optimal",
        &[("a", "optimal"), ("b", "optimal"), ("c", "optimal")],
    ))
    .await;
    let output = zeoraid(&["status", "--server", &server]).await;
    assert_eq!(stdout(&output), "optimal - 3 of 3 backends optimal\n");
    assert_eq!(stderr(&output), "");
    assert_eq!(output.status.code(), Some(0));
    assert_one_read_only_registration(&seen);
    let methods: Vec<String> = seen.lock().calls.iter().map(|c| c.0.clone()).collect();
    assert_eq!(methods, ["raid_status", "raid_details"]);
}

#[tokio::test]
async fn status_degraded_names_the_backend_and_warns() {
    let reason = "degraded: disconnected: connection reset (since 2026-11-29T00:31:02Z)";
    let (server, seen) = fake_zeoraid(canned(
        Encoding::Pickle,
        "degraded",
        &[("c", reason), ("a", "optimal"), ("b", "optimal")],
    ))
    .await;
    let output = zeoraid(&["status", "--server", &server]).await;
    assert_eq!(
        stdout(&output),
        format!("degraded - 2 of 3 backends optimal; c: {reason}\n")
    );
    assert_eq!(output.status.code(), Some(1));
    assert_one_read_only_registration(&seen);
}

#[tokio::test]
async fn status_recovering_warns() {
    let (server, _) = fake_zeoraid(canned(
        Encoding::Msgpack,
        "recovering",
        &[
            ("a", "optimal"),
            ("b", "recovering: 1200 of 5000 transactions"),
        ],
    ))
    .await;
    let output = zeoraid(&["status", "--server", &server]).await;
    assert_eq!(
        stdout(&output),
        "recovering - 1 of 2 backends optimal; b: recovering: 1200 of 5000 transactions\n"
    );
    assert_eq!(output.status.code(), Some(1));
}

#[tokio::test]
async fn status_failed_is_critical() {
    let (server, _) = fake_zeoraid(canned(
        Encoding::Pickle,
        "failed",
        &[
            ("b", "degraded: disabled by operator"),
            ("a", "degraded: disconnected: connection refused"),
        ],
    ))
    .await;
    let output = zeoraid(&["status", "--server", &server]).await;
    assert_eq!(
        stdout(&output),
        "failed - 0 of 2 backends optimal; a: degraded: disconnected: connection refused; \
         b: degraded: disabled by operator\n"
    );
    assert_eq!(output.status.code(), Some(2));
}

#[tokio::test]
async fn status_of_an_unreachable_zeoraid_is_unknown() {
    let server = closed_port().await;
    let output = zeoraid(&["status", "--server", &server]).await;
    assert_eq!(
        stdout(&output),
        format!("unknown - cannot reach zeoraid at {server}: connection refused\n")
    );
    assert_eq!(output.status.code(), Some(3));
}

#[tokio::test]
async fn status_of_a_silent_server_times_out_as_unknown() {
    // Accepts connections and never sends the handshake.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap().to_string();
    let held = tokio::spawn(async move {
        let mut streams = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            streams.push(stream);
        }
    });
    let started = Instant::now();
    let output = zeoraid(&["status", "--server", &server, "--timeout", "0.3"]).await;
    assert!(started.elapsed() < Duration::from_secs(2), "{started:?}");
    assert!(
        stdout(&output).starts_with(&format!(
            "unknown - no answer from zeoraid at {server} within 300ms"
        )),
        "{}",
        stdout(&output)
    );
    assert_eq!(output.status.code(), Some(3));
    held.abort();
}

#[tokio::test]
async fn status_with_an_unexpected_answer_or_storage_is_unknown() {
    let (server, _) = fake_zeoraid(canned(Encoding::Msgpack, "splendid", &[])).await;
    let output = zeoraid(&["status", "--server", &server]).await;
    assert_eq!(
        stdout(&output),
        "unknown - raid_status returned \"splendid\" instead of a state\n"
    );
    assert_eq!(output.status.code(), Some(3));

    let (server, seen) = fake_zeoraid(canned(Encoding::Pickle, "optimal", &[])).await;
    let output = zeoraid(&["status", "--server", &server, "--storage", "main"]).await;
    assert_eq!(
        stdout(&output),
        format!(
            "unknown - zeoraid at {server} refused to register storage \"main\": \
             builtins.ValueError: unknown storage: main\n"
        )
    );
    assert_eq!(output.status.code(), Some(3));
    assert_eq!(seen.lock().registrations, [("main".to_owned(), true)]);
    assert!(seen.lock().calls.is_empty());
}

#[tokio::test]
async fn details_prints_one_sorted_line_per_backend() {
    let (server, seen) = fake_zeoraid(canned(
        Encoding::Pickle,
        "degraded",
        &[
            (
                "c",
                "degraded: disconnected: connection reset (since 2026-11-29T00:31:02Z)",
            ),
            ("a", "optimal"),
            ("b", "recovering: 1200 of 5000 transactions"),
        ],
    ))
    .await;
    let output = zeoraid(&["details", "--server", &server, "--storage", "1"]).await;
    assert_eq!(
        stdout(&output),
        "a optimal\n\
         b recovering 1200 of 5000 transactions\n\
         c degraded disconnected: connection reset (since 2026-11-29T00:31:02Z)\n"
    );
    assert_eq!(stderr(&output), "");
    assert_eq!(output.status.code(), Some(0));
    assert_one_read_only_registration(&seen);
}

#[tokio::test]
async fn details_of_an_unreachable_zeoraid_fails_on_stderr() {
    let server = closed_port().await;
    let output = zeoraid(&["details", "--server", &server]).await;
    assert_eq!(stdout(&output), "");
    assert_eq!(
        stderr(&output),
        format!("zeoraid: cannot reach zeoraid at {server}: connection refused\n")
    );
    assert_eq!(output.status.code(), Some(3));
}

#[tokio::test]
async fn disable_prints_the_confirmation() {
    let (server, seen) = fake_zeoraid(canned(Encoding::Msgpack, "optimal", &[])).await;
    let output = zeoraid(&["disable", "c", "--server", &server]).await;
    assert_eq!(stdout(&output), "backend c disabled\n");
    assert_eq!(output.status.code(), Some(0));
    assert_one_read_only_registration(&seen);
    assert_eq!(
        seen.lock().calls,
        [("raid_disable".to_owned(), vec![Value::str("c")])]
    );
}

#[tokio::test]
async fn disable_refused_by_zeoraid_exits_1() {
    let (server, _) = fake_zeoraid(canned(Encoding::Pickle, "optimal", &[])).await;
    let output = zeoraid(&["disable", "x", "--server", &server]).await;
    assert_eq!(stdout(&output), "");
    assert_eq!(
        stderr(&output),
        "zeoraid: raid_disable failed: builtins.ValueError: no backend named x\n"
    );
    assert_eq!(output.status.code(), Some(1));
}

#[tokio::test]
async fn disable_without_zeoraid_exits_3() {
    let server = closed_port().await;
    let output = zeoraid(&["disable", "c", "--server", &server]).await;
    assert!(stderr(&output).contains("cannot reach zeoraid"));
    assert_eq!(output.status.code(), Some(3));
}

#[tokio::test]
async fn recover_passes_only_the_options_given() {
    let (server, seen) = fake_zeoraid(canned(Encoding::Pickle, "degraded", &[])).await;
    let output = zeoraid(&["recover", "b", "--server", &server]).await;
    assert_eq!(stdout(&output), "recovery of b started from a\n");
    assert_eq!(stderr(&output), "");
    assert_eq!(output.status.code(), Some(0));
    assert_one_read_only_registration(&seen);
    assert_eq!(
        seen.lock().calls,
        [(
            "raid_recover".to_owned(),
            vec![Value::str("b"), Value::Dict(vec![])]
        )]
    );

    let (server, seen) = fake_zeoraid(canned(Encoding::Msgpack, "degraded", &[])).await;
    let output = zeoraid(&[
        "recover",
        "b",
        "--full-verify",
        "--transactions-per-second",
        "50",
        "--bytes-per-second",
        "0",
        "--server",
        &server,
    ])
    .await;
    assert_eq!(stdout(&output), "recovery of b started from a\n");
    assert_eq!(output.status.code(), Some(0));
    let options = Value::Dict(vec![
        (Value::str("full_verify"), Value::Bool(true)),
        (Value::str("transactions_per_second"), Value::Int(50)),
        (Value::str("bytes_per_second"), Value::Int(0)),
    ]);
    assert_eq!(
        seen.lock().calls,
        [("raid_recover".to_owned(), vec![Value::str("b"), options])]
    );
}

#[tokio::test]
async fn recover_refused_by_zeoraid_exits_1() {
    let (server, seen) = fake_zeoraid(canned(Encoding::Msgpack, "degraded", &[])).await;
    let output = zeoraid(&["recover", "a", "--wait", "--server", &server]).await;
    assert_eq!(stdout(&output), "");
    assert_eq!(
        stderr(&output),
        "zeoraid: raid_recover failed: builtins.ValueError: \
         a is optimal; only a degraded backend can be recovered\n"
    );
    assert_eq!(output.status.code(), Some(1));
    // Refused, so there is nothing to wait for.
    let methods: Vec<String> = seen.lock().calls.iter().map(|c| c.0.clone()).collect();
    assert_eq!(methods, ["raid_recover"]);
}

#[tokio::test]
async fn recover_without_zeoraid_exits_3() {
    let server = closed_port().await;
    for wait in [&[][..], &["--wait"][..]] {
        let args = [&["recover", "b", "--server", &server][..], wait].concat();
        let output = zeoraid(&args).await;
        assert_eq!(stdout(&output), "");
        assert_eq!(
            stderr(&output),
            format!("zeoraid: cannot reach zeoraid at {server}: connection refused\n")
        );
        assert_eq!(output.status.code(), Some(3));
    }
}

#[tokio::test]
async fn recover_wait_follows_the_recovery_until_done() {
    let (server, seen) = fake_zeoraid(recovering(
        Encoding::Pickle,
        vec![
            recovery("running", "verifying", 0, None),
            recovery("running", "copying", 600, None),
            // No progress since the last poll: no line.
            recovery("running", "copying", 600, None),
            recovery("done", "done", 1200, None),
        ],
    ))
    .await;
    let started = Instant::now();
    let output = zeoraid(&["recover", "b", "--wait", "--server", &server]).await;
    assert_eq!(
        stdout(&output),
        "recovery of b started from a\n\
         b: verifying from a, 1 transaction verified, at 03ed4a5b00000000, \
         0.0 transactions/s (0 B/s), eta 1m15s\n\
         b: copying from a, 600 transactions (1.2 MiB) copied, at 03ed4a5b00000258, \
         300.0 transactions/s (600.0 KiB/s), eta 1m15s\n\
         b: recovered from a, 1 transaction verified, 1200 transactions (2.3 MiB) copied \
         in 3s, at 03ed4a5b000004b0\n"
    );
    assert_eq!(stderr(&output), "");
    assert_eq!(output.status.code(), Some(0));
    // Four polls, a second apart.
    assert!(started.elapsed() >= Duration::from_secs(3), "{started:?}");
    assert_one_read_only_registration(&seen);
    let methods: Vec<String> = seen.lock().calls.iter().map(|c| c.0.clone()).collect();
    assert_eq!(
        methods,
        [
            "raid_recover",
            "raid_recovery",
            "raid_recovery",
            "raid_recovery",
            "raid_recovery"
        ]
    );
}

#[tokio::test]
async fn recover_wait_reports_a_failed_recovery_and_exits_1() {
    let error = "b's history differs from a's at tid 03ed4a5b00000001: other data; \
                 give b an empty storage and recover it again";
    let (server, _) = fake_zeoraid(recovering(
        Encoding::Msgpack,
        vec![
            recovery("running", "verifying", 0, None),
            recovery("failed", "failed", 0, Some(error)),
        ],
    ))
    .await;
    let output = zeoraid(&["recover", "b", "--wait", "--server", &server]).await;
    assert_eq!(
        stdout(&output),
        "recovery of b started from a\n\
         b: verifying from a, 1 transaction verified, at 03ed4a5b00000000, \
         0.0 transactions/s (0 B/s), eta 1m15s\n"
    );
    assert_eq!(
        stderr(&output),
        format!("zeoraid: recovery of b failed: {error}\n")
    );
    assert_eq!(output.status.code(), Some(1));
}

#[tokio::test]
async fn recover_wait_without_a_recovery_to_follow_exits_3() {
    // zeoraid restarted between the start and the first poll.
    let (server, _) = fake_zeoraid(recovering(Encoding::Pickle, vec![Value::None])).await;
    let output = zeoraid(&["recover", "b", "--wait", "--server", &server]).await;
    assert_eq!(stdout(&output), "recovery of b started from a\n");
    assert_eq!(
        stderr(&output),
        "zeoraid: cannot follow the recovery of b: zeoraid reports no recovery since it \
         started (was it restarted?); it may still be running (see zeoraid details)\n"
    );
    assert_eq!(output.status.code(), Some(3));
}
