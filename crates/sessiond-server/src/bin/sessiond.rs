//! The `sessiond` command.

use clap::{Parser, Subcommand};
use sessiond_server::Server;
use sessiond_server::config::ServeArgs;
use tokio_util::sync::CancellationToken;

/// sessiond: a session store for web applications on many servers.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// List the locks held and waited for (the lock inspector).
    Locks {
        /// Server address.
        #[arg(long, default_value = "127.0.0.1:6380", env = "SESSIOND_ADDR")]
        addr: String,
        /// Only this session.
        #[arg(long)]
        session: Option<String>,
        /// Password.
        #[arg(long, env = "SESSIOND_REQUIREPASS", hide_env_values = true)]
        password: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SESSIOND_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Some(Cmd::Locks {
            addr,
            session,
            password,
        }) => runtime.block_on(sessiond_server::inspect::print_locks(
            &addr,
            session.as_deref(),
            password,
        )),
        Some(Cmd::Serve(args)) => runtime.block_on(serve(args)),
        None => runtime.block_on(serve(cli.serve)),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    let server = Server::bind(config.clone()).await?;
    let addr = server.local_addr()?;
    // One machine-readable line on stdout for scripts and tests.
    println!(
        "sessiond ready: resp={addr} metrics={}",
        server
            .metrics_addr()
            .map_or("off".to_owned(), |a| a.to_string())
    );
    tracing::info!(%addr, durability = ?config.durability, storage = ?config.storage, data_dir = %config.data_dir.display(), "listening");
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        signal.cancel();
    });
    server.run(shutdown).await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
