//! The operator's client: `zeoraid status`, `details`, `disable` and
//! `recover`.
//!
//! Management goes over the ZEO protocol itself, as calls of zeoraid's
//! extension methods (`raid_status`, `raid_details`, `raid_disable`,
//! `raid_recover`, `raid_recovery`), so it needs no second port, no second
//! listener and no second codec: the same address a ZODB client uses
//! answers the operator. The client registers read-only: looking at,
//! disabling or recovering a backend must not need the write access a
//! commit needs, and a read-only session never takes part in the commit
//! lock.
//!
//! The network part ([`Session`]) is kept apart from the formatting: what a
//! command prints and which exit code it returns are pure functions of the
//! replies ([`status_report`], [`details_report`], [`confirmation_report`],
//! [`RecoveryWatch`]), so they are tested without a server. `status`
//! follows the monitoring plugin conventions (Nagios, Icinga, Sensu): one
//! line on stdout starting with the state, and exit code 0 OK, 1 WARNING,
//! 2 CRITICAL, 3 UNKNOWN.
//!
//! `recover NAME` only starts the recovery: zeoraid runs it in the
//! background and answers at once. With `--wait` the client then follows
//! it, polling `raid_recovery` once a second on the same session, and
//! prints a progress line whenever the progress changes; the exit code
//! says how the recovery ended. Interrupting the client does not stop the
//! recovery.

use std::io;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::display::{byte_size, transactions};
use crate::protocol::framing::{frame_reader, FrameReader, FrameWriter};
use crate::protocol::{Encoding, Message, MessageKind, Value, ZeoError};

/// Where the management commands look for zeoraid unless told otherwise.
pub const DEFAULT_SERVER: &str = "127.0.0.1:8100";

/// Exit code of a state that cannot be determined: unreachable, timed out,
/// an error reply, or an answer that makes no sense.
pub const EXIT_UNKNOWN: u8 = 3;

/// Exit code of `disable` and `recover` when zeoraid answered with an
/// error: the request reached zeoraid and was refused, which is not the
/// same as not knowing.
pub const EXIT_REFUSED: u8 = 1;

/// Exit code of `recover --wait` when zeoraid reports the recovery failed.
pub const EXIT_RECOVERY_FAILED: u8 = 1;

/// How often `recover --wait` asks for the recovery's progress.
const RECOVERY_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Largest frame accepted from zeoraid. The replies themselves are small,
/// but invalidations for other clients' commits may arrive between them
/// and are skipped only after being read whole; this is the server's own
/// default limit.
const MAX_FRAME_SIZE: usize = 256 * 1024 * 1024;

/// Which zeoraid to talk to, and for how long.
#[derive(Clone, Debug)]
pub struct Target {
    /// `host:port` of zeoraid's ZEO listener.
    pub server: String,
    /// Storage name to register with (zeoraid refuses any other).
    pub storage: String,
    /// Budget for the whole exchange, from connect to the last reply: a
    /// monitoring check must end on its own even if zeoraid hangs.
    pub timeout: Duration,
}

/// Why a management call did not produce a reply value.
#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    /// No TCP connection: refused, unresolvable, unreachable.
    #[error("cannot reach zeoraid at {server}: {reason}")]
    Unreachable { server: String, reason: String },
    /// The exchange did not finish within the timeout.
    #[error("no answer from zeoraid at {server} within {after:?} ({during})")]
    Timeout {
        server: String,
        after: Duration,
        during: String,
    },
    /// The connection broke, or the peer does not speak ZEO 5 the way a
    /// ZEO server does.
    #[error("zeoraid at {server}: {reason}")]
    Protocol { server: String, reason: String },
    /// The server refused the registration (a wrong `--storage`, or not
    /// a ZEO server for it): the method itself was never called.
    #[error("zeoraid at {server} refused to register storage {storage:?}: {}", describe_error(.error))]
    Rejected {
        server: String,
        storage: String,
        error: ZeoError,
    },
    /// The server answered the method call with an error reply.
    #[error("{method} failed: {}", describe_error(.error))]
    Remote { method: String, error: ZeoError },
}

/// An error reply as an operator wants to read it: the usual exception
/// with one message argument as `class: message`, anything else as the
/// class followed by a summary of its payload.
pub fn describe_error(error: &ZeoError) -> String {
    match error.payload.as_seq() {
        Some([Value::Str(message)]) => format!("{}: {message}", error.class_name),
        _ => error.to_string(),
    }
}

/// One registered, read-only ZEO connection to zeoraid. Every step of
/// every call is bounded by the deadline set when it was opened.
pub struct Session {
    server: String,
    timeout: Duration,
    deadline: Instant,
    encoding: Encoding,
    reader: FrameReader<OwnedReadHalf>,
    writer: FrameWriter<OwnedWriteHalf>,
    next_msgid: i64,
}

