//! `synq`: the command-line entry point. `synq serve` runs everything in one process.

#![forbid(unsafe_code)]
// Not model code: the command line, the servers and the terminal chat's I/O (clippy.toml's
// determinism rules are for model code; the chat's model is synq-chat's).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ai_args::AiArgs;
use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use synq_ai::gateway::{self, Capabilities, GatewayConfig, GatewayState};
use synq_reflector::store::ObjectStoreBlobStore;
use synq_reflector::{
    AiCapabilityIssuer, Durability, FileLimits, HttpLimits, Reflector, ReflectorConfig,
};
use tracing_subscriber::EnvFilter;

mod ai;
mod ai_args;
mod bot;
mod chat;
mod cluster_args;
mod signals;
mod web;

#[derive(Parser)]
#[command(
    name = "synq",
    version,
    about = "Replicated computation and a multi-user AI chat"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the reflector (WebSocket at /reflector/<session>), the file store (/files/…),
    /// the AI gateway (/ai/v1/chat/completions, /ai), /healthz and /metrics.
    Serve(Box<ServeArgs>),
    /// Join a chat room in the terminal, by its link (http://HOST:PORT/?q=ROOM#pw=PASSWORD);
    /// or post one message with --say (and print the AI's answer with --wait-answer).
    Chat(chat::ChatArgs),
    /// Stay in chat rooms for good and relay their AI requests (a headless participant
    /// for a server or a container; see docs/bot.md).
    Bot(Box<bot::BotArgs>),
}

