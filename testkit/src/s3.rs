//! A local S3-compatible server for the media store's tests: moto's
//! (`pip install 'moto[server]'`, which `.ci/run` does), started on a free
//! port per test and killed with its handle. Tests skip, printing why,
//! only when the `moto_server` binary is not installed.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running moto server.
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    port: u16,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The moto server binary: `WAPIPE_TEST_MOTO_SERVER`, else `moto_server`
/// on the PATH.
fn binary() -> Option<String> {
    if let Ok(b) = std::env::var("WAPIPE_TEST_MOTO_SERVER") {
        return Some(b);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("moto_server"))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

/// Sends one bodiless request; answers the status code.
async fn request(port: u16, method: &str, path: &str) -> std::io::Result<u16> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await?;
    let code = std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok(code)
}

/// Starts moto on a free port; `None` (with the reason printed) when the
/// binary is not installed. Panics if an installed one does not come up.
pub async fn moto() -> Option<S3Server> {
    let Some(bin) = binary() else {
        eprintln!(
            "SKIPPED: no moto_server for the S3 media tests (pip install 'moto[server]', \
             as .ci/run does, or set WAPIPE_TEST_MOTO_SERVER)"
        );
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    let server = S3Server {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
        port,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while request(port, "GET", "/").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "moto_server did not come up on {port}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Some(server)
}

impl S3Server {
    /// Creates a bucket (moto takes unsigned requests).
    pub async fn bucket(&self, name: &str) {
        let code = request(self.port, "PUT", &format!("/{name}"))
            .await
            .expect("create bucket");
        assert_eq!(code, 200, "creating bucket {name}");
    }

    /// `WAPIPE_MEDIA_URL` of `bucket/prefix` on this server; moto takes
    /// any credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, or the
    /// store's options), but wants some: unsigned reads are refused.
    pub fn media_url(&self, bucket: &str, prefix: &str) -> String {
        format!(
            "s3://{bucket}/{prefix}?endpoint={}&allow_http=true&region=us-east-1",
            self.endpoint
        )
    }
}