impl Session {
    /// Connects, handshakes in the encoding the server announces and
    /// registers `target.storage` read-only.
    pub async fn open(target: &Target) -> Result<Session, ManagementError> {
        let deadline = Instant::now() + target.timeout;
        let timed_out = |during: &str| ManagementError::Timeout {
            server: target.server.clone(),
            after: target.timeout,
            during: during.to_owned(),
        };
        let unreachable = |reason: String| ManagementError::Unreachable {
            server: target.server.clone(),
            reason,
        };
        let stream = tokio::time::timeout_at(deadline, TcpStream::connect(&target.server))
            .await
            .map_err(|_| timed_out("connecting"))?
            .map_err(|e| unreachable(describe_io_error(&e)))?;
        // The exchange is a few small frames, each waiting for the previous
        // answer: none of them should sit out a delayed ACK.
        stream
            .set_nodelay(true)
            .map_err(|e| unreachable(format!("set TCP_NODELAY: {e}")))?;
        let (read_half, write_half) = stream.into_split();
        let mut reader = frame_reader(read_half, MAX_FRAME_SIZE);
        let announced = tokio::time::timeout_at(deadline, reader.next())
            .await
            .map_err(|_| timed_out("waiting for the handshake"))?;
        let protocol = |reason: String| ManagementError::Protocol {
            server: target.server.clone(),
            reason,
        };
        let announced = match announced {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Err(protocol(format!("reading the handshake: {e}"))),
            None => return Err(protocol("connection closed before the handshake".into())),
        };
        let encoding = match &announced[..] {
            [letter, b'5'] => Encoding::from_letter(*letter),
            _ => None,
        }
        .ok_or_else(|| {
            protocol(format!(
                "announced protocol {:?}, not ZEO 5 (M5 or Z5)",
                String::from_utf8_lossy(&announced)
            ))
        })?;
        let mut session = Session {
            server: target.server.clone(),
            timeout: target.timeout,
            deadline,
            encoding,
            reader,
            writer: FrameWriter::new(write_half, MAX_FRAME_SIZE),
            next_msgid: 1,
        };
        session.writer.push_raw(encoding.handshake());
        let register = vec![Value::str(target.storage.as_str()), Value::Bool(true)];
        match session.exchange("register", register).await? {
            Ok(_last_tid) => Ok(session),
            Err(error) => Err(ManagementError::Rejected {
                server: target.server.clone(),
                storage: target.storage.clone(),
                error,
            }),
        }
    }

    /// Gives the following calls a fresh timeout, counted from now: a
    /// session that follows a recovery lives longer than one exchange, but
    /// each poll must still end on its own.
    fn renew_deadline(&mut self) {
        self.deadline = Instant::now() + self.timeout;
    }

    /// Calls `method` and returns its reply value; an error reply is
    /// [`ManagementError::Remote`].
    pub async fn call(&mut self, method: &str, args: Vec<Value>) -> Result<Value, ManagementError> {
        self.exchange(method, args)
            .await?
            .map_err(|error| ManagementError::Remote {
                method: method.to_owned(),
                error,
            })
    }

    /// Sends one call (after whatever is already queued) and waits for its
    /// reply, within the session's deadline. The outer result is the
    /// transport's, the inner one the server's answer.
    async fn exchange(
        &mut self,
        method: &str,
        args: Vec<Value>,
    ) -> Result<Result<Value, ZeoError>, ManagementError> {
        let deadline = self.deadline;
        tokio::time::timeout_at(deadline, self.send_and_receive(method, args))
            .await
            .map_err(|_| ManagementError::Timeout {
                server: self.server.clone(),
                after: self.timeout,
                during: format!("waiting for the reply to {method}"),
            })?
    }

    async fn send_and_receive(
        &mut self,
        method: &str,
        args: Vec<Value>,
    ) -> Result<Result<Value, ZeoError>, ManagementError> {
        let msgid = self.next_msgid;
        self.next_msgid += 1;
        self.writer
            .push(self.encoding, &Message::call(msgid, method, args))
            .map_err(|e| self.protocol(format!("cannot send {method}: {e}")))?;
        // The deadline around this future is what bounds the write.
        self.writer
            .flush(self.timeout)
            .await
            .map_err(|e| self.protocol(format!("sending {method}: {e}")))?;
        loop {
            let frame = match self.reader.next().await {
                Some(Ok(frame)) => frame.freeze(),
                Some(Err(e)) => {
                    return Err(self.protocol(format!("reading the reply to {method}: {e}")))
                }
                None => {
                    return Err(self.protocol(format!(
                        "connection closed while waiting for the reply to {method}"
                    )))
                }
            };
            let message = self
                .encoding
                .decode(&frame)
                .map_err(|e| self.protocol(format!("undecodable frame: {e}")))?;
            match message.kind {
                // A registered session receives invalidations and `info`
                // for other clients' commits at any time: not errors, and
                // nothing a management call needs. ZEO servers make no
                // calls to clients; one would be ignored the same way.
                MessageKind::OneWay | MessageKind::Call => continue,
                _ if message.is_heartbeat() => continue,
                _ if message.msgid != Value::Int(msgid) => {
                    return Err(self.protocol(format!(
                        "reply with msgid {} while waiting for {msgid} ({method})",
                        message.msgid.summary()
                    )))
                }
                MessageKind::Reply => return Ok(Ok(message.args)),
                MessageKind::ErrorReply => {
                    return Ok(Err(ZeoError::from_reply_value(message.args)))
                }
            }
        }
    }

    fn protocol(&self, reason: String) -> ManagementError {
        ManagementError::Protocol {
            server: self.server.clone(),
            reason,
        }
    }
}

/// Short, lower-case reasons for the usual connect failures ("connection
/// refused" rather than "Connection refused (os error 111)"); anything
/// else as the system reports it.
fn describe_io_error(error: &io::Error) -> String {
    use io::ErrorKind::*;
    match error.kind() {
        ConnectionRefused | ConnectionReset | ConnectionAborted | HostUnreachable
        | NetworkUnreachable | AddrNotAvailable | TimedOut => error.kind().to_string(),
        _ => error.to_string(),
    }
}

/// Parses `--timeout`: seconds, fractions allowed, more than zero.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if seconds <= 0.0 {
        return Err("the timeout must be more than 0 seconds".into());
    }
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// The overall state `raid_status` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaidState {
    /// Every backend is in service.
    Optimal,
    /// Commits go on, but at least one backend is out of service.
    Degraded,
    /// A backend is being brought back up to date.
    Recovering,
    /// No backend can serve: zeoraid refuses requests.
    Failed,
}

impl RaidState {
    /// Parses the state word of `raid_status`; surrounding blanks are
    /// tolerated, anything else is not a state.
    pub fn parse(word: &str) -> Option<RaidState> {
        match word.trim() {
            "optimal" => Some(RaidState::Optimal),
            "degraded" => Some(RaidState::Degraded),
            "recovering" => Some(RaidState::Recovering),
            "failed" => Some(RaidState::Failed),
            _ => None,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            RaidState::Optimal => "optimal",
            RaidState::Degraded => "degraded",
            RaidState::Recovering => "recovering",
            RaidState::Failed => "failed",
        }
    }

