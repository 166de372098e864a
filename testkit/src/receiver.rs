//! A test peer: a tiny hyper webhook receiver that checks signatures
//! with hmac/sha2 on its own, independently of the code under test, and
//! keeps every request's headers and raw body (for checks by other means:
//! the outgoing webhooks' Standard Webhooks signature).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::net::TcpListener;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub body: Bytes,
    pub signature: Option<String>,
    pub signature_ok: bool,
    pub content_type: Option<String>,
    /// Every header, names in lower case.
    pub headers: Vec<(String, String)>,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("receiver got JSON")
    }

    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Decides the answer to request number `n` (0-based).
pub type Responder = Arc<dyn Fn(usize, &Received) -> u16 + Send + Sync>;

pub struct Receiver {
    pub addr: SocketAddr,
    pub got: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    pub fn url(&self) -> String {
        format!("http://{}/webhook", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Verifies `sha256=<hex>` over the raw body, independently of the simulator.
pub fn verify(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

pub async fn spawn_receiver(secret: &str, respond: Responder) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let secret = secret.to_owned();
    let got2 = got.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let got = got2.clone();
            let secret = secret.clone();
            let respond = respond.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let got = got.clone();
                    let secret = secret.clone();
                    let respond = respond.clone();
                    async move {
                        let header = |name: &str| {
                            req.headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned)
                        };
                        let signature = header("x-hub-signature-256");
                        let content_type = header("content-type");
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(k, v)| {
                                (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                            })
                            .collect();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let signature_ok = signature
                            .as_deref()
                            .is_some_and(|s| verify(&secret, &body, s));
                        let r = Received {
                            body,
                            signature,
                            signature_ok,
                            content_type,
                            headers,
                        };
                        let n = {
                            let mut g = got.lock().unwrap();
                            g.push(r.clone());
                            g.len() - 1
                        };
                        let status = respond(n, &r);
                        let mut resp =
                            Response::new(Full::new(Bytes::from(format!("answer {status}"))));
                        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Receiver { addr, got, task }
}

/// Answers 200 when the signature verifies, 401 otherwise (like wapipe).
pub fn verifying() -> Responder {
    Arc::new(|_, r| if r.signature_ok { 200 } else { 401 })
}
