//! Blob throughput: upload and download in MB/s with a real ZODB client
//! (`ClientStorage` with its own, not shared, blob dir: blobs are streamed
//! with storeBlob / sendBlob), directly against one ZEO server and through
//! zeoraid with two backends, in one run on the same data.
//!
//!     cargo bench --bench blobs
//!
//! * The blobs are written once, before anything is timed
//!   (benches/python/blob_bench.py `generate`): K files of S random bytes.
//! * direct: one fresh runzeo, FileStorage with a `blob-dir`.
//!   `blob_bench.py run`: upload (one blob per transaction, timed around
//!   the commits), then one download pass (a new ClientStorage with a new,
//!   empty blob dir reads every blob to the end).
//! * zeoraid: two fresh runzeo servers as above, zeoraid in front of both
//!   (with a `[blob_cache]` table big enough for every blob); the same
//!   upload, then two download passes: the first
//!   goes to the backends (and fills zeoraid's blob cache), the second is
//!   the cached download. After each pass the cache directory's files and
//!   zeoraid's `server_status` counters (`blob-cache-fetches`, `-hits`)
//!   are reported, so a second pass that was not served from the cache
//!   shows.
//! * Verification: every download pass's files must have the SHA-256 of
//!   the source files; after each part the servers are stopped and every
//!   server's blob dir must hold exactly the source files (by SHA-256);
//!   zeoraid must still be optimal. A fast broken path fails the run.
//! * Where the time goes: each upload commit is split into send (until a
//!   `ping` after the blob's last chunk is answered: the server or zeoraid
//!   has it all), vote and finish; and every timed phase reports the CPU
//!   seconds spent in it by the client, zeoraid and each server.
//! * Every server, zeoraid's front end and so the client speak one
//!   encoding (ZEO's default, pickle, unless set), so that the client does
//!   the same work in both parts.
//!
//! Environment (defaults in brackets):
//!   ZEORAID_BENCH_BLOB_SIZE [64M]  bytes per blob (K, M, G: binary units)
//!   ZEORAID_BENCH_BLOBS [8]  blobs, one per transaction
//!   ZEORAID_BENCH_ROUNDS [1]  rounds of both parts (order alternates)
//!   ZEORAID_BENCH_PARTS [direct,zeoraid]  which parts to run
//!   ZEORAID_BENCH_BACKENDS [2]  zeoraid's backends
//!   ZEORAID_BENCH_ENCODING [pickle]  pickle or msgpack, everywhere
//!   ZEORAID_BENCH_BLOB_CACHE [on]  on: give zeoraid a `[blob_cache]`
//!     table (size: twice the blobs, at least 1 GiB); off: no table
//!     (zeoraid's defaults)
//!   ZEORAID_BENCH_BACKEND_DIRS [off]  on: `[[backend]] blob_dir` for every
//!     backend (zeoraid copies blobs into the backends' blob dirs and
//!     names them with storeBlobShared instead of streaming them)
//!
//! MB = 10^6 bytes. Figures and how they were taken: docs/benchmarks.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use support::raw_client::RawClient;
use support::{ZeoraidConfig, ZeoraidProcess};
use zeoraid::protocol::Encoding;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

struct Params {
    blob_size: u64,
    blobs: usize,
    rounds: usize,
    backends: usize,
    encoding: &'static str,
    direct: bool,
    zeoraid: bool,
    blob_cache: bool,
    /// zeoraid copies blobs into the backends' blob dirs.
    backend_dirs: bool,
}

fn env_text(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty())
}