    /// The monitoring plugin exit code: a RAID that still serves with less
    /// redundancy is a warning, one that cannot serve is critical.
    pub fn exit_code(self) -> u8 {
        match self {
            RaidState::Optimal => 0,
            RaidState::Degraded | RaidState::Recovering => 1,
            RaidState::Failed => 2,
        }
    }
}

/// One backend as `raid_details` describes it: `"state"` or
/// `"state: reason or progress"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendState {
    pub name: String,
    /// The state word, e.g. `optimal` or `degraded`.
    pub state: String,
    /// The text after the first `:`, as the server wrote it.
    pub detail: Option<String>,
}

impl BackendState {
    pub fn parse(name: &str, text: &str) -> BackendState {
        let (state, detail) = match text.split_once(':') {
            Some((state, detail)) => (state, Some(detail.trim())),
            None => (text, None),
        };
        BackendState {
            name: name.to_owned(),
            state: state.trim().to_owned(),
            detail: detail.filter(|d| !d.is_empty()).map(str::to_owned),
        }
    }

    fn is_optimal(&self) -> bool {
        self.state == "optimal"
    }

    /// `state` or `state: detail`, as the server sent it.
    fn text(&self) -> String {
        match &self.detail {
            Some(detail) => format!("{}: {detail}", self.state),
            None => self.state.clone(),
        }
    }

    /// The `details` line: `NAME STATE [DETAIL]`.
    pub fn line(&self) -> String {
        let line = match &self.detail {
            Some(detail) => format!("{} {} {detail}", self.name, self.state),
            None => format!("{} {}", self.name, self.state),
        };
        one_line(&line)
    }
}

