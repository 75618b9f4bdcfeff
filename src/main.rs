//! The zeoraid command: `zeoraid serve --config FILE`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

use zeoraid::config::Config;

#[derive(Parser)]
#[command(version, about = "A RAID-1 proxy for ZEO servers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the zeoraid server.
    Serve {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(config),
    }
}

fn serve(path: PathBuf) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("zeoraid: {err}");
            return ExitCode::from(2);
        }
    };
    let filter =
        EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&config.server.log_level));
    let filter = match filter {
        Ok(filter) => filter,
        Err(err) => {
            eprintln!("zeoraid: {}: server.log_level: {err}", path.display());
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            error!(error = %err, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&config.server.listen).await {
            Ok(listener) => listener,
            Err(err) => {
                error!(address = %config.server.listen, error = %err, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(signal_shutdown(shutdown.clone()));
        match zeoraid::server::serve(config, listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                error!(error = %err, "zeoraid cannot start");
                ExitCode::FAILURE
            }
        }
    })
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn signal_shutdown(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
    shutdown.cancel();
}
