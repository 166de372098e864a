//! The `wapipe-sim` command line: parses arguments and hands over to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;

use wapipe_sim::fanout::{self, FanoutConfig};
use wapipe_sim::graph::{self, ErrorRule, GraphConfig};
use wapipe_sim::load::{self, HttpLoadConfig, HttpRequest, LoadConfig};
use wapipe_sim::payloads::{
    Business, DEFAULT_DISPLAY_PHONE_NUMBER, DEFAULT_PHONE_NUMBER_ID, DEFAULT_WABA_ID,
};
use wapipe_sim::replay::{self, ReplayConfig};

/// A fake Meta for wapipe: signed webhooks (load, replay) and a fake Graph API.
#[derive(Parser)]
#[command(name = "wapipe-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send signed webhooks at a target rate for a while, then print a summary.
    Load(LoadArgs),
    /// Serve a no-work HTTP target (reads the body, answers 200): the benchmark baseline.
    Nowork {
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
        /// Serve it on axum, the REST API's stack (a small JSON answer to
        /// any method and path), instead of the receiver's bare hyper.
        #[arg(long)]
        axum: bool,
    },
    /// Send plain requests from a list (`METHOD /path [JSON body]` per line),
    /// round robin, at a target rate for a while: the REST API's load.
    Http(HttpArgs),
    /// Sign and post payload files (a directory gives its *.json files, recursively).
    Replay(ReplayArgs),
    /// Serve a fake Graph API that accepts sends and posts status webhooks.
    Graph(GraphArgs),
    /// Connect one WebSocket client of wapipe's events per API key, listen,
    /// then check each got exactly what the API lists for its key.
    Fanout(FanoutArgs),
}

#[derive(Args)]
struct FanoutArgs {
    /// The API, e.g. http://127.0.0.1:8080 (loopback only).
    #[arg(long)]
    base: String,
    /// A file of API keys, one per line: one client each.
    #[arg(long)]
    keys: PathBuf,
    /// Every client replays from after this sequence number.
    #[arg(long, default_value_t = 0)]
    after: i64,
    /// How long to listen once every client is connected.
    #[arg(long, value_parser = wapipe_sim::parse_duration)]
    duration: Duration,
    /// Then stop once no event came for this long.
    #[arg(long, default_value = "3s", value_parser = wapipe_sim::parse_duration)]
    quiet: Duration,
    /// But wait at most this long for the tail.
    #[arg(long, default_value = "60s", value_parser = wapipe_sim::parse_duration)]
    max_drain: Duration,
    /// Created once every client is connected (start the load then).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Clients connecting at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct Target {
    /// Webhook URL to post to, e.g. http://127.0.0.1:8080/webhook
    #[arg(long, env = "WAPIPE_SIM_WEBHOOK")]
    webhook: String,
    /// App secret the X-Hub-Signature-256 header is computed with.
    #[arg(long, env = "WAPIPE_SIM_APP_SECRET", hide_env_values = true)]
    app_secret: String,
}