/// Reads a `raid_details` reply, sorted by backend name.
pub fn parse_details(details: &Value) -> Result<Vec<BackendState>, String> {
    let Value::Dict(items) = details else {
        return Err(format!(
            "raid_details returned {} instead of a dict",
            shown(details)
        ));
    };
    let mut backends = items
        .iter()
        .map(|(name, text)| match (name, text) {
            (Value::Str(name), Value::Str(text)) => Ok(BackendState::parse(name, text)),
            _ => Err(format!(
                "raid_details entry {}: {} is not text",
                shown(name),
                shown(text)
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    backends.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(backends)
}

/// The `status` line for a state and the backends' details:
/// `degraded - 2 of 3 backends optimal; c: degraded: disconnected`. Every
/// backend that is not optimal is named with its reason, so the alert
/// itself says what to look at.
pub fn summary_line(state: RaidState, backends: &[BackendState]) -> String {
    let optimal = backends.iter().filter(|b| b.is_optimal()).count();
    let mut line = format!(
        "{} - {optimal} of {} backends optimal",
        state.word(),
        backends.len()
    );
    for backend in backends.iter().filter(|b| !b.is_optimal()) {
        line.push_str(&format!("; {}: {}", backend.name, backend.text()));
    }
    one_line(&line)
}

/// An unexpected reply value in a message: short strings and integers as
/// Python would print them, anything else summarized.
fn shown(value: &Value) -> String {
    match value {
        Value::Str(text) if text.len() <= 80 => format!("{text:?}"),
        Value::Int(number) => number.to_string(),
        other => other.summary(),
    }
}

/// Control characters (newlines above all) as blanks: a monitoring system
/// reads only the first line, and `details` is read line by line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// What a command prints and how it exits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    pub exit_code: u8,
}

impl Report {
    fn out(lines: Vec<String>, exit_code: u8) -> Report {
        Report {
            stdout: lines,
            stderr: Vec::new(),
            exit_code,
        }
    }

    fn err(message: String, exit_code: u8) -> Report {
        Report {
            stdout: Vec::new(),
            stderr: vec![message],
            exit_code,
        }
    }
}

/// `status` from the replies to `raid_status` and `raid_details`. Any
/// failure, including an answer that is not what zeoraid sends, is an
/// `unknown` line with exit code 3: still one line on stdout, as a
/// monitoring system expects.
pub fn status_report(replies: Result<(Value, Value), ManagementError>) -> Report {
    let line = replies
        .map_err(|e| e.to_string())
        .and_then(|(status, details)| {
            let state = status.as_str().and_then(RaidState::parse).ok_or_else(|| {
                format!("raid_status returned {} instead of a state", shown(&status))
            })?;
            let backends = parse_details(&details)?;
            Ok((summary_line(state, &backends), state.exit_code()))
        });
    match line {
        Ok((line, exit_code)) => Report::out(vec![line], exit_code),
        Err(reason) => Report::out(vec![one_line(&format!("unknown - {reason}"))], EXIT_UNKNOWN),
    }
}

/// `details` from the reply to `raid_details`: one line per backend,
/// sorted by name.
pub fn details_report(reply: Result<Value, ManagementError>) -> Report {
    match reply
        .map_err(|e| e.to_string())
        .and_then(|v| parse_details(&v))
    {
        Ok(backends) => Report::out(backends.iter().map(BackendState::line).collect(), 0),
        Err(reason) => Report::err(reason, EXIT_UNKNOWN),
    }
}

/// `disable` and `recover` from the reply to `raid_disable` or
/// `raid_recover`: the server's confirmation, or its refusal (exit 1), or
/// why it could not be asked (exit 3).
pub fn confirmation_report(reply: Result<Value, ManagementError>) -> Report {
    match reply {
        Ok(Value::Str(confirmation)) => Report::out(vec![confirmation], 0),
        Ok(other) => Report::out(vec![shown(&other)], 0),
        Err(error @ ManagementError::Remote { .. }) => Report::err(error.to_string(), EXIT_REFUSED),
        Err(error) => Report::err(error.to_string(), EXIT_UNKNOWN),
    }
}

/// What the operator asked of a recovery besides the backend's name.
/// `false` and `None` leave the choice to zeoraid (its defaults and its
/// `[recovery]` configuration).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoverOptions {
    /// Compare every transaction the target holds with the source, not
    /// only its newest one.
    pub full_verify: bool,
    /// Transactions copied per second at most; 0 is no limit.
    pub transactions_per_second: Option<i64>,
    /// Record data bytes copied per second at most; 0 is no limit.
    pub bytes_per_second: Option<i64>,
}

impl RecoverOptions {
    /// The options dict of `raid_recover`, holding only the keys the
    /// operator gave, so that everything else stays zeoraid's to decide.
    pub fn to_value(&self) -> Value {
        let mut options = Vec::new();
        if self.full_verify {
            options.push((Value::str("full_verify"), Value::Bool(true)));
        }
        if let Some(limit) = self.transactions_per_second {
            options.push((Value::str("transactions_per_second"), Value::Int(limit)));
        }
        if let Some(limit) = self.bytes_per_second {
            options.push((Value::str("bytes_per_second"), Value::Int(limit)));
        }
        Value::Dict(options)
    }
}

/// Where a recovery stands, as `raid_recovery` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryState {
    Running,
    Done,
    Failed,
}

/// The fields of a `raid_recovery` reply that `recover --wait` shows or
/// decides on.
#[derive(Clone, Debug, PartialEq)]
pub struct RecoveryReply {
    /// The backend being recovered (the target).
    pub backend: String,
    /// The optimal backend it is copied from at the moment.
    pub source: String,
    pub state: RecoveryState,
    /// `verifying`, `copying`, `finishing`, ...: shown as zeoraid names it.
    pub phase: String,
    pub transactions_verified: i64,
    pub transactions_copied: i64,
    /// Record data bytes copied.
    pub bytes_copied: i64,
    /// The last tid the target holds, in hex.
    pub tid: String,
    /// Current rates, over the last few seconds.
    pub transactions_per_second: f64,
    pub bytes_per_second: f64,
    /// Seconds until done, when zeoraid can tell.
    pub eta_seconds: Option<f64>,
    /// Unix times.
    pub started: f64,
    pub finished: Option<f64>,
    /// Why the recovery failed.
    pub error: Option<String>,
}

impl RecoveryReply {
    /// Reads a `raid_recovery` reply; `None` means no recovery ran since
    /// zeoraid started.
    pub fn parse(reply: &Value) -> Result<Option<RecoveryReply>, String> {
        if *reply == Value::None {
            return Ok(None);
        }
        if !matches!(reply, Value::Dict(_)) {
            return Err(format!(
                "raid_recovery returned {} instead of a dict",
                shown(reply)
            ));
        }
        let fields = RecoveryFields(reply);
        let state = match fields.text("state")?.as_str() {
            "running" => RecoveryState::Running,
            "done" => RecoveryState::Done,
            "failed" => RecoveryState::Failed,
            other => return Err(format!("raid_recovery returned the state {other:?}")),
        };
        Ok(Some(RecoveryReply {
            backend: fields.text("backend")?,
            source: fields.text("source")?,
            state,
            phase: fields.text("phase")?,
            transactions_verified: fields.int("transactions_verified")?,
            transactions_copied: fields.int("transactions_copied")?,
            bytes_copied: fields.int("bytes_copied")?,
            tid: fields.text("tid")?,
            transactions_per_second: fields.number("transactions_per_second")?,
            bytes_per_second: fields.number("bytes_per_second")?,
            eta_seconds: fields.optional(RecoveryFields::number, "eta_seconds")?,
            started: fields.number("started")?,
            finished: fields.optional(RecoveryFields::number, "finished")?,
            error: fields.optional(RecoveryFields::text, "error")?,
        }))
    }

    /// The progress line of a running recovery:
    /// `b: copying from a, 1200 transactions (3.4 MiB) copied, at
    /// 03ed4a5b12345678, 45.2 transactions/s (1.1 MiB/s), eta 2m13s`.
    /// While verifying, the count is of the transactions verified so far.
    pub fn line(&self) -> String {
        let count = if self.phase == "verifying" {
            format!(
                "{} verified",
                transactions(count(self.transactions_verified))
            )
        } else {
            format!(
                "{} ({}) copied",
                transactions(count(self.transactions_copied)),
                byte_size(self.bytes_copied as f64)
            )
        };
        let eta = match self.eta_seconds.and_then(duration_text) {
            Some(eta) => format!("eta {eta}"),
            None => "eta unknown".to_owned(),
        };
        one_line(&format!(
            "{}: {} from {}, {count}, at {}, {:.1} transactions/s ({}/s), {eta}",
            self.backend,
            self.phase,
            self.source,
            self.tid,
            self.transactions_per_second,
            byte_size(self.bytes_per_second)
        ))
    }

    /// The last line of a recovery that is done: `b: recovered from a,
    /// 1 transaction verified, 5000 transactions (14.2 MiB) copied in
    /// 3m12s, at 03ed4a5b12345678`.
    pub fn done_line(&self) -> String {
        let took = self
            .finished
            .and_then(|finished| duration_text(finished - self.started))
            .map(|took| format!(" in {took}"))
            .unwrap_or_default();
        one_line(&format!(
            "{}: recovered from {}, {} verified, {} ({}) copied{took}, at {}",
            self.backend,
            self.source,
            transactions(count(self.transactions_verified)),
            transactions(count(self.transactions_copied)),
            byte_size(self.bytes_copied as f64),
            self.tid
        ))
    }
}

/// Typed access to the fields of a `raid_recovery` dict; every error names
/// the field.
struct RecoveryFields<'a>(&'a Value);

