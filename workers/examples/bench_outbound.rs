//! Outbound throughput for `make bench`: N queued messages (one per
//! recipient, so only the per-number limit applies, set high) carried by
//! the outbound worker through the runtime and the embedded broker to the
//! simulator's Graph API. Prints one JSON line:
//! `{"sends_per_sec":…, "sent":…, "graph_calls":…, "exactly_once":…}`.
//!
//! ```text
//! cargo run --release -p wapipe-workers --example bench_outbound -- \
//!     --db postgres://postgres@127.0.0.1:5432/wapipe_bench --messages 20000 [--lanes 32] [--batch 32]
//! ```
//!
//! A paced burst (`make bench-burst`): `--max-mps 80` limits the number as
//! a config would, the production retry policy applies (8 attempts,
//! backoff from 1 s: a send over the limit must be deferred to its slot,
//! never spend attempts), and `--amqp URL` runs it on RabbitMQ's delay
//! queues instead of the embedded broker. The JSON line then also carries
//! the sends of each second at the fake Graph (`per_second`), the busiest
//! second and the dead-lettered count.
//!
//! The database must exist (it is migrated); a SQLite URL works too, and
//! without `--db` a temporary SQLite file is used. Queueing is not timed:
//! the clock runs from the first consumed job to the last accepted send.

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use wapipe_domain::outbox::content::Template;
use wapipe_domain::outbox::{NewOutbound, OutboundContent};
use wapipe_migrations::{Migrator, MigratorTrait};
use wapipe_shared::broker::{AmqpBroker, Broker, BrokerSettings, EmbeddedBroker};
use wapipe_shared::crypto::SecretKey;
use wapipe_shared::entities::messages::{self, MessageStatus, Origin};
use wapipe_shared::retry::RetryPolicy;
use wapipe_shared::tenants::{self, NewConfig};
use wapipe_sim::{GraphConfig, spawn_graph};
use wapipe_workers::Deps;
use wapipe_workers::outbound::{self, LimitSettings, OutboundSettings, OutboundWorker};
use wapipe_workers::runtime::{self, Worker, typed};

