//! A working local setup in one command: provisions the Python side (the
//! same pinned virtualenv the tests use), starts a real ZEO server
//! (runzeo, FileStorage in a temporary directory) and runs zeoraid in front
//! of it on 127.0.0.1:8100 until Ctrl-C.
//!
//!     cargo run --example local_setup [-- PORT]
//!
//! Then connect any ZODB client, e.g. with the venv's python:
//!
//!     import ZEO; db = ZEO.DB(('127.0.0.1', 8100))

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;

use tokio_util::sync::CancellationToken;
use zeoraid::config::Config;

fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .map(|p| p.parse().expect("PORT must be a number"))
        .unwrap_or(8100);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    eprintln!("provisioning the Python virtualenv (first run only) ...");
    let python = support::python();
    let backend = support::ZeoServer::start(false);
    let state = tempfile::tempdir().expect("temporary state dir");
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nstorage = \"1\"\nstate_dir = {state:?}\n\n\
         [[backend]]\nname = \"a\"\naddress = \"127.0.0.1:{backend_port}\"\nstorage = \"1\"\n",
        state = state.path().join("zeoraid").display().to_string(),
        backend_port = backend.port(),
    );
    let config = Config::parse(&toml, Path::new("<local setup>")).expect("valid config");
    eprintln!(
        "\nZEO server (runzeo) on 127.0.0.1:{}, data in {}\nzeoraid on 127.0.0.1:{port}\n\
         connect with: {} -c \"import ZEO; db = ZEO.DB(('127.0.0.1', {port})); print(db.open().root())\"\n\
         Ctrl-C stops everything.\n",
        backend.port(),
        backend.dir().display(),
        python.display(),
    );

    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            on_signal.cancel();
        });
        zeoraid::server::serve(config, shutdown)
            .await
            .expect("zeoraid runs");
    });
    drop(backend);
}
