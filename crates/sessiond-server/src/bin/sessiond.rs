//! The `sessiond` command.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use sessiond_server::config::{ServeArgs, show_defaults};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// sessiond: a session store for web applications on many servers.
#[derive(Parser)]
#[command(name = "sessiond", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (the default).
    Serve(Box<ServeArgs>),
    /// Check the settings (flags, environment, --config file) without
    /// starting: print them as resolved, or say what is wrong (exit 1).
    CheckConfig(Box<ServeArgs>),
    /// Copy the data of a running server into a file, without stopping it:
    /// a consistent snapshot holding every write acknowledged before it.
    Backup {
        /// The file to write (replaced whole, or left as it was).
        #[arg(long)]
        to: std::path::PathBuf,
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Write a new data directory from a backup file (then start the server
    /// on it).
    Restore {
        /// The backup file.
        #[arg(long)]
        from: std::path::PathBuf,
        /// The data directory to create (its data file must not exist).
        #[arg(long)]
        data_dir: std::path::PathBuf,
    },
    /// Print the hash of the password read from standard input (one
    /// line) as a `[[user]]` table's `password` takes it: `#<sha256 hex>`.
    HashPassword,
    /// Print the man page (roff) on stdout.
    Man,
    /// Print shell completions on stdout.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// List the locks held and waited for (the lock inspector).
    Locks {
        /// Only this session.
        #[arg(long)]
        session: Option<String>,
        #[command(flatten)]
        conn: ClientArgs,
    },
}

/// How `backup` and `locks` reach the server.
#[derive(clap::Args)]
struct ClientArgs {
    /// Server address (the TLS port with --cacert).
    #[arg(long, default_value = "127.0.0.1:6380", env = "SESSIOND_ADDR")]
    addr: String,
    /// User (with --password; `default` when not given).
    #[arg(long, env = "SESSIOND_USER")]
    user: Option<String>,
    /// Password.
    #[arg(long, env = "SESSIOND_REQUIREPASS", hide_env_values = true)]
    password: Option<String>,
    /// Connect over TLS, checking the server against this CA file (PEM).
    #[arg(long, env = "SESSIOND_CACERT")]
    cacert: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for servers that require one.
    #[arg(long, requires = "cacert")]
    cert: Option<std::path::PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<std::path::PathBuf>,
}

impl ClientArgs {
    fn options(&self) -> sessiond_client::ConnectOptions {
        sessiond_client::ConnectOptions {
            user: self.user.clone(),
            password: self.password.clone(),
            tls: self.cacert.as_ref().map(|ca| sessiond_client::TlsOptions {
                cert_file: self.cert.clone(),
                key_file: self.key.clone(),
                ..sessiond_client::TlsOptions::with_ca(ca)
            }),
            ..Default::default()
        }
    }
}

fn main() -> anyhow::Result<()> {
    // The serve flags' defaults are applied by `ServeArgs::resolve` and
    // shown in `--help` by `show_defaults`, both from `config::defaults`.
    let matches = show_defaults(Cli::command())
        .mut_subcommand("serve", show_defaults)
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match &cli.command {
        Some(Cmd::Man) => {
            clap_mangen::Man::new(
                show_defaults(Cli::command()).mut_subcommand("serve", show_defaults),
            )
            .render(&mut std::io::stdout())?;
            return Ok(());
        }
        Some(Cmd::HashPassword) => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            let pass = line.strip_suffix('\n').unwrap_or(&line);
            let pass = pass.strip_suffix('\r').unwrap_or(pass);
            anyhow::ensure!(!pass.is_empty(), "no password on standard input");
            println!("{}", sessiond_server::users::hash_password(pass));
            return Ok(());
        }
        Some(Cmd::Completions { shell }) => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "sessiond",
                &mut std::io::stdout(),
            );
            return Ok(());
        }
        _ => {}
    }
    // The filter is behind a reload handle: `serve` sets it from the
    // resolved settings (`--log-level`, `SESSIOND_LOG`, the file's
    // `log_level`), and again on SIGHUP.
    let (filter, log_filter) = tracing_subscriber::reload::Layer::new(
        tracing_subscriber::EnvFilter::try_from_env("SESSIOND_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    );
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
    let set_log: sessiond_server::reload::SetLogFilter = Box::new(move |directives: &str| {
        let filter = tracing_subscriber::EnvFilter::builder()
            .parse(directives)
            .map_err(|e| e.to_string())?;
        log_filter.reload(filter).map_err(|e| e.to_string())
    });
    // The settings a server will run with, for what must be decided before
    // the runtime starts (a bad setting is reported by `serve` itself).
    let serving = match &cli.command {
        Some(Cmd::Serve(args)) => args.clone().merge(cli.serve.clone()).resolve().ok(),
        None => cli.serve.clone().resolve().ok(),
        Some(_) => None,
    };
    // Under a memory limit, before any thread of the runtime starts.
    if serving.as_ref().is_some_and(|c| c.max_memory > 0) {
        sessiond_server::process::limit_malloc_arenas();
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = serving.as_ref().map(|c| c.threads).filter(|&n| n > 0) {
        runtime.worker_threads(threads);
    }
    let runtime = runtime.enable_all().build()?;
    match cli.command {
        Some(Cmd::Locks { session, conn }) => runtime.block_on(
            sessiond_server::inspect::print_locks(&conn.addr, session.as_deref(), conn.options()),
        ),
        Some(Cmd::Man | Cmd::Completions { .. } | Cmd::HashPassword) => Ok(()),
        Some(Cmd::Backup { to, conn }) => {
            let addr = &conn.addr;
            let n = runtime.block_on(sessiond_server::backup::backup(addr, conn.options(), &to))?;
            eprintln!("backed up {n} sessions from {addr} to {}", to.display());
            Ok(())
        }
        Some(Cmd::Restore { from, data_dir }) => {
            let n = sessiond_server::backup::restore(&from, &data_dir)?;
            eprintln!("restored {n} sessions into {}", data_dir.display());
            Ok(())
        }
        // `sessiond --port 7000 serve --durability always`: both sets of
        // flags count, the subcommand's first.
        Some(Cmd::Serve(args)) => runtime.block_on(serve(args.merge(cli.serve), set_log)),
        Some(Cmd::CheckConfig(args)) => {
            let config = args.merge(cli.serve).resolve()?;
            if let Some(tls) = &config.tls {
                // The certificate, key and CA files read as the server would.
                sessiond_server::tls::Tls::new(tls.clone())?;
            }
            print!("{}", config.describe());
            Ok(())
        }
        None => runtime.block_on(serve(cli.serve, set_log)),
    }
}

async fn serve(
    args: ServeArgs,
    set_log: sessiond_server::reload::SetLogFilter,
) -> anyhow::Result<()> {
    sessiond_server::server::serve_reloadable(args, Some(set_log)).await
}