#[derive(Args)]
struct LoadArgs {
    #[command(flatten)]
    target: Target,
    /// Requests per second over all connections; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// How long to send, e.g. 60s, 500ms, 2m.
    #[arg(long, value_parser = wapipe_sim::parse_duration)]
    duration: Duration,
    /// Concurrent keep-alive HTTP/1.1 connections.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=10000))]
    concurrency: u16,
    /// Stop after this many requests even if time is left.
    #[arg(long)]
    requests: Option<u64>,
    #[arg(long, default_value = DEFAULT_PHONE_NUMBER_ID)]
    phone_number_id: String,
    #[arg(long, default_value = DEFAULT_WABA_ID)]
    waba_id: String,
    #[arg(long, default_value = DEFAULT_DISPLAY_PHONE_NUMBER)]
    display_phone_number: String,
    /// Distinct customers the messages come from.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    customers: u32,
    /// Messages in every message body (1 = Meta's usual single message;
    /// more = bursts Meta delivers in one POST).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    messages_per_body: u32,
    /// Send only these kinds of body (comma-separated; default: Meta's
    /// whole mix, statuses included).
    #[arg(long, value_enum, value_delimiter = ',')]
    kinds: Vec<wapipe_sim::payloads::PayloadKind>,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = wapipe_sim::parse_duration)]
    timeout: Duration,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct HttpArgs {
    /// Where the listed paths go, e.g. http://127.0.0.1:8080 (loopback only).
    #[arg(long)]
    base: String,
    /// The request list: one `METHOD /path [JSON body]` per line.
    #[arg(long)]
    requests: PathBuf,
    /// `Name: value`, sent with every request; repeatable.
    #[arg(long = "header", short = 'H', value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Requests per second over all connections; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// How long to send, e.g. 60s, 500ms, 2m.
    #[arg(long, value_parser = wapipe_sim::parse_duration)]
    duration: Duration,
    /// Concurrent keep-alive HTTP/1.1 connections.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=10000))]
    concurrency: u16,
    /// Stop after this many requests even if time is left.
    #[arg(long)]
    requests_max: Option<u64>,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = wapipe_sim::parse_duration)]
    timeout: Duration,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("{s:?} is not `Name: value`")),
    }
}

#[derive(Args)]
struct ReplayArgs {
    /// Files or directories of payloads.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    target: Target,
    /// Retries after a failed attempt (5xx, 408, 429 or transport error).
    #[arg(long, default_value_t = 5)]
    retries: u32,
    /// First retry delay; doubles on each retry.
    #[arg(long, default_value = "250ms", value_parser = wapipe_sim::parse_duration)]
    backoff: Duration,
}

#[derive(Args)]
struct GraphArgs {
    #[arg(long, default_value = "127.0.0.1:8091")]
    listen: SocketAddr,
    /// Where status webhooks go (none are sent without it).
    #[arg(long, env = "WAPIPE_SIM_WEBHOOK")]
    webhook: Option<String>,
    /// Signs the status webhooks.
    #[arg(
        long,
        env = "WAPIPE_SIM_APP_SECRET",
        hide_env_values = true,
        default_value = ""
    )]
    app_secret: String,
    /// Accept sends only for this phone number id (others fail with code 100).
    #[arg(long)]
    phone_number_id: Option<String>,
    /// Accept only this bearer token (default: any non-empty one).
    #[arg(long, env = "WAPIPE_SIM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long, default_value = DEFAULT_WABA_ID)]
    waba_id: String,
    #[arg(long, default_value = DEFAULT_DISPLAY_PHONE_NUMBER)]
    display_phone_number: String,
    /// Wait before each status webhook of a send.
    #[arg(long, default_value_t = 50)]
    status_delay_ms: u64,
    /// Post each send's statuses in random order.
    #[arg(long)]
    shuffle: bool,
    /// Post each status webhook twice.
    #[arg(long)]
    duplicate: bool,
    /// Share (0..1) of status webhooks to drop.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    drop_rate: f64,
    /// Error rule CODE[:share=F][:to=PATTERN][:times=N][:http=STATUS][:webhook]; repeatable.
    #[arg(long = "error", value_name = "RULE")]
    errors: Vec<ErrorRule>,
    /// Size in bytes of the file served for any media id (`GET /media/{id}`).
    #[arg(long, default_value_t = 512)]
    media_size: usize,
    /// Expiring-URL mode: media URLs stop working this long after their
    /// lookup (404), as Meta's do (e.g. 5m).
    #[arg(long, value_parser = wapipe_sim::parse_duration)]
    media_url_ttl: Option<Duration>,
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?} is not a share between 0 and 1")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wapipe-sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wapipe-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Load(a) => run_load(a).await,
        Command::Nowork { listen, axum } => {
            let listener = bind(listen).await?;
            println!("nowork listening on http://{}", listener.local_addr()?);
            let server = if axum {
                load::spawn_nowork_axum(listener)
            } else {
                load::spawn_nowork(listener)
            };
            tokio::signal::ctrl_c()
                .await
                .context("waiting for Ctrl-C")?;
            server.abort();
            Ok(ExitCode::SUCCESS)
        }
        Command::Http(a) => run_http(a).await,
        Command::Replay(a) => run_replay(a).await,
        Command::Graph(a) => run_graph(a).await,
        Command::Fanout(a) => run_fanout(a).await,
    }
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