/// A byte count: digits, optionally followed by K, M or G (binary units,
/// an optional `iB`/`B` after it).
fn parse_size(name: &str, text: &str) -> u64 {
    let upper = text.to_ascii_uppercase();
    let upper = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (digits, unit) = match upper.chars().last() {
        Some('K') => (&upper[..upper.len() - 1], 1 << 10),
        Some('M') => (&upper[..upper.len() - 1], MIB),
        Some('G') => (&upper[..upper.len() - 1], GIB),
        _ => (upper, 1),
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .unwrap_or_else(|| panic!("{name}={text:?} is not a size"))
}

fn env_usize(name: &str, default: usize) -> usize {
    match env_text(name) {
        Some(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
        None => default,
    }
}

impl Params {
    fn from_env(quick: bool) -> Params {
        let parts = env_text("ZEORAID_BENCH_PARTS").unwrap_or_else(|| "direct,zeoraid".to_owned());
        let parts: Vec<&str> = parts.split(',').map(str::trim).collect();
        for part in &parts {
            assert!(
                ["direct", "zeoraid"].contains(part),
                "ZEORAID_BENCH_PARTS: unknown part {part:?} (direct, zeoraid)"
            );
        }
        let encoding = match env_text("ZEORAID_BENCH_ENCODING").as_deref() {
            None | Some("pickle") => "pickle",
            Some("msgpack") => "msgpack",
            Some(other) => panic!("ZEORAID_BENCH_ENCODING={other:?}: pickle or msgpack"),
        };
        let switch = |name: &str, default: bool| match env_text(name).as_deref() {
            None => default,
            Some("on") => true,
            Some("off") => false,
            Some(other) => panic!("{name}={other:?}: on or off"),
        };
        let blob_cache = switch("ZEORAID_BENCH_BLOB_CACHE", true);
        let backend_dirs = switch("ZEORAID_BENCH_BACKEND_DIRS", false);
        let blob_size = match env_text("ZEORAID_BENCH_BLOB_SIZE") {
            Some(text) => parse_size("ZEORAID_BENCH_BLOB_SIZE", &text),
            None if quick => MIB,
            None => 64 * MIB,
        };
        let params = Params {
            blob_size,
            blobs: env_usize("ZEORAID_BENCH_BLOBS", if quick { 2 } else { 8 }),
            rounds: env_usize("ZEORAID_BENCH_ROUNDS", 1).max(1),
            backends: env_usize("ZEORAID_BENCH_BACKENDS", 2),
            encoding,
            direct: parts.contains(&"direct"),
            zeoraid: parts.contains(&"zeoraid"),
            blob_cache,
            backend_dirs,
        };
        assert!(params.blob_size > 0, "blobs of 0 bytes measure nothing");
        assert!(params.blobs >= 1, "at least one blob");
        assert!(
            (1..=26).contains(&params.backends),
            "ZEORAID_BENCH_BACKENDS: 1 to 26"
        );
        params
    }

    fn total_bytes(&self) -> u64 {
        self.blob_size * self.blobs as u64
    }
}

// ---------------------------------------------------------------------------
// A runzeo serving a FileStorage with a blob dir

/// `<venv>/bin/runzeo` serving storage "1", a FileStorage with a
/// `blob-dir`, in its own temp dir. Dropping it kills it.
struct BlobServer {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl BlobServer {
    fn start(encoding: &str) -> BlobServer {
        let dir = tempfile::Builder::new()
            .prefix("zeo-blob-server-")
            .tempdir()
            .expect("create a temp dir");
        for attempt in 0..3 {
            let port = support::free_port();
            let mut text = String::from("<zeo>\n");
            let _ = writeln!(text, "  address 127.0.0.1:{port}");
            if encoding == "msgpack" {
                text.push_str("  msgpack true\n");
            }
            let _ = write!(
                text,
                "</zeo>\n\n<filestorage 1>\n  path {}\n  blob-dir {}\n</filestorage>\n\n\
                 <eventlog>\n  level WARNING\n  <logfile>\n    path {}\n  </logfile>\n\
                 </eventlog>\n",
                dir.path().join("Data.fs").display(),
                dir.path().join("blobs").display(),
                dir.path().join("zeo.log").display()
            );
            let config = dir.path().join("zeo.conf");
            fs::write(&config, text).expect("write zeo.conf");
            let out = append(&dir.path().join("runzeo.out"));
            let mut child = Command::new(support::venv_bin("runzeo"))
                .arg("-C")
                .arg(&config)
                .current_dir(dir.path())
                .env_remove("ZEO_MSGPACK")
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("dup runzeo.out"))
                .stderr(out)
                .spawn()
                .expect("run runzeo");
            let deadline = Instant::now() + support::START_TIMEOUT;
            loop {
                if support::port_accepts(port) {
                    return BlobServer {
                        dir,
                        port,
                        child: Some(child),
                    };
                }
                if let Ok(Some(status)) = child.try_wait() {
                    let output =
                        fs::read_to_string(dir.path().join("runzeo.out")).unwrap_or_default();
                    if attempt < 2 && output.contains("Address already in use") {
                        break;
                    }
                    panic!("runzeo exited ({status}) before listening:\n{output}");
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("runzeo did not listen on 127.0.0.1:{port}");
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        unreachable!()
    }

    fn port(&self) -> u16 {
        self.port
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn blob_dir(&self) -> PathBuf {
        self.dir.path().join("blobs")
    }

    /// SIGTERM (runzeo closes its storage), SIGKILL after 10 s.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for BlobServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// The Python driver

struct Bench {
    python: PathBuf,
    script: PathBuf,
}

impl Bench {
    /// Runs `blob_bench.py <args>`; its last stdout line as JSON.
    fn run(&self, args: &[String]) -> Json {
        support::run_json_script(&self.python, &self.script, args)
    }

    /// Panics unless `server`'s blob dir holds exactly the source files.
    /// Stops the server first.
    fn check_blob_dir(&self, server: &mut BlobServer, sources: &[String], what: &str) {
        server.stop();
        let found = self.run(&[
            "digest-dir".to_owned(),
            server.blob_dir().to_string_lossy().into_owned(),
        ]);
        let mut expected = sources.to_vec();
        expected.sort();
        let got = strings(&found["sha256"]);
        assert!(
            got == expected,
            "{what}: the server's blob dir holds {} blob files that are not the {} uploaded \
             ones ({} match)",
            got.len(),
            expected.len(),
            got.iter().filter(|d| expected.contains(d)).count()
        );
    }
}

fn strings(json: &Json) -> Vec<String> {
    json.as_array()
        .unwrap_or_else(|| panic!("not a list: {json}"))
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

fn float(json: &Json, key: &str) -> f64 {
    json[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no {key} in {json}"))
}

/// Panics unless a download pass got every source file, in order.
fn check_download(pass: &Json, sources: &[String], what: &str) {
    let got = strings(&pass["sha256"]);
    let wrong: Vec<usize> = (0..sources.len())
        .filter(|&n| got.get(n) != Some(&sources[n]))
        .collect();
    assert!(
        wrong.is_empty() && got.len() == sources.len(),
        "{what}: blobs {wrong:?} downloaded are not what was uploaded"
    );
}

// ---------------------------------------------------------------------------
// Results

/// One timed phase of one part of one round.
struct Row {
    round: usize,
    label: &'static str,
    seconds: f64,
    note: String,
    /// CPU seconds per process ("client", "zeoraid", "a", "b", ...).
    cpu: Json,
}

impl Row {
    /// A timed phase's row: its seconds and CPU from the driver's JSON.
    fn of(round: usize, label: &'static str, phase: &Json, note: String) -> Row {
        Row {
            round,
            label,
            seconds: float(phase, "seconds"),
            note,
            cpu: phase["cpu"].clone(),
        }
    }
}

const DIRECT_UP: &str = "direct, upload";
const DIRECT_DOWN: &str = "direct, download";
const RAID_UP: &str = "zeoraid, upload";
const RAID_DOWN: &str = "zeoraid, download 1st pass";
const RAID_CACHED: &str = "zeoraid, download 2nd (cached)";

fn upload_note(upload: &Json) -> String {
    format!(
        "send {:.2} s, vote {:.2} s, finish {:.2} s; commits {:.2}-{:.2} s",
        float(upload, "send"),
        float(upload, "vote"),
        float(upload, "finish"),
        float(upload, "fastest_commit"),
        float(upload, "slowest_commit"),
    )
}

fn download_note(pass: &Json) -> String {
    format!(
        "blobs {:.2}-{:.2} s",
        float(pass, "fastest_blob"),
        float(pass, "slowest_blob")
    )
}

struct Run<'a> {
    params: &'a Params,
    bench: &'a Bench,
    binary: &'a str,
    manifest: &'a Path,
    sources: &'a [String],
    work: &'a Path,
}

impl Run<'_> {
    fn python_run(
        &self,
        port: u16,
        name: &str,
        downloads: usize,
        cache: Option<&Path>,
        pids: &[(String, Option<u32>)],
    ) -> Json {
        let work = self.work.join(name);
        let mut args = vec![
            "run".to_owned(),
            port.to_string(),
            format!("--work={}", work.display()),
            format!("--manifest={}", self.manifest.display()),
            format!("--downloads={downloads}"),
        ];
        if let Some(cache) = cache {
            args.push(format!("--cache-dir={}", cache.display()));
        }
        let pids: Vec<String> = pids
            .iter()
            .filter_map(|(name, pid)| pid.map(|pid| format!("{name}={pid}")))
            .collect();
        if !pids.is_empty() {
            args.push(format!("--pids={}", pids.join(",")));
        }
        let result = self.bench.run(&args);
        let _ = fs::remove_dir_all(&work);
        result
    }

    fn direct(&self, round: usize, rows: &mut Vec<Row>) {
        let mut server = BlobServer::start(self.params.encoding);
        let result = self.python_run(
            server.port(),
            &format!("direct-{round}"),
            1,
            None,
            &[("a".to_owned(), server.pid())],
        );
        let pass = &result["downloads"][0];
        check_download(pass, self.sources, DIRECT_DOWN);
        self.bench
            .check_blob_dir(&mut server, self.sources, "direct upload");
        rows.push(Row::of(
            round,
            DIRECT_UP,
            &result["upload"],
            upload_note(&result["upload"]),
        ));
        rows.push(Row::of(round, DIRECT_DOWN, pass, download_note(pass)));
    }

    /// zeoraid over `servers`, with a `[blob_cache]` table for every blob
    /// unless turned off, and the backends' blob directories if wanted;
    /// the note says which.
    fn start_zeoraid(&self, servers: &[BlobServer]) -> (ZeoraidProcess, String) {
        let mut config = ZeoraidConfig {
            encoding: self.params.encoding.to_owned(),
            backends: servers
                .iter()
                .enumerate()
                .map(|(i, server)| (backend_name(i), server.port(), "1".to_owned()))
                .collect(),
            extra_server: vec!["log_level = \"warn\"".to_owned()],
            ..ZeoraidConfig::default()
        };
        let mut notes = Vec::new();
        if self.params.blob_cache {
            let size = (2 * self.params.total_bytes()).max(GIB);
            config
                .extra_server
                .extend(["[blob_cache]".to_owned(), format!("size = {size}")]);
            notes.push(format!("[blob_cache] size = {size}"));
        } else {
            notes.push("no [blob_cache] table (off)".to_owned());
        }
        if self.params.backend_dirs {
            for (i, server) in servers.iter().enumerate() {
                let line = format!("blob_dir = {:?}", server.blob_dir().display().to_string());
                config.backend_extra.push((backend_name(i), line));
            }
            notes.push("blobs put into the backends' blob dirs (storeBlobShared)".to_owned());
        } else {
            notes.push("blobs streamed to the backends".to_owned());
        }
        (
            ZeoraidProcess::start_with(self.binary, config),
            notes.join("; "),
        )
    }

    fn zeoraid(&self, round: usize, rows: &mut Vec<Row>) -> String {
        let mut servers: Vec<BlobServer> = (0..self.params.backends)
            .map(|_| BlobServer::start(self.params.encoding))
            .collect();
        let (mut zeoraid, cache_note) = self.start_zeoraid(&servers);
        let cache_dir = zeoraid.state_dir().join("blob-cache");
        let mut pids = vec![("zeoraid".to_owned(), zeoraid.pid())];
        pids.extend(
            servers
                .iter()
                .enumerate()
                .map(|(i, server)| (backend_name(i), server.pid())),
        );
        let result = self.python_run(
            zeoraid.port(),
            &format!("zeoraid-{round}"),
            2,
            Some(&cache_dir),
            &pids,
        );
        let passes = [&result["downloads"][0], &result["downloads"][1]];
        check_download(passes[0], self.sources, RAID_DOWN);
        check_download(passes[1], self.sources, RAID_CACHED);
        let encoding = match self.params.encoding {
            "msgpack" => Encoding::Msgpack,
            _ => Encoding::Pickle,
        };
        let mut client = RawClient::registered(zeoraid.port(), encoding);
        let status = client.call("raid_status", vec![]).expect("raid_status");
        let details = client.call("raid_details", vec![]).expect("raid_details");
        assert_eq!(
            status.as_str(),
            Some("optimal"),
            "zeoraid is not optimal after the run: {}\n{}",
            details.summary(),
            zeoraid.log()
        );
        drop(client);
        let peak = zeoraid.pid().and_then(peak_rss_mib);
        zeoraid.stop(Duration::from_secs(10));
        for (i, server) in servers.iter_mut().enumerate() {
            let what = format!("zeoraid, backend {}", backend_name(i));
            self.bench.check_blob_dir(server, self.sources, &what);
        }
        let cache = |pass: &Json| {
            let counter = |key: &str| pass[key].as_u64().map_or("-".to_owned(), |n| n.to_string());
            format!(
                "blob cache {} files, {:.1} MB, {} fetches, {} hits so far",
                pass["cache_files"].as_u64().unwrap_or(0),
                pass["cache_bytes"].as_u64().unwrap_or(0) as f64 / 1e6,
                counter("cache_fetches"),
                counter("cache_hits"),
            )
        };
        rows.push(Row::of(
            round,
            RAID_UP,
            &result["upload"],
            upload_note(&result["upload"]),
        ));
        rows.push(Row::of(
            round,
            RAID_DOWN,
            passes[0],
            format!("{}; then {}", download_note(passes[0]), cache(passes[0])),
        ));
        rows.push(Row::of(
            round,
            RAID_CACHED,
            passes[1],
            format!("{}; then {}", download_note(passes[1]), cache(passes[1])),
        ));
        format!(
            "{cache_note}; zeoraid peak RSS {}",
            peak.map_or("unknown".to_owned(), |mib| format!("{mib} MiB"))
        )
    }
}

/// "a", "b", ...: the backends' names in zeoraid's config, and the
/// direct server's ("a").
fn backend_name(index: usize) -> String {
    ((b'a' + index as u8) as char).to_string()
}

/// VmHWM of a running process, MiB.
fn peak_rss_mib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
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
            .join("blob_bench.py"),
    };
    let work = tempfile::Builder::new()
        .prefix("zeoraid-blob-bench-")
        .tempdir()
        .expect("create a temp dir");

    let generated = bench.run(&[
        "generate".to_owned(),
        work.path().join("sources").to_string_lossy().into_owned(),
        format!("--size={}", params.blob_size),
        format!("--count={}", params.blobs),
    ]);
    let manifest = work.path().join("manifest.json");
    fs::write(&manifest, generated.to_string()).expect("write manifest.json");
    let sources = strings(&generated["sha256"]);
    let total = params.total_bytes() as f64;
    println!(
        "{} blobs of {} bytes ({:.1} MB in all), encoding {}, written in {:.1} s (not timed); \
         zeoraid with {} backend{}",
        params.blobs,
        params.blob_size,
        total / 1e6,
        params.encoding,
        float(&generated, "seconds"),
        params.backends,
        if params.backends == 1 { "" } else { "s" }
    );

    let run = Run {
        params: &params,
        bench: &bench,
        binary,
        manifest: &manifest,
        sources: &sources,
        work: work.path(),
    };
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for round in 1..=params.rounds {
        // Alternate which part goes first.
        let raid_first = round % 2 == 0;
        for part in 0..2 {
            if (part == 0) == raid_first {
                if params.zeoraid {
                    notes.push(format!("round {round}: {}", run.zeoraid(round, &mut rows)));
                }
            } else if params.direct {
                run.direct(round, &mut rows);
            }
        }
    }

    println!();
    let rounds = params.rounds > 1;
    println!(
        "{}{:<32} {:>8} {:>9}  notes",
        if rounds { "round " } else { "" },
        "",
        "seconds",
        "MB/s"
    );
    for row in &rows {
        println!(
            "{}{:<32} {:>8.2} {:>9.1}  {}",
            if rounds {
                format!("{:<6}", row.round)
            } else {
                String::new()
            },
            row.label,
            row.seconds,
            total / 1e6 / row.seconds,
            row.note
        );
    }
    for note in &notes {
        println!("{note}");
    }
    println!("verified: every download pass and every server's blob dir hold the uploaded bytes");
    print_cpu(&rows, params.backends, rounds);

    // Ratios of throughput, zeoraid / direct: best round against best round,
    // and per round.
    let seconds = |label: &str| -> Vec<f64> {
        rows.iter()
            .filter(|r| r.label == label)
            .map(|r| r.seconds)
            .collect()
    };
    let best = |all: &[f64]| all.iter().copied().fold(f64::INFINITY, f64::min);
    let ratios = [
        ("upload", DIRECT_UP, RAID_UP, Some(0.8)),
        ("download, uncached", DIRECT_DOWN, RAID_DOWN, None),
        ("download, cached", DIRECT_DOWN, RAID_CACHED, Some(1.0)),
    ];
    let mut printed = false;
    for (what, direct, raid, target) in ratios {
        let (direct, raid) = (seconds(direct), seconds(raid));
        if direct.is_empty() || raid.is_empty() {
            continue;
        }
        if !printed {
            println!();
            printed = true;
        }
        let ratio = best(&direct) / best(&raid);
        let mut line = format!("zeoraid / direct, {what}: {ratio:.2}x");
        if rounds {
            let per_round: Vec<String> = direct
                .iter()
                .zip(&raid)
                .map(|(d, z)| format!("{:.2}x", d / z))
                .collect();
            let _ = write!(
                line,
                " (best round of each; per round {})",
                per_round.join(", ")
            );
        }
        if let Some(target) = target {
            let _ = write!(
                line,
                "  target >= {target}x: {}",
                if ratio >= target { "met" } else { "NOT met" }
            );
        }
        println!("{line}");
    }
}

/// CPU seconds (user + system) each process spent in each timed phase;
/// "cores" is their sum over the wall time (this machine's cores bound it).
fn print_cpu(rows: &[Row], backends: usize, rounds: bool) {
    let mut names = vec!["client".to_owned(), "zeoraid".to_owned()];
    names.extend((0..backends).map(backend_name));
    println!();
    let mut header = format!(
        "{}{:<32}",
        if rounds { "round " } else { "" },
        "CPU seconds"
    );
    for name in &names {
        let _ = write!(header, " {name:>8}");
    }
    println!("{header} {:>8}", "cores");
    for row in rows {
        let mut line = format!(
            "{}{:<32}",
            if rounds {
                format!("{:<6}", row.round)
            } else {
                String::new()
            },
            row.label
        );
        let mut sum = 0.0;
        for name in &names {
            match row.cpu[name.as_str()].as_f64() {
                Some(seconds) => {
                    sum += seconds;
                    let _ = write!(line, " {seconds:>8.2}");
                }
                None => {
                    let _ = write!(line, " {:>8}", "-");
                }
            }
        }
        println!("{line} {:>8.2}", sum / row.seconds);
    }
}
