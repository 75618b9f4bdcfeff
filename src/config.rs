//! The TOML configuration file: parsing, defaults and validation.
//!
//! Every error names the file and the key at fault, so an operator can fix
//! a bad configuration from the start-up message alone.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::protocol::Encoding;

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: PathBuf,
        key: String,
        message: String,
    },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub recovery: RecoverySettings,
    #[serde(default)]
    pub blob_cache: BlobCacheSettings,
    #[serde(default, rename = "backend")]
    pub backends: Vec<BackendConfig>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the ZEO front end listens on, `host:port`.
    pub listen: String,
    /// The storage name clients register with (ZEO's default is "1").
    pub storage: String,
    /// Where zeoraid keeps its persistent state.
    pub state_dir: PathBuf,
    /// A blob directory shared with clients that use `shared-blob-dir
    /// true`; zeoraid keeps every committed blob in it.
    #[serde(default)]
    pub blob_dir: Option<PathBuf>,
    /// The encoding announced to clients; they may answer with the other.
    #[serde(default = "default_encoding")]
    pub encoding: Encoding,
    /// Most client connections served at once; more wait to be accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest frame accepted from a client or backend, in bytes.
    #[serde(default = "default_max_frame_size")]
    pub max_frame_size: usize,
    /// How many committed transactions are kept to answer
    /// `getInvalidations` from reconnecting clients.
    #[serde(default = "default_invalidation_queue_size")]
    pub invalidation_queue_size: usize,
    /// Log filter (tracing's env-filter syntax); RUST_LOG overrides it.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// A transaction logging more record data than this many bytes is
    /// spooled to a temporary file, so memory stays bounded.
    #[serde(default = "default_spool_threshold")]
    pub spool_threshold: usize,
    /// Serve the RAID read-only: writable registrations get ReadOnlyError.
    #[serde(default)]
    pub read_only: bool,
    /// Optimal backends a commit needs; below it `fail_mode` applies.
    #[serde(default = "default_min_optimal")]
    pub min_optimal: usize,
    /// What clients get when fewer than `min_optimal` backends are optimal.
    #[serde(default)]
    pub fail_mode: FailMode,
}

/// The behaviour below `min_optimal` optimal backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailMode {
    /// Clients are disconnected and new ones refused, as when a ZEO
    /// server goes away; they reconnect once the RAID can commit again.
    #[default]
    Close,
    /// Writes get ReadOnlyError; reads go on while any backend is optimal.
    ReadOnly,
}

/// Time limits, in seconds.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Connecting to a backend, including handshake and register.
    pub connect: f64,
    /// Any call to a backend (except pack and the commit calls) and any
    /// reply write to a client: a backend that does not answer within it
    /// is degraded.
    pub call: f64,
    /// A backend's vote and tpc_finish, which write the transaction.
    pub commit: f64,
    /// A backend `pack` call, which runs as long as the pack does.
    pub pack: f64,
    /// Interval of the liveness ping sent to every backend; a ping that
    /// gets no answer within `call` drops the connection.
    pub heartbeat: f64,
    /// How long a client may hold the commit lock between vote and
    /// finish/abort before its transaction is aborted.
    pub transaction: f64,
    /// The handshake a new client must complete.
    pub handshake: f64,
    /// How long shutdown waits for in-flight commits.
    pub shutdown: f64,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: 10.0,
            call: 10.0,
            commit: 60.0,
            pack: 3600.0,
            heartbeat: 2.0,
            transaction: 300.0,
            handshake: 30.0,
            shutdown: 30.0,
        }
    }
}

impl Timeouts {
    pub fn connect(&self) -> Duration {
        Duration::from_secs_f64(self.connect)
    }
    pub fn call(&self) -> Duration {
        Duration::from_secs_f64(self.call)
    }
    pub fn commit(&self) -> Duration {
        Duration::from_secs_f64(self.commit)
    }
    pub fn pack(&self) -> Duration {
        Duration::from_secs_f64(self.pack)
    }
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs_f64(self.heartbeat)
    }
    pub fn transaction(&self) -> Duration {
        Duration::from_secs_f64(self.transaction)
    }
    pub fn handshake(&self) -> Duration {
        Duration::from_secs_f64(self.handshake)
    }
    pub fn shutdown(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown)
    }
}

