//! The command line. Each sub-command is a thin shell over a library module; this file
//! parses arguments, sets up logging and maps outcomes to exit codes.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config;

const DEFAULT_URL: &str = "http://127.0.0.1:8656";

/// Threads for blocking work (state-file writes, name lookups).
const BLOCKING_THREADS: usize = 16;

/// A local OAuth2 token broker: one refresh per rotation, tokens served on localhost.
#[derive(Parser)]
#[command(name = "token-broker", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format (default: json when stderr is not a terminal, text otherwise).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker daemon.
    Run {
        /// Config file (TOML).
        #[arg(long, env = "TOKEN_BROKER_CONFIG")]
        config: PathBuf,
    },
    /// Try it now: the broker plus an in-process dev IdP and a `demo` credential.
    #[cfg(feature = "dev-idp")]
    Dev {
        /// Where the broker listens.
        #[arg(long, default_value = config::DEFAULT_LISTEN)]
        listen: String,
        /// Where its dev IdP listens.
        #[arg(long, default_value = crate::dev_idp::DEFAULT_LISTEN)]
        idp_listen: String,
    },
    /// A strict OAuth2 token server for development and tests only. Never for production.
    #[cfg(feature = "dev-idp")]
    DevIdp(Box<crate::dev_idp::DevIdpArgs>),
    /// Print a credential's bare access token (exit 0), or a message on stderr
    /// (exit 1: the broker answered an error; 3: the broker cannot be reached).
    Get {
        /// The credential (default: the broker's default credential).
        #[arg(value_parser = crate::client::name_arg)]
        name: Option<String>,
        /// The broker's URL: http(s)://HOST:PORT or unix:/path/to.sock.
        #[arg(long, env = "TOKEN_BROKER_URL", default_value = DEFAULT_URL, value_parser = crate::client::url_arg)]
        url: String,
        /// A file holding the key to send in Token-Broker-Key (else TOKEN_BROKER_KEY).
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Demand at least this much lifetime left (e.g. 5m).
        #[arg(long, value_parser = duration_arg)]
        min_ttl: Option<String>,
        /// raw (the bare token), json, or exec-credential (a kubectl credential plugin's
        /// answer; reads KUBERNETES_EXEC_INFO for the API version asked).
        #[arg(long, value_enum, default_value = "raw")]
        format: crate::client::GetFormat,
    },
    /// A git credential helper: `get` answers the token of the host's credential
    /// (`[emulate.git]`), `erase` reports it rejected, `store` does nothing.
    GitCredential {
        /// The operation git asks for.
        #[arg(value_enum)]
        operation: crate::helpers::GitOperation,
        /// The broker's URL.
        #[arg(long, env = "TOKEN_BROKER_URL", default_value = DEFAULT_URL)]
        url: String,
    },
    /// Show every credential's state, expiry, last refresh and last error.
    Status {
        /// The broker's URL: http(s)://HOST:PORT or unix:/path/to.sock.
        #[arg(long, env = "TOKEN_BROKER_URL", default_value = DEFAULT_URL, value_parser = crate::client::url_arg)]
        url: String,
        /// A file holding the key to send in Token-Broker-Key (else TOKEN_BROKER_KEY).
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Print the raw JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Health probe for containers without a shell or curl: exit 0 when the broker
    /// answers 200 on PATH (default /readyz), 1 otherwise.
    Probe {
        /// The broker's URL.
        #[arg(long, env = "TOKEN_BROKER_URL", default_value = DEFAULT_URL, value_parser = url_arg)]
        url: String,
        /// The path to probe: /readyz (readiness) or /healthz (liveness).
        #[arg(long, default_value = "/readyz")]
        path: String,
    },
    /// Log in as a person to give a `refresh_token` credential its first refresh token:
    /// a browser login (PKCE on a loopback redirect) or, with --device, the device flow.
    /// The new chain goes to the running broker, or into its store when none runs.
    /// Exit 0 logged in; 1 refused by the broker or store; 2 usage or config; 3 broker
    /// unreachable; 4 denied; 5 timed out or code expired; 6 IdP error; 7 wrong state.
    Login(crate::login::Args),
    /// Validate a config file: exit 0, or print every problem and exit 1.
    CheckConfig {
        /// Config file (TOML).
        #[arg(long, env = "TOKEN_BROKER_CONFIG")]
        config: PathBuf,
        /// Also read every secret source (files and variables must exist here).
        #[arg(long)]
        check_secrets: bool,
    },
}