struct Args {
    db: Option<String>,
    messages: usize,
    lanes: u16,
    batch: usize,
    /// The number's limit; `None`: high enough not to matter.
    max_mps: Option<u32>,
    amqp: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        db: None,
        messages: 5000,
        lanes: 32,
        batch: outbound::DEFAULT_BATCH_SIZE,
        max_mps: None,
        amqp: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--db" => a.db = Some(value()?),
            "--messages" => {
                a.messages = value()?.parse().map_err(|e| format!("--messages: {e}"))?
            }
            "--lanes" => a.lanes = value()?.parse().map_err(|e| format!("--lanes: {e}"))?,
            "--batch" => a.batch = value()?.parse().map_err(|e| format!("--batch: {e}"))?,
            "--max-mps" => {
                a.max_mps = Some(value()?.parse().map_err(|e| format!("--max-mps: {e}"))?)
            }
            "--amqp" => a.amqp = Some(value()?),
            other => {
                return Err(format!(
                    "unknown argument {other:?}; use --db URL --messages N [--lanes L] [--batch B] \
                     [--max-mps N] [--amqp URL]"
                ));
            }
        }
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_outbound: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let args = args()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (url, _dir) = match &args.db {
        Some(u) => (u.clone(), None),
        None => {
            let (u, d) = wapipe_testkit::db::fresh_sqlite_url().map_err(|e| e.to_string())?;
            (u, Some(d))
        }
    };
    let db = wapipe_shared::db::connect(&url, 32)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    Migrator::up(&db, None)
        .await
        .map_err(|e| format!("migrate: {e}"))?;
    let key = Arc::new(SecretKey::generate());
    // A fresh number per run, so runs against one database do not mix.
    let phone: String = format!("9{:014}", rand_u64() % 100_000_000_000_000);
    let config = tenants::add(
        &db,
        &key,
        NewConfig {
            company: "Bench".into(),
            name: None,
            phone_number_id: phone.clone(),
            waba_id: "1".into(),
            display_phone_number: None,
            app_secret: "s".into(),
            verify_token: "v".into(),
            access_token: "EAAG-bench".into(),
            webhook_secret: None,
            max_mps: i32::try_from(args.max_mps.unwrap_or(10_000)).unwrap_or(i32::MAX),
        },
    )
    .await
    .map_err(|e| format!("config: {e}"))?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let graph = spawn_graph(listener, GraphConfig::default())
        .await
        .map_err(|e| e.to_string())?;
    let broker_settings = BrokerSettings {
        amqp_url: args.amqp.clone(),
        // A prefix per run: RabbitMQ queues of two runs never mix.
        prefix: format!("benchob{}", rand_u64() % 1_000_000_000),
        lanes: args.lanes.max(1),
        // As in production (`WAPIPE_PREFETCH`, 32), and at least the batch.
        prefetch: u16::try_from(args.batch.max(32)).unwrap_or(u16::MAX),
    };
    // RabbitMQ's handle is kept to delete this run's queues at the end.
    let amqp = match &args.amqp {
        Some(_) => Some(Arc::new(
            AmqpBroker::new(&broker_settings).map_err(|e| format!("broker: {e}"))?,
        )),
        None => None,
    };
    let broker: Arc<dyn Broker> = match &amqp {
        Some(a) => a.clone(),
        None => Arc::new(EmbeddedBroker::new(&broker_settings, db.clone())),
    };
    broker
        .declare()
        .await
        .map_err(|e| format!("declare the queues: {e}"))?;

    // Queue and publish (not timed).
    let queued: Vec<_> = stream::iter(0..args.messages)
        .map(|i| {
            let db = db.clone();
            let broker = broker.clone();
            async move {
                let q = wapipe_domain::outbox::queue_message(
                    &db,
                    NewOutbound {
                        config_id: config.id,
                        to: format!("1{i:011}"),
                        content: OutboundContent::Template(Template::with_body_params(
                            "bench",
                            "en_US",
                            &[i.to_string()],
                        )),
                        reply_to: None,
                        origin: Origin::System,
                        sender_type: "system".into(),
                        sender_id: None,
                        answers: None,
                    },
                )
                .await
                .map_err(|e| format!("queue: {e}"))?;
                wapipe_domain::outbox::enqueue(&db, broker.as_ref(), &q)
                    .await
                    .map_err(|e| format!("enqueue: {e}"))?;
                Ok::<_, String>(q.message_id)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let queued: Vec<_> = queued.into_iter().collect::<Result<_, _>>()?;

    let mut settings = OutboundSettings::new(&graph.base_url(), "v23.0");
    settings.batch_size = args.batch;
    // A limited number keeps the production headroom (3% under Meta's
    // figure); unlimited, nothing is held back anyway.
    if args.max_mps.is_none() {
        settings.limits = LimitSettings {
            headroom: 1.0,
            ..LimitSettings::default()
        };
    }
    let process = wapipe_shared::config::Settings::from_defaults().map_err(|e| e.to_string())?;
    let deps = Deps::new(db.clone(), broker.clone(), process, key);
    let worker: Arc<dyn Worker> =
        typed(OutboundWorker::new(deps, settings).map_err(|e| e.to_string())?);
    let token = CancellationToken::new();
    let policy = if args.max_mps.is_some() {
        RetryPolicy::default()
    } else {
        RetryPolicy {
            min_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
            max_attempts: 1_000,
        }
    };
    let started = Instant::now();
    let run = tokio::spawn(runtime::run(broker.clone(), worker, policy, token.clone()));
    let done = graph
        .wait_for_sent(queued.len(), Duration::from_secs(600))
        .await;
    let elapsed = started.elapsed();
    // Let stray duplicates (if any) show before counting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    token.cancel();
    let _ = run.await;

    let sent = graph.sent();
    let distinct: HashSet<&str> = sent.iter().map(|s| s.to.as_str()).collect();
    // Sends of each second at Meta's end, from the first one.
    let first = sent.iter().map(|s| s.time_ms).min().unwrap_or(0);
    let mut per_second: Vec<usize> = Vec::new();
    for s in &sent {
        let i = ((s.time_ms - first) / 1000) as usize;
        if per_second.len() <= i {
            per_second.resize(i + 1, 0);
        }
        per_second[i] += 1;
    }
    // The busiest second by any one-second window, not only whole seconds.
    let mut times: Vec<u64> = sent.iter().map(|s| s.time_ms).collect();
    times.sort_unstable();
    let busiest = (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|t| **t < times[i] + 1000)
                .count()
        })
        .max()
        .unwrap_or(0);
    let dead = broker
        .dlq_list(wapipe_shared::jobs::Queue::Outbound, 1000)
        .await
        .map_err(|e| format!("dlq: {e}"))?
        .len();
    if let Some(a) = &amqp {
        a.delete_topology()
            .await
            .map_err(|e| format!("delete the queues: {e}"))?;
    }
    let stored_sent = messages::Entity::find()
        .filter(messages::Column::ConfigId.eq(config.id))
        .filter(messages::Column::Status.eq(MessageStatus::Sent))
        .count(&db)
        .await
        .map_err(|e| e.to_string())?;
    let exactly_once = done
        && sent.len() == queued.len()
        && distinct.len() == queued.len()
        && stored_sent == queued.len() as u64;
    println!(
        "{}",
        json!({
            "sends_per_sec": (sent.len() as f64 / elapsed.as_secs_f64() * 10.0).round() / 10.0,
            "sent": sent.len(),
            "graph_calls": graph.calls(),
            "exactly_once": exactly_once,
            "messages": queued.len(),
            "elapsed_secs": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "lanes": args.lanes,
            "batch": args.batch,
            "max_mps": args.max_mps,
            "busiest_second": busiest,
            "dead_lettered": dead,
            "per_second": per_second,
        })
    );
    if !exactly_once {
        return Err(format!(
            "not exactly once: {} queued, {} accepted ({} distinct), {} stored as sent",
            queued.len(),
            sent.len(),
            distinct.len(),
            stored_sent
        ));
    }
    Ok(())
}

/// Enough randomness for a throwaway phone number id, without a dependency.
fn rand_u64() -> u64 {
    uuid::Uuid::now_v7().as_u128() as u64 ^ (std::process::id() as u64).rotate_left(32)
}