/// Online recovery (`zeoraid recover NAME`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecoverySettings {
    /// Transactions copied per second at most; 0 for no limit. Each live
    /// commit during a recovery allows one more, so a recovery always
    /// catches up.
    pub transactions_per_second: u64,
    /// Record bytes copied per second at most; 0 for no limit.
    pub bytes_per_second: u64,
    /// Seconds between progress lines in the log.
    pub progress_interval: f64,
}

impl Default for RecoverySettings {
    fn default() -> RecoverySettings {
        RecoverySettings {
            transactions_per_second: 0,
            bytes_per_second: 0,
            progress_interval: 10.0,
        }
    }
}

impl RecoverySettings {
    pub fn progress_interval(&self) -> Duration {
        Duration::from_secs_f64(self.progress_interval)
    }
}

/// zeoraid's cache of blob files fetched from backends for clients' loads.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlobCacheSettings {
    /// Where the files are kept; `<state_dir>/blob-cache` when not given.
    pub dir: Option<PathBuf>,
    /// Bytes of blob files kept; the least recently used go first.
    pub size: u64,
}

impl Default for BlobCacheSettings {
    fn default() -> BlobCacheSettings {
        BlobCacheSettings {
            dir: None,
            size: 1 << 30,
        }
    }
}

impl BlobCacheSettings {
    pub fn dir(&self, state_dir: &Path) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| state_dir.join("blob-cache"))
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// The operator's name for this backend (logs, status, CLI).
    pub name: String,
    /// The ZEO server, `host:port`.
    pub address: String,
    /// The storage name on that server.
    pub storage: String,
    /// The server's blob directory, when zeoraid can write to it (same
    /// machine or shared file system): blobs are copied into it rather
    /// than streamed over the connection.
    #[serde(default)]
    pub blob_dir: Option<PathBuf>,
}