impl RecoveryFields<'_> {
    fn get(&self, key: &str) -> Result<&Value, String> {
        self.0
            .dict_get(key)
            .ok_or_else(|| format!("raid_recovery returned no {key:?}"))
    }

    fn wrong(key: &str, value: &Value, expected: &str) -> String {
        format!(
            "raid_recovery returned {key:?}: {} instead of {expected}",
            shown(value)
        )
    }

    fn text(&self, key: &str) -> Result<String, String> {
        match self.get(key)? {
            Value::Str(text) => Ok(text.clone()),
            other => Err(Self::wrong(key, other, "text")),
        }
    }

    fn int(&self, key: &str) -> Result<i64, String> {
        match self.get(key)? {
            Value::Int(number) => Ok(*number),
            other => Err(Self::wrong(key, other, "an integer")),
        }
    }

    /// A Python float; an int where a float is expected is as good.
    fn number(&self, key: &str) -> Result<f64, String> {
        match self.get(key)? {
            Value::Float(number) => Ok(*number),
            Value::Int(number) => Ok(*number as f64),
            other => Err(Self::wrong(key, other, "a number")),
        }
    }

    /// A field that may be `None` (or absent).
    fn optional<T>(
        &self,
        read: fn(&Self, &str) -> Result<T, String>,
        key: &str,
    ) -> Result<Option<T>, String> {
        match self.0.dict_get(key) {
            None | Some(Value::None) => Ok(None),
            Some(_) => read(self, key).map(Some),
        }
    }
}

/// A count as reported (never negative from zeoraid).
fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Seconds as `45s`, `2m13s` or `1h02m`; `None` for what is not a
/// duration (negative, NaN, infinite).
fn duration_text(seconds: f64) -> Option<String> {
    if !seconds.is_finite() || seconds < 0.0 {
        return None;
    }
    let seconds = seconds.round() as u64;
    Some(match seconds {
        0..=59 => format!("{seconds}s"),
        60..=3599 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
    })
}

/// What one `raid_recovery` reply means to `recover --wait`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchStep {
    /// Still running, and nothing changed since the last line printed.
    Unchanged,
    /// Still running: print this progress line.
    Progress(String),
    /// The wait is over: print the report and exit with its code.
    Over(Report),
}

/// Follows one recovery through the replies to `raid_recovery`, printing a
/// line only when the progress changes.
pub struct RecoveryWatch {
    /// The backend whose recovery was started.
    backend: String,
    /// The last progress line returned, to stay quiet while it holds.
    last_line: Option<String>,
}

impl RecoveryWatch {
    pub fn new(backend: &str) -> RecoveryWatch {
        RecoveryWatch {
            backend: backend.to_owned(),
            last_line: None,
        }
    }

    /// Exit 0 when the recovery is done, 1 when it failed (with zeoraid's
    /// error), 3 when it cannot be followed any more: unreachable, an
    /// unexpected answer, or zeoraid reporting no recovery or another
    /// backend's (so how this one ended is unknown).
    pub fn observe(&mut self, reply: Result<Value, ManagementError>) -> WatchStep {
        let progress = reply
            .map_err(|e| e.to_string())
            .and_then(|reply| RecoveryReply::parse(&reply))
            .and_then(|progress| {
                progress.ok_or_else(|| {
                    "zeoraid reports no recovery since it started (was it restarted?)".to_owned()
                })
            })
            .and_then(|progress| {
                if progress.backend == self.backend {
                    Ok(progress)
                } else {
                    Err(format!(
                        "zeoraid reports a recovery of {} instead",
                        progress.backend
                    ))
                }
            });
        let progress = match progress {
            Ok(progress) => progress,
            Err(reason) => {
                // The recovery runs inside zeoraid: losing sight of it does
                // not stop it, and the operator should know where to look.
                let message = format!(
                    "cannot follow the recovery of {}: {reason}; it may still be running \
                     (see zeoraid details)",
                    self.backend
                );
                return WatchStep::Over(Report::err(one_line(&message), EXIT_UNKNOWN));
            }
        };
        match progress.state {
            RecoveryState::Running => {
                let line = progress.line();
                if self.last_line.as_ref() == Some(&line) {
                    return WatchStep::Unchanged;
                }
                self.last_line = Some(line.clone());
                WatchStep::Progress(line)
            }
            RecoveryState::Done => WatchStep::Over(Report::out(vec![progress.done_line()], 0)),
            RecoveryState::Failed => {
                let reason = progress
                    .error
                    .as_deref()
                    .unwrap_or("zeoraid gave no reason");
                let message = format!("recovery of {} failed: {reason}", self.backend);
                WatchStep::Over(Report::err(one_line(&message), EXIT_RECOVERY_FAILED))
            }
        }
    }
}

/// Runs `status`: both calls on one connection, within one timeout.
pub async fn status(target: &Target) -> Report {
    let replies = async {
        let mut session = Session::open(target).await?;
        let status = session.call("raid_status", vec![]).await?;
        let details = session.call("raid_details", vec![]).await?;
        Ok((status, details))
    };
    status_report(replies.await)
}

/// Runs `details`.
pub async fn details(target: &Target) -> Report {
    let reply = async {
        Session::open(target)
            .await?
            .call("raid_details", vec![])
            .await
    };
    details_report(reply.await)
}

/// Runs `disable NAME`.
pub async fn disable(target: &Target, backend: &str) -> Report {
    let reply = async {
        Session::open(target)
            .await?
            .call("raid_disable", vec![Value::str(backend)])
            .await
    };
    confirmation_report(reply.await)
}

/// The `raid_recover` arguments: the backend's name and the options dict.
fn recover_args(backend: &str, options: &RecoverOptions) -> Vec<Value> {
    vec![Value::str(backend), options.to_value()]
}

/// Runs `recover NAME`: starts the recovery and prints zeoraid's answer.
pub async fn recover(target: &Target, backend: &str, options: &RecoverOptions) -> Report {
    let reply = async {
        Session::open(target)
            .await?
            .call("raid_recover", recover_args(backend, options))
            .await
    };
    confirmation_report(reply.await)
}

