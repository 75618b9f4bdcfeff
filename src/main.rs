//! The zeoraid command: `zeoraid serve --config FILE` runs the server;
//! `zeoraid status`, `details`, `disable NAME` and `recover NAME` ask a
//! running one.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

use zeoraid::config::Config;
use zeoraid::management::{self, RecoverOptions, Report, Target};

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
    /// Print the RAID state in one line, as a monitoring plugin.
    ///
    /// Exit code 0 optimal, 1 degraded or recovering, 2 failed, 3 unknown
    /// (unreachable, timed out, or an unexpected answer).
    Status {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Print one line per backend: NAME STATE [REASON OR PROGRESS].
    Details {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Take a backend out of service.
    ///
    /// Prints zeoraid's confirmation; exit 1 if zeoraid refuses, 3 if it
    /// cannot be asked.
    Disable {
        /// The backend's name, as in the configuration.
        name: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Bring a degraded backend up to date from an optimal one, online.
    ///
    /// zeoraid compares the backend's newest transaction (every one with
    /// --full-verify) with the source's, copies the transactions it lacks
    /// while clients go on committing, and returns it to service. The
    /// recovery runs inside zeoraid: this prints zeoraid's confirmation and
    /// exits 0; exit 1 if zeoraid refuses, 3 if it cannot be asked.
    ///
    /// With --wait, it then follows the recovery, printing a progress line
    /// whenever the progress changes: exit 0 when the recovery is done, 1
    /// when it failed (with the error), 3 when zeoraid cannot be asked any
    /// more. Interrupting it does not stop the recovery.
    Recover {
        /// The degraded backend's name, as in the configuration.
        name: String,
        #[command(flatten)]
        options: RecoverArgs,
        /// Follow the recovery until it ends.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
}

/// How a recovery runs; what is not given is zeoraid's to decide.
#[derive(Args)]
struct RecoverArgs {
    /// Compare every transaction the backend holds with the source's, not
    /// only its newest one.
    #[arg(long)]
    full_verify: bool,
    /// Copy at most N transactions per second, 0 for no limit (default:
    /// the [recovery] configuration of zeoraid).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(0..))]
    transactions_per_second: Option<i64>,
    /// Copy at most N bytes of record data per second, 0 for no limit
    /// (default: the [recovery] configuration of zeoraid).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(0..))]
    bytes_per_second: Option<i64>,
}

impl From<RecoverArgs> for RecoverOptions {
    fn from(args: RecoverArgs) -> RecoverOptions {
        RecoverOptions {
            full_verify: args.full_verify,
            transactions_per_second: args.transactions_per_second,
            bytes_per_second: args.bytes_per_second,
        }
    }
}

/// Which running zeoraid a management command asks.
#[derive(Args)]
struct TargetArgs {
    /// zeoraid's ZEO address.
    #[arg(long, value_name = "HOST:PORT", default_value = management::DEFAULT_SERVER)]
    server: String,
    /// The storage name zeoraid serves.
    #[arg(long, value_name = "NAME", default_value = "1")]
    storage: String,
    /// Seconds the whole exchange may take (with recover --wait: each poll).
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = management::parse_timeout)]
    timeout: Duration,
}

impl From<TargetArgs> for Target {
    fn from(args: TargetArgs) -> Target {
        Target {
            server: args.server,
            storage: args.storage,
            timeout: args.timeout,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::Status { target } => manage(management::status(&target.into())),
        Command::Details { target } => manage(management::details(&target.into())),
        Command::Disable { name, target } => manage(management::disable(&target.into(), &name)),
        Command::Recover {
            name,
            options,
            wait,
            target,
        } => {
            let (target, options): (Target, RecoverOptions) = (target.into(), options.into());
            if wait {
                manage(management::recover_and_wait(
                    &target,
                    &name,
                    &options,
                    |line| println!("{line}"),
                ))
            } else {
                manage(management::recover(&target, &name, &options))
            }
        }
    }
}

/// Runs one management command and prints its report: plain lines on
/// stdout for the operator or the monitoring system, errors on stderr.
/// (`recover --wait` prints its progress itself, as it comes.)
fn manage(command: impl std::future::Future<Output = Report>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("zeoraid: cannot start the async runtime: {err}");
            return ExitCode::from(management::EXIT_UNKNOWN);
        }
    };
    let report = runtime.block_on(command);
    for line in &report.stdout {
        println!("{line}");
    }
    for line in &report.stderr {
        eprintln!("zeoraid: {line}");
    }
    ExitCode::from(report.exit_code)
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
        let shutdown = CancellationToken::new();
        tokio::spawn(signal_shutdown(shutdown.clone()));
        match zeoraid::server::serve(config, shutdown).await {
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
