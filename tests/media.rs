//! Media end to end on both deployments (SQLite with the in-process
//! queue; PostgreSQL with RabbitMQ), files in the local directory: see
//! `common/media.rs` for what is checked.

use wapipe_testkit::app::Mode;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn media_embedded_sqlite() {
    common::media::media_end_to_end(Mode::Embedded, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn media_production_postgres_rabbitmq() {
    common::media::media_end_to_end(Mode::Production, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_reader_gets_the_whole_file_on_the_shared_listener() {
    common::media::slow_reader_gets_the_whole_file(Mode::Embedded).await;
}
