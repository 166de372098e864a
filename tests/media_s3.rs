//! Media end to end (`common/media.rs`) with the files in an
//! S3-compatible store: moto's server, started here (skipped, saying why,
//! only when it is not installed). Its own test binary: the store takes
//! its credentials from the AWS_* environment, which is set once here,
//! before anything else runs in this process.

use wapipe_testkit::app::Mode;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn media_production_on_s3() {
    let Some(s3) = wapipe_testkit::s3::moto().await else {
        return;
    };
    // SAFETY: the only test of this binary sets them before it starts
    // anything that reads the environment; moto accepts any credentials.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "wapipe-test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "wapipe-test");
    }
    s3.bucket("wapipe-media").await;
    common::media::media_end_to_end(
        Mode::Production,
        Some(s3.media_url("wapipe-media", "inbox")),
    )
    .await;
}