/// Runs `recover NAME --wait`: starts the recovery, hands the confirmation
/// and every changed progress line to `print` as they come, and returns
/// how the recovery ended. Every poll gets the whole `--timeout`.
pub async fn recover_and_wait(
    target: &Target,
    backend: &str,
    options: &RecoverOptions,
    mut print: impl FnMut(&str),
) -> Report {
    let mut session = match Session::open(target).await {
        Ok(session) => session,
        Err(error) => return confirmation_report(Err(error)),
    };
    let started = confirmation_report(
        session
            .call("raid_recover", recover_args(backend, options))
            .await,
    );
    if started.exit_code != 0 {
        return started;
    }
    for line in &started.stdout {
        print(line);
    }
    let mut watch = RecoveryWatch::new(backend);
    let mut polls = tokio::time::interval(RECOVERY_POLL_INTERVAL);
    // A slow answer delays the next poll rather than causing a burst.
    polls.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        polls.tick().await;
        session.renew_deadline();
        match watch.observe(session.call("raid_recovery", vec![]).await) {
            WatchStep::Unchanged => {}
            WatchStep::Progress(line) => print(&line),
            WatchStep::Over(report) => return report,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict(entries: &[(&str, &str)]) -> Value {
        Value::Dict(
            entries
                .iter()
                .map(|(k, v)| (Value::str(*k), Value::str(*v)))
                .collect(),
        )
    }

    fn unreachable() -> ManagementError {
        ManagementError::Unreachable {
            server: "127.0.0.1:8100".into(),
            reason: "connection refused".into(),
        }
    }

    fn remote(class: &str, message: &str) -> ManagementError {
        ManagementError::Remote {
            method: "raid_disable".into(),
            error: ZeoError::message(class, message),
        }
    }

    #[test]
    fn state_words_map_to_monitoring_exit_codes() {
        let codes: Vec<_> = ["optimal", "degraded", "recovering", "failed"]
            .iter()
            .map(|w| RaidState::parse(w).map(RaidState::exit_code))
            .collect();
        assert_eq!(codes, [Some(0), Some(1), Some(1), Some(2)]);
        assert_eq!(RaidState::parse(" degraded\n"), Some(RaidState::Degraded));
        assert_eq!(RaidState::parse("Optimal"), None);
        assert_eq!(RaidState::parse(""), None);
        for state in [
            RaidState::Optimal,
            RaidState::Degraded,
            RaidState::Recovering,
            RaidState::Failed,
        ] {
            assert_eq!(RaidState::parse(state.word()), Some(state));
        }
    }

    #[test]
    fn state_text_splits_at_the_first_colon() {
        let b = BackendState::parse(
            "c",
            "degraded: disconnected: connection reset (since 2026-11-29T00:31:02Z)",
        );
        assert_eq!(b.state, "degraded");
        assert_eq!(
            b.detail.as_deref(),
            Some("disconnected: connection reset (since 2026-11-29T00:31:02Z)")
        );
        assert_eq!(
            b.line(),
            "c degraded disconnected: connection reset (since 2026-11-29T00:31:02Z)"
        );
        let b = BackendState::parse("a", "optimal");
        assert_eq!((b.state.as_str(), b.detail), ("optimal", None));
        assert_eq!(BackendState::parse("a", "optimal").line(), "a optimal");
        assert_eq!(BackendState::parse("a", "failed: ").line(), "a failed");
    }

    #[test]
    fn details_become_sorted_lines() {
        let details = dict(&[
            ("c", "recovering: 1200 of 5000 transactions"),
            ("a", "optimal"),
            ("b", "degraded: disabled by operator"),
        ]);
        let report = details_report(Ok(details));
        assert_eq!(
            report.stdout,
            [
                "a optimal",
                "b degraded disabled by operator",
                "c recovering 1200 of 5000 transactions"
            ]
        );
        assert_eq!(report.exit_code, 0);
        assert!(report.stderr.is_empty());
    }

    #[test]
    fn details_that_are_not_a_text_dict_are_unknown() {
        for value in [
            Value::None,
            Value::str("optimal"),
            Value::Dict(vec![(Value::str("a"), Value::Int(1))]),
        ] {
            let report = details_report(Ok(value));
            assert_eq!(report.exit_code, EXIT_UNKNOWN);
            assert!(report.stdout.is_empty());
            assert!(report.stderr[0].contains("raid_details"), "{report:?}");
        }
        let report = details_report(Err(unreachable()));
        assert_eq!(report.exit_code, EXIT_UNKNOWN);
        assert_eq!(
            report.stderr,
            ["cannot reach zeoraid at 127.0.0.1:8100: connection refused"]
        );
    }

    #[test]
    fn summary_names_every_backend_that_is_not_optimal() {
        let all = parse_details(&dict(&[("b", "optimal"), ("a", "optimal")])).unwrap();
        assert_eq!(
            summary_line(RaidState::Optimal, &all),
            "optimal - 2 of 2 backends optimal"
        );
        let one_down = parse_details(&dict(&[
            ("c", "degraded: disconnected: connection reset"),
            ("a", "optimal"),
            ("b", "optimal"),
        ]))
        .unwrap();
        assert_eq!(
            summary_line(RaidState::Degraded, &one_down),
            "degraded - 2 of 3 backends optimal; c: degraded: disconnected: connection reset"
        );
        let none = parse_details(&dict(&[("b", "failed"), ("a", "failed: line1\nline2")])).unwrap();
        assert_eq!(
            summary_line(RaidState::Failed, &none),
            "failed - 0 of 2 backends optimal; a: failed: line1 line2; b: failed"
        );
    }

    #[test]
    fn status_report_is_one_line_with_the_state_exit_code() {
        let report = status_report(Ok((
            Value::str("recovering"),
            dict(&[("a", "optimal"), ("b", "recovering: 10%")]),
        )));
        assert_eq!(
            report.stdout,
            ["recovering - 1 of 2 backends optimal; b: recovering: 10%"]
        );
        assert_eq!(report.exit_code, 1);
    }

    #[test]
    fn status_failures_are_unknown_on_stdout() {
        let report = status_report(Err(unreachable()));
        assert_eq!(
            report.stdout,
            ["unknown - cannot reach zeoraid at 127.0.0.1:8100: connection refused"]
        );
        assert_eq!(report.exit_code, EXIT_UNKNOWN);
        for (status, details) in [
            (Value::str("splendid"), dict(&[])),
            (Value::Int(0), dict(&[])),
            (Value::str("optimal"), Value::None),
        ] {
            let report = status_report(Ok((status, details)));
            assert_eq!(report.exit_code, EXIT_UNKNOWN);
            assert!(
                report.stdout[0].starts_with("unknown - raid_"),
                "{report:?}"
            );
        }
        let report = status_report(Err(ManagementError::Remote {
            method: "raid_status".into(),
            error: ZeoError::attribute_error("zeoraid has no method \"raid_status\""),
        }));
        assert_eq!(
            report.stdout,
            ["unknown - raid_status failed: builtins.AttributeError: zeoraid has no method \"raid_status\""]
        );
    }

    #[test]
    fn disable_exit_codes_tell_refused_from_unknown() {
        let report = confirmation_report(Ok(Value::str("backend c disabled")));
        assert_eq!(report.stdout, ["backend c disabled"]);
        assert_eq!(report.exit_code, 0);
        let report = confirmation_report(Err(remote("builtins.ValueError", "no backend named x")));
        assert_eq!(
            report.stderr,
            ["raid_disable failed: builtins.ValueError: no backend named x"]
        );
        assert_eq!(report.exit_code, EXIT_REFUSED);
        assert_eq!(
            confirmation_report(Err(unreachable())).exit_code,
            EXIT_UNKNOWN
        );
    }

    #[test]
    fn error_replies_read_naturally() {
        let error = ZeoError::message("builtins.ValueError", "no backend named x");
        assert_eq!(
            describe_error(&error),
            "builtins.ValueError: no backend named x"
        );
        let error = ZeoError::with_args("ZODB.POSException.ReadOnlyError", vec![]);
        assert_eq!(describe_error(&error), "ZODB.POSException.ReadOnlyError()");
    }

    #[test]
    fn timeouts_are_positive_seconds() {
        assert_eq!(parse_timeout("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_timeout("0.25"), Ok(Duration::from_millis(250)));
        for bad in ["0", "-1", "ten", "", "NaN", "inf"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }

    /// A `raid_recovery` reply for backend b copied from a, as the
    /// interface describes it.
    fn recovery(state: &str, phase: &str) -> Value {
        let fields = [
            ("backend", Value::str("b")),
            ("source", Value::str("a")),
            ("state", Value::str(state)),
            ("phase", Value::str(phase)),
            ("full_verify", Value::Bool(false)),
            ("transactions_verified", Value::Int(1)),
            ("transactions_copied", Value::Int(1200)),
            ("bytes_copied", Value::Int(3_565_158)),
            ("tid", Value::str("03ed4a5b12345678")),
            ("transactions_per_second", Value::Float(45.25)),
            ("bytes_per_second", Value::Float(1_153_434.0)),
            ("eta_seconds", Value::Float(133.4)),
            (
                "limits",
                Value::Dict(vec![
                    (Value::str("transactions_per_second"), Value::Int(0)),
                    (Value::str("bytes_per_second"), Value::Int(0)),
                ]),
            ),
            ("started", Value::Float(1_790_000_000.0)),
            ("finished", Value::None),
            ("error", Value::None),
        ];
        Value::Dict(
            fields
                .into_iter()
                .map(|(key, value)| (Value::str(key), value))
                .collect(),
        )
    }

    /// `reply` with one field replaced.
    fn with(mut reply: Value, key: &str, value: Value) -> Value {
        let Value::Dict(fields) = &mut reply else {
            panic!("not a dict")
        };
        let field = fields
            .iter_mut()
            .find(|(k, _)| k.as_str() == Some(key))
            .expect("a known field");
        field.1 = value;
        reply
    }

    fn over(step: WatchStep) -> Report {
        match step {
            WatchStep::Over(report) => report,
            other => panic!("the wait goes on: {other:?}"),
        }
    }

    #[test]
    fn recover_options_hold_only_the_keys_given() {
        assert_eq!(RecoverOptions::default().to_value(), Value::Dict(vec![]));
        let options = RecoverOptions {
            full_verify: true,
            transactions_per_second: Some(50),
            bytes_per_second: Some(0),
        };
        assert_eq!(
            options.to_value(),
            Value::Dict(vec![
                (Value::str("full_verify"), Value::Bool(true)),
                (Value::str("transactions_per_second"), Value::Int(50)),
                (Value::str("bytes_per_second"), Value::Int(0)),
            ])
        );
        let options = RecoverOptions {
            bytes_per_second: Some(1_000_000),
            ..RecoverOptions::default()
        };
        assert_eq!(
            options.to_value(),
            Value::Dict(vec![(
                Value::str("bytes_per_second"),
                Value::Int(1_000_000)
            )])
        );
    }

    #[test]
    fn recover_confirmation_and_refusal() {
        let report = confirmation_report(Ok(Value::str("recovery of b started from a")));
        assert_eq!(report.stdout, ["recovery of b started from a"]);
        assert_eq!(report.exit_code, 0);
        let report = confirmation_report(Err(ManagementError::Remote {
            method: "raid_recover".into(),
            error: ZeoError::value_error("recovery of c is already running"),
        }));
        assert_eq!(
            report.stderr,
            ["raid_recover failed: builtins.ValueError: recovery of c is already running"]
        );
        assert_eq!(report.exit_code, EXIT_REFUSED);
        assert_eq!(
            confirmation_report(Err(unreachable())).exit_code,
            EXIT_UNKNOWN
        );
    }

    #[test]
    fn progress_lines_show_phase_count_size_tid_rate_and_eta() {
        let progress = RecoveryReply::parse(&recovery("running", "copying"))
            .unwrap()
            .unwrap();
        assert_eq!(
            progress.line(),
            "b: copying from a, 1200 transactions (3.4 MiB) copied, at 03ed4a5b12345678, \
             45.2 transactions/s (1.1 MiB/s), eta 2m13s"
        );
        // While verifying, what moves is the count of verified transactions.
        let verifying = with(recovery("running", "verifying"), "eta_seconds", Value::None);
        let verifying = with(verifying, "transactions_per_second", Value::Int(0));
        let verifying = with(verifying, "bytes_per_second", Value::Int(0));
        assert_eq!(
            RecoveryReply::parse(&verifying).unwrap().unwrap().line(),
            "b: verifying from a, 1 transaction verified, at 03ed4a5b12345678, \
             0.0 transactions/s (0 B/s), eta unknown"
        );
        let done = with(
            recovery("done", "done"),
            "finished",
            Value::Float(1_790_000_192.3),
        );
        assert_eq!(
            RecoveryReply::parse(&done).unwrap().unwrap().done_line(),
            "b: recovered from a, 1 transaction verified, 1200 transactions (3.4 MiB) copied \
             in 3m12s, at 03ed4a5b12345678"
        );
    }

    #[test]
    fn sizes_and_durations_read_naturally() {
        let sizes: Vec<_> = [0.0, 1023.0, 1024.0, 1_572_864.0, 5e12]
            .into_iter()
            .map(byte_size)
            .collect();
        assert_eq!(sizes, ["0 B", "1023 B", "1.0 KiB", "1.5 MiB", "4.5 TiB"]);
        let durations: Vec<_> = [0.2, 59.0, 61.0, 3599.4, 3600.0, 90061.0]
            .into_iter()
            .map(duration_text)
            .collect();
        let durations: Vec<_> = durations.iter().map(|d| d.as_deref()).collect();
        assert_eq!(
            durations,
            [
                Some("0s"),
                Some("59s"),
                Some("1m01s"),
                Some("59m59s"),
                Some("1h00m"),
                Some("25h01m")
            ]
        );
        for not_a_duration in [-1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(duration_text(not_a_duration), None);
        }
    }

    #[test]
    fn a_watch_prints_a_line_only_when_the_progress_changes() {
        let mut watch = RecoveryWatch::new("b");
        let first = recovery("running", "copying");
        let WatchStep::Progress(line) = watch.observe(Ok(first.clone())) else {
            panic!("no progress line")
        };
        assert!(
            line.starts_with("b: copying from a, 1200 transactions"),
            "{line}"
        );
        assert_eq!(watch.observe(Ok(first.clone())), WatchStep::Unchanged);
        let further = with(first.clone(), "tid", Value::str("03ed4a5b12345679"));
        assert!(matches!(
            watch.observe(Ok(further.clone())),
            WatchStep::Progress(line) if line.contains("at 03ed4a5b12345679")
        ));
        assert_eq!(watch.observe(Ok(further)), WatchStep::Unchanged);
        // A rate that drops is news too: the operator sees a stall.
        let stalled = with(first, "transactions_per_second", Value::Float(0.0));
        assert!(matches!(watch.observe(Ok(stalled)), WatchStep::Progress(_)));
    }

    #[test]
    fn a_watch_ends_with_the_recovery() {
        let mut watch = RecoveryWatch::new("b");
        let report = over(watch.observe(Ok(recovery("done", "done"))));
        assert_eq!(
            report.stdout,
            [
                "b: recovered from a, 1 transaction verified, 1200 transactions (3.4 MiB) copied, \
              at 03ed4a5b12345678"
            ]
        );
        assert_eq!(report.exit_code, 0);

        let error = "b's history differs from a's at tid 03ed4a5b12345678: other records;\n\
                     give b an empty storage and recover it again";
        let failed = with(recovery("failed", "failed"), "error", Value::str(error));
        let report = over(RecoveryWatch::new("b").observe(Ok(failed)));
        assert!(report.stdout.is_empty());
        assert_eq!(
            report.stderr,
            [
                "recovery of b failed: b's history differs from a's at tid 03ed4a5b12345678: \
              other records; give b an empty storage and recover it again"
            ]
        );
        assert_eq!(report.exit_code, EXIT_RECOVERY_FAILED);
        let report = over(RecoveryWatch::new("b").observe(Ok(recovery("failed", "failed"))));
        assert_eq!(
            report.stderr,
            ["recovery of b failed: zeoraid gave no reason"]
        );
    }

    #[test]
    fn a_recovery_out_of_sight_is_unknown() {
        let cases = [
            (Err(unreachable()), "cannot reach zeoraid at 127.0.0.1:8100"),
            (Ok(Value::None), "no recovery since it started"),
            (
                Ok(with(
                    recovery("running", "copying"),
                    "backend",
                    Value::str("c"),
                )),
                "a recovery of c instead",
            ),
            (
                Ok(with(
                    recovery("running", "copying"),
                    "state",
                    Value::str("paused"),
                )),
                "the state \"paused\"",
            ),
            (
                Ok(with(recovery("running", "copying"), "tid", Value::Int(7))),
                "\"tid\": 7 instead of text",
            ),
            (Ok(Value::str("busy")), "\"busy\" instead of a dict"),
        ];
        for (reply, reason) in cases {
            let report = over(RecoveryWatch::new("b").observe(reply));
            assert_eq!(report.exit_code, EXIT_UNKNOWN);
            let message = &report.stderr[0];
            assert!(
                message.starts_with("cannot follow the recovery of b: ")
                    && message.contains(reason)
                    && message.ends_with("it may still be running (see zeoraid details)"),
                "{message}"
            );
        }
    }

    #[test]
    fn details_show_recovery_progress_and_failure() {
        let report = details_report(Ok(dict(&[
            ("a", "optimal"),
            (
                "b",
                "recovering: copying from a, 1200 transactions (3.4 MiB) copied, \
                 at 03ed4a5b12345678, 45.2 transactions/s, eta 2m13s",
            ),
            (
                "c",
                "degraded: recovery failed: c's history differs from a's at tid 03ed4a5b12345678: \
                 other records; give c an empty storage and recover it again \
                 (since 2026-11-29T00:31:02Z)",
            ),
        ])));
        assert_eq!(
            report.stdout,
            [
                "a optimal",
                "b recovering copying from a, 1200 transactions (3.4 MiB) copied, \
                 at 03ed4a5b12345678, 45.2 transactions/s, eta 2m13s",
                "c degraded recovery failed: c's history differs from a's at tid \
                 03ed4a5b12345678: other records; give c an empty storage and recover it again \
                 (since 2026-11-29T00:31:02Z)",
            ]
        );
    }
}
