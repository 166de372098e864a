//! The `wapipe` binary: one CLI over the libraries, with a subcommand per
//! role (serve, ingest, workers) and per operator task (migrate, config,
//! replay, dlq). Errors print as one clear line on stderr with a non-zero exit.

use wapipe::{
    apikey_cmd, app, config_cmd, followups_cmd, ops_cmd, scenarios_cmd, send_cmd, serve,
    templates_cmd,
};

use std::process::ExitCode;

// See the `jemalloc` feature in Cargo.toml: freed memory returns to the OS.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use clap::{Parser, Subcommand};
use wapipe_shared::config::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "wapipe",
    version,
    about = "Queue-driven WhatsApp Cloud API webhook pipeline",
    long_about = "Queue-driven WhatsApp Cloud API webhook pipeline.\n\nEvery option is also an environment variable (shown as [env: ...]; values that may hold a secret are not shown). With no DATABASE_URL and no AMQP_URL, wapipe runs embedded: SQLite in ./data and an in-process queue."
)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every role in one process (embedded default: migrates by itself).
    Serve,
    /// Run the webhook receiver and the relay (production: scale out).
    Ingest,
    /// Run the agents' REST API on WAPIPE_API_LISTEN (production: scale out).
    Api,
    /// Run worker roles (production: scale out).
    Workers {
        /// Comma-separated roles, e.g. `parse` (default: all).
        #[arg(long)]
        roles: Option<String>,
    },
    /// Apply the database migrations (idempotent).
    Migrate,
    /// Re-publish stored webhook events to the parse worker.
    Replay(ops_cmd::ReplayArgs),
    /// List, redrive or purge a worker's dead-letter queue.
    #[command(subcommand)]
    Dlq(ops_cmd::DlqCommand),
    /// Declare or delete the RabbitMQ exchanges and queues of WAPIPE_QUEUE_PREFIX.
    #[command(subcommand)]
    Topology(ops_cmd::TopologyCommand),
    /// Manage WhatsApp numbers (tenants): add, list, update, remove.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Queue a message to a customer; prints the message id as the last line.
    Send(send_cmd::SendArgs),
    /// Show a message's status (and wait for one with --wait).
    Status(send_cmd::StatusArgs),
    /// Import, export or list the chatbot's scenarios (flow files).
    #[command(subcommand)]
    Scenarios(scenarios_cmd::ScenariosCommand),
    /// Block, unblock or list numbers the chatbot must not answer.
    #[command(subcommand)]
    Block(scenarios_cmd::BlockCommand),
    /// Deny or allow a scenario for one customer.
    #[command(subcommand)]
    Customers(scenarios_cmd::CustomersCommand),
    /// Add and list agents (who follow-up reminders go to).
    #[command(subcommand)]
    Agents(followups_cmd::AgentsCommand),
    /// Schedule, complete, cancel and list follow-ups.
    #[command(subcommand)]
    Followups(followups_cmd::FollowupsCommand),
    /// Create, list and revoke keys of the agents' REST API.
    #[command(subcommand)]
    Apikey(apikey_cmd::ApikeyCommand),
    /// Fetch a number's WhatsApp templates from Meta.
    #[command(subcommand)]
    Templates(templates_cmd::TemplatesCommand),
}

impl Command {
    /// Roles and `migrate` log their progress; one-shot commands print only
    /// their output and their errors.
    fn log_default(&self) -> app::LogDefault {
        match self {
            Command::Serve
            | Command::Ingest
            | Command::Api
            | Command::Workers { .. }
            | Command::Migrate => app::LogDefault::Service,
            Command::Replay(_)
            | Command::Dlq(_)
            | Command::Topology(_)
            | Command::Config(_)
            | Command::Send(_)
            | Command::Status(_)
            | Command::Scenarios(_)
            | Command::Block(_)
            | Command::Customers(_)
            | Command::Agents(_)
            | Command::Followups(_)
            | Command::Apikey(_)
            | Command::Templates(_) => app::LogDefault::Command,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    app::init_logging(cli.settings.log_json, cli.command.log_default());
    // One TLS crypto backend for every client (sqlx, lapin, reqwest): ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Serve => serve::serve(cli.settings).await,
            Command::Ingest => {
                let roles = serve::Roles {
                    ingest: true,
                    api: false,
                    workers: Vec::new(),
                };
                serve::run_roles(cli.settings, roles).await
            }
            Command::Api => {
                let roles = serve::Roles {
                    ingest: false,
                    api: true,
                    workers: Vec::new(),
                };
                serve::run_roles(cli.settings, roles).await
            }
            Command::Workers { roles } => {
                let workers = match roles {
                    Some(r) => serve::Roles::parse_workers(&r),
                    None => Ok(serve::Roles::all().workers),
                };
                match workers {
                    Ok(workers) => {
                        serve::run_roles(
                            cli.settings,
                            serve::Roles {
                                ingest: false,
                                api: false,
                                workers,
                            },
                        )
                        .await
                    }
                    Err(e) => Err(e),
                }
            }
            Command::Migrate => app::migrate(&cli.settings).await,
            Command::Replay(args) => ops_cmd::replay(&cli.settings, args).await,
            Command::Dlq(cmd) => ops_cmd::dlq(&cli.settings, cmd).await,
            Command::Topology(cmd) => ops_cmd::topology(&cli.settings, cmd).await,
            Command::Config(cmd) => config_cmd::run(&cli.settings, cmd).await,
            Command::Send(args) => send_cmd::run(&cli.settings, args).await,
            Command::Status(args) => send_cmd::status(&cli.settings, args).await,
            Command::Scenarios(cmd) => scenarios_cmd::scenarios(&cli.settings, cmd).await,
            Command::Block(cmd) => scenarios_cmd::block(&cli.settings, cmd).await,
            Command::Customers(cmd) => scenarios_cmd::customers(&cli.settings, cmd).await,
            Command::Agents(cmd) => followups_cmd::agents(&cli.settings, cmd).await,
            Command::Followups(cmd) => followups_cmd::followups(&cli.settings, cmd).await,
            Command::Apikey(cmd) => apikey_cmd::run(&cli.settings, cmd).await,
            Command::Templates(cmd) => templates_cmd::run(&cli.settings, cmd).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} {id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }

    #[test]
    fn every_flag_and_argument_has_a_help_text() {
        Cli::command().debug_assert();
        let mut missing = Vec::new();
        walk(&Cli::command(), "wapipe", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }
}
