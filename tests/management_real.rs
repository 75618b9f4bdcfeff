//! `zeoraid status|details|disable` against a real zeoraid in front of two
//! real ZEO servers, through optimal, degraded and failed.

mod support;

use std::process::{Command, Output};

use support::{ZeoServer, ZeoraidConfig, ZeoraidProcess};

fn cli(zeoraid: &ZeoraidProcess, args: &[&str]) -> (i32, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_zeoraid"))
        .args(args)
        .args(["--server", &zeoraid.address()])
        .output()
        .expect("run zeoraid");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    (status.code().expect("exit code"), text)
}

#[test]
fn status_details_and_disable_follow_the_raid() {
    let a = ZeoServer::start(false);
    let mut b = ZeoServer::start(true);
    let zeoraid = ZeoraidProcess::start_with(
        env!("CARGO_BIN_EXE_zeoraid"),
        ZeoraidConfig::new("msgpack", &[&a, &b]),
    );
    let (code, out) = cli(&zeoraid, &["status"]);
    assert_eq!((code, out.lines().count()), (0, 1), "{out}");
    assert!(out.starts_with("optimal"), "{out}");

    let (code, out) = cli(&zeoraid, &["disable", "a"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli(&zeoraid, &["status"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("degraded") && out.contains("disabled by operator"),
        "{out}"
    );
    let (code, out) = cli(&zeoraid, &["details"]);
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("a degraded disabled by operator"),
        "{out}"
    );
    assert_eq!(lines[1], "b optimal", "{out}");

    // The last optimal backend cannot be disabled by hand ...
    let (code, out) = cli(&zeoraid, &["disable", "b"]);
    assert_eq!(code, 1, "{out}");
    // ... but it can fail.
    b.kill9();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (code, out) = cli(&zeoraid, &["status"]);
        if code == 2 {
            assert!(out.starts_with("failed"), "{out}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never failed: {out}\n{}",
            zeoraid.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    drop(zeoraid);
    let unreachable = cli_closed_port();
    assert_eq!(unreachable.0, 3, "{}", unreachable.1);
}

fn cli_closed_port() -> (i32, String) {
    let port = support::free_port();
    let output = Command::new(env!("CARGO_BIN_EXE_zeoraid"))
        .args(["status", "--server", &format!("127.0.0.1:{port}")])
        .output()
        .expect("run zeoraid");
    (
        output.status.code().unwrap(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}
