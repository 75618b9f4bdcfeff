//! zeoraid: a RAID-1 proxy for ZEO.
//!
//! ZODB clients connect to zeoraid exactly as to a ZEO server; zeoraid
//! forwards their calls to the real ZEO servers behind it.
//!
//! # Layout
//! - [`protocol`]: the ZEO 5 wire protocol: the [`protocol::Value`] model,
//!   the msgpack and pickle codecs, messages, framing, error replies. The
//!   only code that touches wire bytes.
//! - [`backend`]: the client side: one ZEO connection per backend, with
//!   pipelined calls, deadlines, liveness pings and reconnects.
//! - [`raid`]: the core shared by all sessions: the commit lock, backend
//!   choice, availability, the invalidation fan-out and history.
//! - [`server`]: the ZEO front end: listener, per-client sessions and
//!   their transactions, argument checks, status, graceful shutdown.
//! - [`config`]: the TOML configuration and its validation.
//! - [`display`]: how counts and sizes read in operator-facing text.
//! - [`management`]: the operator's side: `zeoraid status`, `details`,
//!   `disable` and `recover` as a read-only ZEO client of zeoraid's `raid_*` methods, and
//!   what they print and exit with.

#![forbid(unsafe_code)]

pub mod backend;
pub mod config;
pub mod display;
pub mod management;
pub mod protocol;
pub mod raid;
pub mod server;