fn default_encoding() -> Encoding {
    Encoding::Msgpack
}
fn default_max_connections() -> usize {
    1000
}
fn default_max_frame_size() -> usize {
    256 * 1024 * 1024
}
fn default_invalidation_queue_size() -> usize {
    100
}
fn default_spool_threshold() -> usize {
    16 * 1024 * 1024
}
fn default_min_optimal() -> usize {
    1
}
fn default_log_level() -> String {
    "info".to_owned()
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        Config::parse(&text, file)
    }

    /// Parses and validates configuration text; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_owned(),
            message: e.to_string().trim_end().replace('\n', " | "),
        })?;
        config.validate(file)?;
        Ok(config)
    }

    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            key: key.to_owned(),
            message,
        };
        check_address(&self.server.listen).map_err(|m| invalid("server.listen", m))?;
        if self.server.storage.is_empty() {
            return Err(invalid("server.storage", "must not be empty".into()));
        }
        if self.server.max_connections == 0 {
            return Err(invalid(
                "server.max_connections",
                "must be at least 1".into(),
            ));
        }
        if self.server.max_frame_size < 1024 || self.server.max_frame_size > u32::MAX as usize {
            return Err(invalid(
                "server.max_frame_size",
                "must be between 1024 and 4294967295 bytes".into(),
            ));
        }
        if self.server.invalidation_queue_size == 0 {
            return Err(invalid(
                "server.invalidation_queue_size",
                "must be at least 1".into(),
            ));
        }
        let t = &self.timeouts;
        for (key, value) in [
            ("timeouts.connect", t.connect),
            ("timeouts.call", t.call),
            ("timeouts.commit", t.commit),
            ("timeouts.pack", t.pack),
            ("timeouts.heartbeat", t.heartbeat),
            ("timeouts.transaction", t.transaction),
            ("timeouts.handshake", t.handshake),
            ("timeouts.shutdown", t.shutdown),
        ] {
            if !(value.is_finite() && value > 0.0 && value < 1e9) {
                return Err(invalid(
                    key,
                    format!("must be a positive number of seconds, not {value}"),
                ));
            }
        }
        let interval = self.recovery.progress_interval;
        if !(interval.is_finite() && interval > 0.0 && interval < 1e9) {
            return Err(invalid(
                "recovery.progress_interval",
                format!("must be a positive number of seconds, not {interval}"),
            ));
        }
        let cache_dir = self.blob_cache.dir(&self.server.state_dir);
        if cache_dir == self.server.state_dir {
            return Err(invalid(
                "blob_cache.dir",
                "must not be the state_dir: the cache owns its directory".into(),
            ));
        }
        if let Some(blob_dir) = &self.server.blob_dir {
            if *blob_dir == self.server.state_dir || *blob_dir == cache_dir {
                return Err(invalid(
                    "server.blob_dir",
                    "must be a directory of its own, not the state_dir or the blob cache".into(),
                ));
            }
        }
        if self.backends.is_empty() {
            return Err(invalid(
                "backend",
                "at least one [[backend]] is required".into(),
            ));
        }
        let mut names = HashSet::new();
        for (i, backend) in self.backends.iter().enumerate() {
            let key = |field: &str| format!("backend[{i}].{field}");
            if backend.name.is_empty()
                || !backend
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(invalid(
                    &key("name"),
                    format!("{:?}: use letters, digits, '-', '_' or '.'", backend.name),
                ));
            }
            if !names.insert(backend.name.as_str()) {
                return Err(invalid(
                    &key("name"),
                    format!("duplicate backend name {:?}", backend.name),
                ));
            }
            check_address(&backend.address).map_err(|m| invalid(&key("address"), m))?;
            if backend.storage.is_empty() {
                return Err(invalid(&key("storage"), "must not be empty".into()));
            }
            if let Some(dir) = &backend.blob_dir {
                let taken = Some(dir) == self.server.blob_dir.as_ref()
                    || self.backends[..i]
                        .iter()
                        .any(|b| b.blob_dir.as_ref() == Some(dir));
                if taken {
                    return Err(invalid(
                        &key("blob_dir"),
                        "each backend's blob directory must be its own, and not [server] blob_dir"
                            .into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Accepts `host:port` with a numeric port; the host may be a name that is
/// resolved when connecting.
fn check_address(address: &str) -> Result<(), String> {
    if address.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("{address:?} is not a host:port address")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:8100"
storage = "1"
state_dir = "var/zeoraid"
[[backend]]
name = "a"
address = "127.0.0.1:9001"
storage = "1"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    fn error(text: &str) -> String {
        parse(text).expect_err("must be refused").to_string()
    }

    #[test]
    fn minimal_form_works_with_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:8100");
        assert_eq!(config.server.encoding, Encoding::Msgpack);
        assert_eq!(config.backends[0].name, "a");
        assert_eq!(config.timeouts.call(), Duration::from_secs(10));
        assert_eq!(config.server.fail_mode, FailMode::Close);
        assert_eq!(config.server.min_optimal, 1);
    }

    #[test]
    fn missing_key_is_named() {
        let text = MINIMAL.replace("storage = \"1\"\nstate_dir", "state_dir");
        let message = error(&text);
        assert!(message.contains("test.toml"), "{message}");
        assert!(message.contains("storage"), "{message}");
    }

    #[test]
    fn bad_address_is_named() {
        let message = error(&MINIMAL.replace("127.0.0.1:9001", "nowhere"));
        assert!(message.contains("backend[0].address"), "{message}");
        let message = error(&MINIMAL.replace("127.0.0.1:8100", "127.0.0.1:99999"));
        assert!(message.contains("server.listen"), "{message}");
    }

    #[test]
    fn duplicate_backend_names_are_refused() {
        let text = format!(
            "{MINIMAL}\n[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:9002\"\nstorage = \"1\"\n"
        );
        let message = error(&text);
        assert!(message.contains("duplicate backend name"), "{message}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(error(&format!("{MINIMAL}\n[timeouts]\ncall = -1\n")).contains("timeouts.call"));
        assert!(
            error(&MINIMAL.replace("[server]", "[server]\nlisten_typo = 1"))
                .contains("listen_typo")
        );
        assert!(
            error(&MINIMAL.replace("[server]", "[server]\nencoding = \"json\""))
                .contains("encoding")
        );
    }

    #[test]
    fn example_configuration_is_valid() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/zeoraid.example.toml");
        Config::load(&file).unwrap();
    }
}