#[derive(Clone, Copy, ValueEnum)]
enum DurabilityArg {
    /// Journal every message (one write per batch) before broadcasting it: survives a
    /// crash or kill -9 of the process.
    Write,
    /// Also fdatasync each batch before broadcasting: survives power loss.
    Fsync,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "SYNQ_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where session journals and stored files are kept [default: <user data dir>/synq-data, or ./synq-data].
    #[arg(long, env = "SYNQ_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where uploaded files and snapshots live: file:///abs/dir, s3://bucket/prefix,
    /// gs://bucket/prefix or az://container/prefix (credentials and region from the usual
    /// AWS_*, GOOGLE_*, AZURE_* environment variables). Every node of a cluster must name
    /// the same store [default: the `files` directory under --data-dir].
    #[arg(long, env = "SYNQ_FILES_STORE", value_name = "URL")]
    files_store: Option<String>,
    /// With --files-store: memory for finished uploads being sent to the store at once, in
    /// MiB; more uploads wait their turn (one larger upload is sent alone).
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    files_store_upload_mb: u64,
    /// How broadcast messages are made durable.
    #[arg(long, env = "SYNQ_DURABILITY", value_enum, default_value = "write")]
    durability: DurabilityArg,
    /// Retained messages at which clients are asked for a snapshot.
    #[arg(long, default_value_t = 60_000)]
    snapshot_request_at: usize,
    /// Retained messages past which a session refuses messages until it gets a snapshot.
    #[arg(long, default_value_t = 100_000)]
    max_messages: usize,
    /// Largest WebSocket message accepted from a client, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    max_frame_bytes: usize,
    /// Messages per second a client may send (0 = unlimited).
    #[arg(long, default_value_t = 100)]
    client_rate_limit: u32,
    /// Frames a client may fall behind before it is disconnected.
    #[arg(long, default_value_t = 4096)]
    client_backlog: usize,
    /// Largest file accepted by the file store, in bytes.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    max_file_bytes: usize,
    /// Participants (connections that joined with a user) per session.
    #[arg(long, default_value_t = 1000)]
    max_participants_per_session: usize,
    /// Connections that joined without a user (observers) per session.
    #[arg(long, default_value_t = 100)]
    max_observers_per_session: usize,
    /// A WebSocket client that does not take a write (or the next piece of its SYNC) for
    /// this many seconds is closed with 4001.
    #[arg(long, default_value_t = 10)]
    client_write_timeout_secs: u64,
    /// Large SYNCs (late joins of sessions holding over 1 MB) written at once per session;
    /// further joiners wait for a turn (0 = unlimited).
    #[arg(long, default_value_t = 32)]
    max_syncs_per_session: usize,
    /// Large SYNCs written at once to one address (IPv6: one /64; 0 = unlimited).
    #[arg(long, default_value_t = 4)]
    max_syncs_per_address: usize,
    /// Sessions held in memory at once (0 = unlimited). An idle session with two
    /// participants costs about 40 KB.
    #[arg(long, default_value_t = 1000)]
    max_sessions: usize,
    /// Sessions in memory started from one address (IPv6: one /64; 0 = unlimited). Behind
    /// a reverse proxy every session comes from the proxy: raise this or set 0.
    #[arg(long, default_value_t = 100)]
    max_sessions_per_address: usize,
    /// Bytes of messages one session keeps for late joiners before it refuses messages
    /// until it gets a snapshot.
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    max_session_bytes: usize,
    /// Bytes of messages all sessions together keep.
    #[arg(long, default_value_t = 1024 * 1024 * 1024)]
    max_stored_bytes: usize,
    /// Shortest tick period a session may ask for, in ms (longest: 60 s).
    #[arg(long, default_value_t = 20)]
    min_tick_ms: u64,
    /// A session accepts at most one snapshot per this many ms.
    #[arg(long, default_value_t = 2000)]
    snapshot_min_interval_ms: u64,
    /// `debounce` message ids remembered per session.
    #[arg(long, default_value_t = 1000)]
    max_debounce_ids: usize,
    /// Delete the journal of a session nobody joined for this many days (0: keep forever).
    #[arg(long, default_value_t = 30)]
    session_retention_days: u64,
    /// On SIGTERM or SIGINT: seconds that the sessions get to journal what they received,
    /// give their leases up and ask their clients to reconnect, before the process exits.
    #[arg(long, default_value_t = 10)]
    drain_timeout_secs: u64,
    /// Web origin (e.g. https://app.example.com) allowed to open WebSockets and upload
    /// files, besides this server's own and localhost; repeatable; `*` allows any.
    /// Requests without an Origin header (native clients) are always allowed.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
    /// Host name under which this server is reached, besides IP addresses and localhost
    /// (repeatable; "*" allows any). Behind a domain name (e.g. a reverse proxy for
    /// chat.example.org) add it: WebSocket upgrades, uploads and AI requests naming any
    /// other host are refused, which defeats DNS rebinding. Also accepted under its
    /// older name, --ai-allowed-host.
    #[arg(long = "allowed-host", alias = "ai-allowed-host", value_name = "NAME")]
    allowed_hosts: Vec<String>,
    /// Bytes the file store may hold in total (0 = unlimited).
    #[arg(long, default_value_t = 10 << 30)]
    max_store_bytes: u64,
    /// Bytes one address (IPv6: one /64) may upload per --upload-quota-window-secs (0 = unlimited).
    #[arg(long, default_value_t = 512 << 20)]
    upload_quota_bytes: u64,
    #[arg(long, default_value_t = 3600)]
    upload_quota_window_secs: u64,
    /// An upload that sends nothing for this many seconds is cut off.
    #[arg(long, default_value_t = 30)]
    upload_body_timeout_secs: u64,
    /// Seconds allowed for a request's headers; also how long an idle kept-alive HTTP
    /// connection stays open.
    #[arg(long, default_value_t = 10)]
    header_timeout_secs: u64,
    /// A connection whose response (or WebSocket frame) makes no progress for this many
    /// seconds is closed (a client that stopped reading).
    #[arg(long, default_value_t = 30)]
    http_write_timeout_secs: u64,
    /// Open connections (HTTP and WebSocket) in total; 0 = unlimited
    /// [default: half the open-files limit].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Open connections per client address (IPv6: per /64); 0 = unlimited. Behind a
    /// reverse proxy every connection comes from the proxy: raise this or set 0.
    #[arg(long, default_value_t = 256)]
    max_connections_per_address: usize,
    #[command(flatten)]
    ai: AiArgs,
    #[command(flatten)]
    cluster: cluster_args::ClusterArgs,
}

fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .map(|d| d.join("synq-data"))
        .unwrap_or_else(|| PathBuf::from("./synq-data"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let default_filter = match &cli.command {
        Command::Serve(_) => "info",
        // The chat's own messages say what matters; logs would only clutter its output.
        Command::Chat(_) => "warn",
        // What it does (joined, elected, answering, reconnecting) is what its operator reads.
        Command::Bot(_) => "info",
    };
    // Logs would write over the chat's screen.
    let screen = matches!(&cli.command, Command::Chat(args) if chat::is_interactive(args));
    if !screen {
        tracing_subscriber::fmt()
            .with_env_filter(
                EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| EnvFilter::new(default_filter)),
            )
            .with_writer(std::io::stderr)
            // Colours only for a person: journald, files and pipes get plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Chat(args) => {
            if let Err(e) = chat::run(args).await {
                // One clear line for people and scripts, rather than a debug dump.
                eprintln!("synq chat: {e:#}");
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Bot(args) => {
            if let Err(e) = bot::run(*args).await {
                // One line for the journal, as `synq chat` does.
                eprintln!("synq bot: {e:#}");
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let open_files = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => {
            tracing::info!(open_files = n, "open-files limit raised to the hard limit");
            n
        }
        Err(e) => {
            tracing::warn!(
                "cannot raise the open-files limit ({e}); each client and session needs a file descriptor"
            );
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    };
    // Half: a connection may hold a second descriptor (a stored file it streams), and
    // busy sessions hold their journal's; over the cap new connections are closed at once
    // instead of accept() failing for everyone.
    let max_connections = args.max_connections.unwrap_or_else(|| {
        usize::try_from(open_files / 2)
            .unwrap_or(usize::MAX)
            .max(64)
    });
    // Checked before anything starts, so that a wrong AI flag fails fast.
    let ai_upstream = args.ai.backend.openai_config()?;
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    let mut config = ReflectorConfig::new(&data_dir);
    config.durability = match args.durability {
        DurabilityArg::Write => Durability::Write,
        DurabilityArg::Fsync => Durability::Fsync,
    };
    config.snapshot_request_at = args.snapshot_request_at.max(1);
    config.max_messages = args.max_messages.max(config.snapshot_request_at);
    config.max_frame_bytes = args.max_frame_bytes;
    config.client_rate_limit = args.client_rate_limit;
    config.client_burst = args.client_rate_limit.saturating_mul(2);
    config.client_backlog = args.client_backlog.max(16);
    config.max_file_bytes = args.max_file_bytes;
    config.max_clients_per_session = args.max_participants_per_session;
    config.max_observers_per_session = args.max_observers_per_session;
    config.max_syncs_per_session = args.max_syncs_per_session;
    config.write_timeout = Duration::from_secs(args.client_write_timeout_secs.max(1));
    config.max_syncs_per_address = args.max_syncs_per_address;
    config.max_sessions = args.max_sessions;
    config.max_sessions_per_address = args.max_sessions_per_address;
    config.max_session_bytes = args.max_session_bytes;
    config.max_stored_bytes = args.max_stored_bytes;
    config.min_tick = std::time::Duration::from_millis(args.min_tick_ms.clamp(1, 60_000));
    config.snapshot_min_interval = std::time::Duration::from_millis(args.snapshot_min_interval_ms);
    config.max_debounce_ids = args.max_debounce_ids;
    config.session_retention = (args.session_retention_days > 0)
        .then(|| std::time::Duration::from_secs(args.session_retention_days * 24 * 3600));
    config.files = FileLimits {
        allowed_origins: args.allowed_origins.clone(),
        allowed_hosts: args.allowed_hosts.clone(),
        max_store_bytes: args.max_store_bytes,
        upload_quota_bytes: args.upload_quota_bytes,
        upload_quota_window: Duration::from_secs(args.upload_quota_window_secs.max(1)),
        body_timeout: Duration::from_secs(args.upload_body_timeout_secs.max(1)),
    };
    let http_limits = HttpLimits {
        header_timeout: Duration::from_secs(args.header_timeout_secs.max(1)),
        write_timeout: Duration::from_secs(args.http_write_timeout_secs.max(1)),
        max_connections,
        max_connections_per_address: args.max_connections_per_address,
    };
    tracing::info!(
        max_connections,
        max_connections_per_address = args.max_connections_per_address,
        "connection caps"
    );
    // The AI capabilities the reflector hands to chat participants and the gateway checks.
    // A cluster's nodes accept each other's capabilities: a participant's AI requests go
    // through its own node, the capability came from the session's owner.
    let capabilities = Arc::new(match (&args.cluster.cluster, &args.cluster.cluster_token) {
        (Some(_), Some(token)) => Capabilities::shared(token.as_bytes(), args.ai.capability_ttl()),
        _ => Capabilities::new(args.ai.capability_ttl()),
    });
    if !args.ai.no_ai {
        let caps = Arc::clone(&capabilities);
        config.ai_capability = Some(AiCapabilityIssuer(Arc::new(move |session: &str| {
            caps.issue_frame_args(session)
        })));
    }
    let joined = args.cluster.join(config.session_retention).await?;
    if let Some(j) = &joined {
        config.cluster = Some(synq_reflector::cluster::ClusterHandle(j.cluster.clone()));
    }
    let reflector = match &args.files_store {
        None => {
            tracing::info!(dir = %data_dir.join("files").display(), "files: in a local directory");
            Reflector::new(config)
        }
        Some(url) => {
            // Uploads are spooled under the data dir before they go to the store.
            let spool = data_dir.join("files").join(".tmp");
            // Opening lists the store (its bytes count for --max-store-bytes): with wrong
            // credentials or an unreachable endpoint this can retry for a while.
            tracing::info!(store = %url, "files: opening the object store");
            let store = ObjectStoreBlobStore::from_url(url, spool)
                .await
                .with_context(|| format!("cannot open the file store --files-store {url}"))?
                .with_upload_memory(args.files_store_upload_mb.saturating_mul(1024 * 1024));
            tracing::info!(store = store.name(), "files: in an object store");
            Reflector::with_store(config, Arc::new(store))
        }
    }
    .context("cannot start the reflector")?;
    reflector.spawn_housekeeping();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(data_dir = %data_dir.display(), "synq serving on http://{addr}/ (reflector: ws://{addr}/reflector/<session>, files: http://{addr}/files/)");
    // One machine-readable line on stdout, for scripts and tests that start on port 0.
    println!("synq: listening on http://{addr}");
    std::io::stdout().flush()?;
    let banner = format!(
        "synq {version}\n\n\
         reflector (Croquet protocol v1): ws://{addr}/reflector/<sessionId>\n\
         file store:                      http://{addr}/files/\n\
         Croquet/Multisynq apps:          Session.join({{ box: \"http://{addr}/\", apiKey: \"none\", ... }})\n\
         AI (OpenAI-compatible):          http://{addr}/ai/v1/chat/completions\n\
         health / metrics:                http://{addr}/healthz  http://{addr}/metrics\n",
        version = env!("CARGO_PKG_VERSION")
    );
    let slot = ai::start(&args.ai.backend, args.ai.no_ai, ai_upstream)?;
    // One host allowlist for the whole server: the gateway's is the reflector's.
    let gateway_config = GatewayConfig {
        allowed_hosts: args.allowed_hosts.clone(),
        ..args.ai.gateway_config()
    };
    let ai = GatewayState::with_capabilities(
        gateway_config,
        slot,
        capabilities,
        Arc::new(reflector.session_liveness()),
    );
    let router = axum::Router::new()
        .route("/about", axum::routing::get(move || async move { banner }))
        .merge(web::router())
        .merge(reflector.router())
        .merge(gateway::router(ai));
    if let Some(j) = joined {
        let addr = j.listener.local_addr()?;
        // A log line, not stdout: scripts read only the first stdout line and may close it.
        tracing::info!("cluster listener on http://{addr}/ (connections other nodes forward)");
        // Every connection here comes from another node: no per-address cap.
        let limits = HttpLimits {
            max_connections_per_address: 0,
            ..http_limits.clone()
        };
        let cluster_router = reflector.cluster_router();
        tokio::spawn(async move {
            if let Err(e) = synq_reflector::serve_with(j.listener, cluster_router, limits).await {
                tracing::error!(error = %e, "the cluster listener failed");
            }
        });
    }
    let stop = signals::stop_signals()?;
    tokio::select! {
        served = synq_reflector::serve_with(listener, router, http_limits) => served?,
        signal = stop => {
            // Sessions are handed over, not dropped: in a cluster another node takes them
            // at once (their leases are given up), and clients reconnect without waiting
            // for a lease to lapse.
            tracing::info!(signal, "stopping");
            let within = Duration::from_secs(args.drain_timeout_secs);
            match reflector.drain(within).await {
                0 => tracing::info!("stopped"),
                left => tracing::warn!(left, "stopped with sessions still running after --drain-timeout-secs"),
            }
        }
    }
    Ok(())
}