// Usage errors are found here, before any request, so they exit 2 (clap's code) rather
// than 1 after the broker refused them.

/// A duration the broker will read the same way; passed on as written.
fn duration_arg(text: &str) -> Result<String, String> {
    crate::duration::parse(text).map(|_| text.trim().to_owned())
}

/// The broker's base URL: http or https (the probe speaks TCP only).
fn url_arg(text: &str) -> Result<String, String> {
    match crate::client::Target::parse(text) {
        Ok(crate::client::Target::Http(_)) => Ok(text.to_owned()),
        _ => Err(format!(
            "`{text}` is not an http:// or https:// URL such as {DEFAULT_URL}"
        )),
    }
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // The blocking pool runs state-file writes (each ends in an fsync). The default
        // cap of 512 threads would let a start with thousands of credentials grow
        // hundreds of threads, each with its own stack and allocator arena; a few keep
        // the disk as busy as it can be.
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("token-broker: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(dispatch(cli))
}

async fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Get {
            name,
            url,
            key_file,
            min_ttl,
            format,
        } => match crate::client::read_key(key_file.as_deref()) {
            Ok(key) => {
                let (name, ttl) = (name.as_deref(), min_ttl.as_deref());
                crate::client::get(&url, key.as_ref(), name, ttl, format).await
            }
            Err(why) => crate::client::fail(crate::client::EXIT_BROKER_ERROR, &why),
        },
        Command::GitCredential { operation, url } => {
            crate::helpers::git_credential(&url, operation).await
        }
        Command::Status {
            url,
            key_file,
            json,
        } => match crate::client::read_key(key_file.as_deref()) {
            Ok(key) => crate::client::status(&url, key.as_ref(), json).await,
            Err(why) => crate::client::fail(crate::client::EXIT_BROKER_ERROR, &why),
        },
        Command::Probe { url, path } => crate::client::probe(&url, &path).await,
        Command::Login(args) => crate::login::run(args).await,
        Command::CheckConfig {
            config,
            check_secrets,
        } => check_config(&config, check_secrets),
        Command::Run { config } => {
            init_logging(cli.log_format);
            harden();
            outcome(run(&config).await)
        }
        #[cfg(feature = "dev-idp")]
        Command::Dev { listen, idp_listen } => {
            init_logging(cli.log_format);
            harden();
            outcome(crate::dev::run(&listen, &idp_listen).await)
        }
        #[cfg(feature = "dev-idp")]
        Command::DevIdp(args) => {
            init_logging(cli.log_format);
            outcome(crate::dev_idp::run(*args).await)
        }
    }
}

async fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let invalid = |p| anyhow::anyhow!("invalid config {}:\n{p}", path.display());
    let source = config::Source::read(path).map_err(invalid)?;
    let early = crate::daemon::bind_early(&source).await;
    let config = source.config().map_err(invalid)?;
    let listeners = crate::daemon::bind_config(&config, early).await?;
    crate::daemon::run(
        config,
        listeners,
        Some(path.to_owned()),
        crate::signal::terminated(),
    )
    .await
}

/// Process limits for the daemons, before any secret is read. A failure is logged, not
/// fatal: the broker works without them, and the operator can see why.
fn harden() {
    if let Err(e) = crate::limits::no_core_dumps() {
        tracing::warn!(error = %e, "cannot turn core dumps off");
    }
    if let Err(e) = crate::limits::raise_nofile() {
        tracing::warn!(error = %e, "cannot raise the file descriptor limit to its maximum");
    }
}

fn outcome(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("token-broker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(path: &std::path::Path, check_secrets: bool) -> ExitCode {
    let problems = match config::load(path) {
        // What `run` refuses on this machine before it serves: the same checks.
        Ok(config) => crate::preflight::check(&config, check_secrets),
        Err(problems) => problems.0,
    };
    if problems.is_empty() {
        println!("{}: ok", path.display());
        return ExitCode::SUCCESS;
    }
    eprintln!("{}: {} problem(s)", path.display(), problems.len());
    for problem in problems {
        eprintln!("  {problem}");
    }
    ExitCode::FAILURE
}

fn init_logging(format: Option<LogFormat>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let format = format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Text
    } else {
        LogFormat::Json
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}