async fn run_load(a: LoadArgs) -> anyhow::Result<ExitCode> {
    let cfg = LoadConfig {
        rate: a.rate,
        duration: a.duration,
        concurrency: usize::from(a.concurrency),
        max_requests: a.requests,
        business: Business {
            waba_id: a.waba_id,
            phone_number_id: a.phone_number_id,
            display_phone_number: a.display_phone_number,
        },
        customers: a.customers as usize,
        messages_per_body: a.messages_per_body,
        kinds: a.kinds,
        request_timeout: a.timeout,
        ..LoadConfig::new(a.target.webhook, a.target.app_secret)
    };
    let report = load::run_load(cfg).await?;
    print_report(&report, a.json)
}

async fn run_http(a: HttpArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&a.requests)
        .with_context(|| format!("cannot read {}", a.requests.display()))?;
    let cfg = HttpLoadConfig {
        base: a.base,
        requests: HttpRequest::parse_list(&text)?,
        headers: a.headers,
        rate: a.rate,
        duration: a.duration,
        concurrency: usize::from(a.concurrency),
        max_requests: a.requests_max,
        request_timeout: a.timeout,
    };
    let report = load::run_http_load(cfg).await?;
    print_report(&report, a.json)
}

/// Prints a run's summary. Nothing accepted means the target is down or
/// refuses us (a wrong secret or key): a benchmark script must not take
/// that run's numbers, so the exit code says so.
fn print_report(report: &load::LoadReport, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{report}");
    }
    Ok(if report.accepted == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn run_fanout(a: FanoutArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&a.keys)
        .with_context(|| format!("cannot read {}", a.keys.display()))?;
    let cfg = FanoutConfig {
        base: a.base,
        keys: text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        after: a.after,
        listen: a.duration,
        quiet: a.quiet,
        max_drain: a.max_drain,
        ready_file: a.ready_file,
        connect_concurrency: a.connect_concurrency,
    };
    let report = fanout::run_fanout(cfg).await?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    // The numbers of a run that lost or doubled events must not be taken.
    Ok(if report.complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn run_replay(a: ReplayArgs) -> anyhow::Result<ExitCode> {
    let cfg = ReplayConfig {
        retries: a.retries,
        backoff: a.backoff,
        ..ReplayConfig::new(a.target.webhook, a.target.app_secret)
    };
    let report = replay::replay_paths_with(&a.paths, &cfg, |r| println!("{r}")).await?;
    println!("{report}");
    Ok(if report.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn run_graph(a: GraphArgs) -> anyhow::Result<ExitCode> {
    let listener = bind(a.listen).await?;
    let cfg = GraphConfig {
        webhook: a.webhook,
        app_secret: a.app_secret,
        business: Business {
            waba_id: a.waba_id,
            phone_number_id: a
                .phone_number_id
                .clone()
                .unwrap_or_else(|| DEFAULT_PHONE_NUMBER_ID.to_owned()),
            display_phone_number: a.display_phone_number,
        },
        phone_number_id: a.phone_number_id,
        token: a.token,
        status_delay: Duration::from_millis(a.status_delay_ms),
        shuffle: a.shuffle,
        duplicate: a.duplicate,
        drop_rate: a.drop_rate,
        errors: a.errors,
        media_size: a.media_size,
        media_url_ttl: a.media_url_ttl,
        ..GraphConfig::default()
    };
    if cfg.webhook.is_some() && cfg.app_secret.is_empty() {
        anyhow::bail!("--webhook needs --app-secret to sign the status webhooks");
    }
    let handle = graph::spawn_graph(listener, cfg).await?;
    println!("graph API listening on {}", handle.base_url());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    handle.shutdown();
    Ok(ExitCode::SUCCESS)
}
