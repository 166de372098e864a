//! The `wapipe` service as a library: the subcommands' implementations, so
//! the binary stays a thin CLI and tests start the real service in-process
//! (`serve::start` on port 0).

pub mod apikey_cmd;
pub mod app;
pub mod config_cmd;
pub mod followups_cmd;
pub mod metrics_server;
pub mod ops_cmd;
pub mod scenarios_cmd;
pub mod send_cmd;
pub mod serve;
pub mod templates_cmd;
