//! Media end to end (`tests/media.rs`, `tests/media_s3.rs`), on both deployments (SQLite with the in-process
//! queue; PostgreSQL with RabbitMQ): inbound image, document, audio and
//! video messages arrive as signed webhooks; the media worker fetches
//! their files from the fake Graph API into the local media store; the API
//! serves them with ranges, to keys that may see the chat only; an agent
//! uploads a file that reaches the fake Graph and is sent by its id.
//! Checked along the way: the sha256 check, the size cap, an expired URL
//! asked for again, the same file stored once, a replayed job that does
//! nothing, thumbnails, and the upload's type and size limits.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use sha2::Digest;
use uuid::Uuid;
use wapipe::serve::Roles;
use wapipe_shared::entities::message_media::{self, status};
use wapipe_shared::entities::messages;
use wapipe_shared::jobs::{Job, MediaFetch};
use wapipe_sim::{GraphHandle, SimMedia};
use wapipe_testkit::app::{Mode, PHONE_NUMBER_ID, TestApp, WABA_ID, settings_for};

const CUSTOMER: &str = "15557770042";
/// The test service's WAPIPE_MEDIA_MAX_BYTES.
const CAP: u64 = 200_000;

pub fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 239) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("png");
    out.into_inner()
}

pub fn sha_hex(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

/// A signed-ready webhook with one media message of `kind` from CUSTOMER.
fn media_webhook(wamid: &str, kind: &str, object: Value) -> Vec<u8> {
    let now = chrono::Utc::now().timestamp().to_string();
    let mut msg = json!({"from": CUSTOMER, "id": wamid, "timestamp": now, "type": kind});
    msg[kind] = object;
    json!({"object": "whatsapp_business_account", "entry": [{"id": WABA_ID, "changes": [{
        "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550001111", "phone_number_id": PHONE_NUMBER_ID},
            "contacts": [{"profile": {"name": "Ana"}, "wa_id": CUSTOMER}],
            "messages": [msg]}}]}]})
    .to_string()
    .into_bytes()
}

/// Posts the webhook and waits until the message's file is no longer
/// `pending` (or `failed`, unless `failed_ok`); answers the message and
/// its file row.
pub async fn deliver(
    app: &TestApp,
    wamid: &str,
    kind: &str,
    object: Value,
    settled: &[&str],
) -> (messages::Model, message_media::Model) {
    let (code, body) = app.post(&media_webhook(wamid, kind, object)).await;
    assert_eq!(code, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    loop {
        let msg = messages::Entity::find()
            .filter(messages::Column::ProviderMessageId.eq(wamid))
            .one(&app.db)
            .await
            .expect("query");
        if let Some(msg) = msg {
            let row = message_media::Entity::find_by_id(msg.id)
                .one(&app.db)
                .await
                .expect("query");
            if let Some(row) = row {
                if settled.contains(&row.status.as_str()) {
                    return (msg, row);
                }
                last = Some(row);
            }
        }
        assert!(
            Instant::now() < deadline,
            "{wamid}: the file never reached {settled:?}; last seen {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get(app: &TestApp, key: &str, path: &str, range: Option<&str>) -> reqwest::Response {
    let mut req = app.http.get(app.url(path)).bearer_auth(key);
    if let Some(r) = range {
        req = req.header("range", r);
    }
    req.send().await.expect("GET")
}

/// The API's view of a message.
async fn message_view(app: &TestApp, key: &str, id: Uuid) -> Value {
    get(app, key, &format!("/api/whatsapp/messages/{id}"), None)
        .await
        .json()
        .await
        .expect("json")
}

/// The objects of the service's media store (temporaries excluded).
async fn stored_files(app: &TestApp) -> Vec<String> {
    wapipe_domain::media::MediaStore::from_settings(&app.settings)
        .expect("the media store")
        .list()
        .await
        .expect("list")
}

async fn spawn(mode: Mode, media_url: Option<String>) -> (TestApp, GraphHandle) {
    super::install_tls_provider();
    let (listener, base) = super::graph_listener().await;
    let (mut settings, dir) = settings_for(mode).await;
    settings.graph_api_base = base;
    settings.media_url = media_url;
    settings.media_max_bytes = CAP;
    settings.retry_max_attempts = 2;
    let app = TestApp::spawn_with(mode, settings, dir, Roles::all()).await;
    let graph = super::fake_graph(listener, &app).await;
    (app, graph)
}

async fn inbound_files(app: &TestApp, graph: &GraphHandle, admin: &str) -> Uuid {
    let photo = png(400, 300);
    graph.add_media("9001", SimMedia::new(photo.clone(), "image/png"));
    graph.add_media("9002", SimMedia::new(photo.clone(), "image/png"));
    let (msg, row) = deliver(
        app,
        "wamid.media-9001",
        "image",
        json!({"id": "9001", "mime_type": "image/png", "sha256": sha_hex(&photo), "caption": "look"}),
        &[status::STORED],
    )
    .await;
    assert_eq!(row.sha256.as_deref(), Some(sha_hex(&photo).as_str()));
    assert_eq!(row.file_size, Some(photo.len() as i64));
    assert!(
        row.thumbnail_sha256.is_none(),
        "thumbnails are made when first asked for, not on arrival"
    );

    // The message points at the API, which streams the file.
    let view = message_view(app, admin, msg.id).await;
    let media = &view["media"];
    assert_eq!(media["url"], format!("/api/whatsapp/media/{}", msg.id));
    assert_eq!(
        media["thumbnailUrl"],
        format!("/api/whatsapp/media/{}/thumbnail", msg.id)
    );
    assert_eq!(media["status"], "stored");
    assert_eq!(media["caption"], "look");
    assert_eq!(media["fileSize"], photo.len());
    let path = format!("/api/whatsapp/media/{}", msg.id);
    let whole = get(app, admin, &path, None).await;
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["content-type"], "image/png");
    assert_eq!(
        whole.headers()["content-length"],
        photo.len().to_string().as_str()
    );
    assert_eq!(whole.headers()["accept-ranges"], "bytes");
    assert_eq!(
        whole.bytes().await.expect("body"),
        Bytes::from(photo.clone())
    );
    // Ranges: a slice, a suffix, and one past the end.
    let part = get(app, admin, &path, Some("bytes=10-19")).await;
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 10-19/{}", photo.len()).as_str()
    );
    assert_eq!(part.bytes().await.expect("body"), &photo[10..20]);
    let tail = get(app, admin, &path, Some("bytes=-7")).await;
    assert_eq!(tail.status(), 206);
    assert_eq!(tail.bytes().await.expect("body"), &photo[photo.len() - 7..]);
    let past = get(app, admin, &path, Some(&format!("bytes={}-", photo.len()))).await;
    assert_eq!(past.status(), 416);
    assert_eq!(
        past.headers()["content-range"],
        format!("bytes */{}", photo.len()).as_str()
    );
    let thumb = get(app, admin, &format!("{path}/thumbnail"), None).await;
    assert_eq!(thumb.status(), 200);
    assert_eq!(thumb.headers()["content-type"], "image/jpeg");
    let thumb = image::load_from_memory(&thumb.bytes().await.expect("body")).expect("a JPEG");
    assert_eq!((thumb.width(), thumb.height()), (320, 240));
    // Made once: recorded on the file's row, and the same object after.
    let made = message_media::Entity::find_by_id(msg.id)
        .one(&app.db)
        .await
        .expect("query")
        .expect("row")
        .thumbnail_sha256
        .expect("the thumbnail is recorded");
    let again = get(app, admin, &format!("{path}/thumbnail"), None).await;
    assert_eq!(again.status(), 200);
    let again = again.bytes().await.expect("body");
    assert_eq!(sha_hex(&again), made);
    // A key that may not see the chat (another company's) sees nothing.
    wapipe_testkit::db::add_config(&app.db, "15550002222", "15550002229", "Other Co").await;
    let stranger = wapipe_domain::apikeys::create(
        &app.db,
        wapipe_domain::apikeys::NewKey::Admin {
            name: None,
            companies: vec!["Other Co".into()],
        },
    )
    .await
    .expect("key")
    .secret;
    assert_eq!(get(app, &stranger, &path, None).await.status(), 404);
    assert_eq!(get(app, "wrong", &path, None).await.status(), 401);

    // The same file under another media id: looked up, not downloaded,
    // and stored once (the file and its thumbnail are still two objects).
    let before = graph.media_counts();
    let files = stored_files(app).await;
    assert_eq!(files.len(), 2, "{files:?}");
    let (_, again) = deliver(
        app,
        "wamid.media-9002",
        "image",
        json!({"id": "9002", "mime_type": "image/png"}),
        &[status::STORED],
    )
    .await;
    assert_eq!(again.sha256, row.sha256);
    let after = graph.media_counts();
    assert_eq!(
        after.downloads, before.downloads,
        "the same file downloaded again"
    );
    assert_eq!(after.lookups, before.lookups + 1);
    assert_eq!(stored_files(app).await.len(), 2);

    // A replayed job stores nothing and asks Meta nothing.
    app.broker
        .publish(
            MediaFetch {
                message_id: msg.id,
                config_id: app.config_id,
                media_id: "9001".into(),
            }
            .to_outbound(),
        )
        .await
        .expect("publish");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(graph.media_counts().lookups, after.lookups);
    assert_eq!(stored_files(app).await.len(), 2);
    msg.chat_id
}

async fn refusals_and_renewals(app: &TestApp, graph: &GraphHandle, admin: &str) {
    // Meta's sha256 does not match the bytes: failed, retried, given up.
    let doc = b"%PDF-1.4 a small document".to_vec();
    let doc_sha = sha_hex(&doc);
    graph.add_media(
        "9003",
        SimMedia {
            claimed_sha256: Some("ab".repeat(32)),
            ..SimMedia::new(doc, "application/pdf")
        },
    );
    let (msg, row) = deliver(
        app,
        "wamid.media-9003",
        "document",
        json!({"id": "9003", "mime_type": "application/pdf", "filename": "a.pdf"}),
        &[status::FAILED],
    )
    .await;
    assert!(
        row.error
            .as_deref()
            .is_some_and(|e| e.contains("sha256 mismatch")),
        "{row:?}"
    );
    // Retried (WAPIPE_RETRY_MAX_ATTEMPTS is 2 here), then given up: the
    // dead-lettered job leaves the file `failed` with its last error.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = message_media::Entity::find_by_id(msg.id)
            .one(&app.db)
            .await
            .expect("query")
            .expect("row");
        let error = row.error.unwrap_or_default();
        if error.starts_with("gave up") {
            assert!(error.contains("sha256 mismatch"), "{error}");
            assert_eq!(row.status, status::FAILED);
            break;
        }
        assert!(Instant::now() < deadline, "never given up: {error}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resp = get(app, admin, &format!("/api/whatsapp/media/{}", msg.id), None).await;
    assert_eq!(resp.status(), 409);
    let body: Value = resp.json().await.expect("json");
    assert!(body.to_string().contains("sha256"), "{body}");
    assert!(
        !stored_files(app).await.contains(&doc_sha),
        "a file that failed its check was kept"
    );

    // Over WAPIPE_MEDIA_MAX_BYTES: refused before any download.
    graph.add_media(
        "9004",
        SimMedia::new(vec![7u8; CAP as usize + 1], "video/mp4"),
    );
    let downloads = graph.media_counts().downloads;
    let (msg, row) = deliver(
        app,
        "wamid.media-9004",
        "video",
        json!({"id": "9004", "mime_type": "video/mp4"}),
        &[status::REFUSED],
    )
    .await;
    let why = row.error.clone().unwrap_or_default();
    assert!(why.contains("WAPIPE_MEDIA_MAX_BYTES"), "{why}");
    assert_eq!(graph.media_counts().downloads, downloads);
    let view = message_view(app, admin, msg.id).await;
    assert_eq!(view["media"]["status"], "refused");
    assert_eq!(view["media"]["error"], why.as_str());
    assert!(view["media"]["url"].is_null());

    // Meta understates the size: the stream is cut at the cap all the same.
    graph.add_media(
        "9006",
        SimMedia {
            claimed_size: Some(10),
            claimed_sha256: None,
            ..SimMedia::new(vec![8u8; CAP as usize + 10], "video/mp4")
        },
    );
    let (_, row) = deliver(
        app,
        "wamid.media-9006",
        "video",
        json!({"id": "9006"}),
        &[status::REFUSED],
    )
    .await;
    assert!(
        row.error
            .unwrap_or_default()
            .contains("WAPIPE_MEDIA_MAX_BYTES")
    );

    // The URL expired before the download: looked up again, then stored.
    let voice = b"OggS a voice note".to_vec();
    graph.add_media("9005", SimMedia::new(voice.clone(), "audio/ogg"));
    let before = graph.media_counts();
    graph.expire_next_urls(1);
    let (voice_msg, row) = deliver(
        app,
        "wamid.media-9005",
        "audio",
        json!({"id": "9005", "mime_type": "audio/ogg; codecs=opus", "voice": true}),
        &[status::STORED],
    )
    .await;
    assert_eq!(row.sha256, Some(sha_hex(&voice)));
    let after = graph.media_counts();
    assert_eq!(after.expired, before.expired + 1);
    assert_eq!(after.lookups, before.lookups + 2);
    let thumb = get(
        app,
        admin,
        &format!("/api/whatsapp/media/{}/thumbnail", voice_msg.id),
        None,
    )
    .await;
    assert_eq!(thumb.status(), 404, "no thumbnail for audio");
}

fn form(kind: Option<&str>, file: Option<(Vec<u8>, &str)>) -> reqwest::multipart::Form {
    let mut f = reqwest::multipart::Form::new();
    if let Some(k) = kind {
        f = f.text("type", k.to_owned());
    }
    f = f.text("caption", "our offer");
    if let Some((bytes, mime)) = file {
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name("offer.png")
            .mime_str(mime)
            .expect("mime");
        f = f.part("file", part);
    }
    f
}

async fn upload(
    app: &TestApp,
    key: &str,
    chat: Uuid,
    form: reqwest::multipart::Form,
) -> (u16, Value) {
    let resp = app
        .http
        .post(app.url(&format!("/api/whatsapp/chats/{chat}/messages")))
        .bearer_auth(key)
        .multipart(form)
        .send()
        .await
        .expect("POST");
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

async fn outbound_upload(app: &TestApp, graph: &GraphHandle, admin: &str, chat: Uuid) {
    let photo = png(300, 200);
    let (code, view) = upload(
        app,
        admin,
        chat,
        form(Some("image"), Some((photo.clone(), "image/png"))),
    )
    .await;
    assert_eq!(code, 202, "{view}");
    let uploads = graph.media_counts().uploads;
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    let up = &uploads[0];
    assert_eq!(up.mime_type, "image/png");
    assert_eq!(up.size, photo.len() as u64);
    assert_eq!(up.sha256, sha_hex(&photo));
    assert_eq!(up.phone_number_id, PHONE_NUMBER_ID);
    assert_eq!(up.file_name.as_deref(), Some("offer.png"));
    assert_eq!(view["media"]["mediaId"], up.id.as_str());
    assert_eq!(view["media"]["caption"], "our offer");
    assert_eq!(view["media"]["status"], "stored");
    let id = view["id"].as_str().expect("id").to_owned();
    assert_eq!(view["media"]["url"], format!("/api/whatsapp/media/{id}"));
    let copy = get(app, admin, &format!("/api/whatsapp/media/{id}"), None).await;
    assert_eq!(copy.bytes().await.expect("body"), Bytes::from(photo));
    // The send goes out by the id Meta gave.
    assert!(
        graph.wait_for_sent(1, Duration::from_secs(20)).await,
        "nothing sent"
    );
    let sent = graph.sent();
    assert_eq!(sent[0].kind, "image");
    assert_eq!(sent[0].body["image"]["id"], up.id.as_str());
    assert_eq!(sent[0].body["image"]["caption"], "our offer");

    // Meta's limits, checked before anything goes to Meta.
    let (code, body) = upload(
        app,
        admin,
        chat,
        form(Some("image"), Some((b"GIF89a".to_vec(), "image/gif"))),
    )
    .await;
    assert_eq!(code, 415, "{body}");
    assert!(body.to_string().contains("image/jpeg"), "{body}");
    let (code, body) = upload(
        app,
        admin,
        chat,
        form(
            Some("sticker"),
            Some((vec![0u8; CAP as usize + 1], "image/webp")),
        ),
    )
    .await;
    assert_eq!(code, 413, "{body}");
    let (code, body) = upload(app, admin, chat, form(Some("image"), None)).await;
    assert_eq!(code, 422, "{body}");
    let (code, body) = upload(
        app,
        admin,
        chat,
        form(Some("location"), Some((vec![1], "image/png"))),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = upload(app, admin, chat, form(None, Some((vec![1], "image/png")))).await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(
        graph.media_counts().uploads.len(),
        1,
        "a refused upload reached Meta"
    );
}

pub async fn media_end_to_end(mode: Mode, media_url: Option<String>) {
    let (app, graph) = spawn(mode, media_url).await;
    let admin = app.admin_key().await;
    let chat = inbound_files(&app, &graph, &admin).await;
    refusals_and_renewals(&app, &graph, &admin).await;
    outbound_upload(&app, &graph, &admin, chat).await;
    app.stop().await;
}

/// A big file on the receiver's shared listener, to a client that reads
/// nothing for longer than the idle timeout after the headers: the answer
/// streams (the API's body is not collected first), and the connection
/// counts as busy until the last byte is sent, so the idle timeout never
/// cuts it. Before both, the whole file sat in memory and the connection
/// was closed mid-body once the idle time passed.
pub async fn slow_reader_gets_the_whole_file(mode: Mode) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SIZE: usize = 24 * 1024 * 1024;
    super::install_tls_provider();
    let (listener, base) = super::graph_listener().await;
    let (mut settings, dir) = settings_for(mode).await;
    settings.graph_api_base = base;
    settings.media_max_bytes = 2 * SIZE as u64;
    // The idle check first wakes at the first-request timeout: both short.
    settings.idle_timeout_s = 1;
    settings.first_request_timeout_s = 1;
    assert!(settings.api_listen.is_none(), "the API shares the listener");
    let app = TestApp::spawn_with(mode, settings, dir, Roles::all()).await;
    let graph = super::fake_graph(listener, &app).await;
    let admin = app.admin_key().await;
    let video: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    graph.add_media("9900", SimMedia::new(video.clone(), "video/mp4"));
    let (msg, _) = deliver(
        &app,
        "wamid.media-big",
        "video",
        json!({"id": "9900", "mime_type": "video/mp4", "sha256": sha_hex(&video)}),
        &[status::STORED],
    )
    .await;

    // A small receive buffer (which also stops the kernel growing it), so
    // the socket buffers cannot swallow the file while we do not read.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(64 * 1024).expect("rcvbuf");
    let mut conn = socket.connect(app.addr).await.expect("connect");
    let request = format!(
        "GET /api/whatsapp/media/{} HTTP/1.1\r\nHost: wapipe\r\nAuthorization: Bearer {admin}\r\n\r\n",
        msg.id
    );
    conn.write_all(request.as_bytes()).await.expect("request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).await.expect("headers");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains(&format!("content-length: {SIZE}")), "{head}");
    // Read nothing for 2.5 idle timeouts: the socket buffers fill and the
    // server must wait for us.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut body = Vec::with_capacity(SIZE);
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut chunk = vec![0u8; 1 << 16];
        while body.len() < SIZE {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the body stalled");
    assert_eq!(body.len(), SIZE, "the connection was cut mid-body");
    assert!(body == video, "the bytes are the file's");
    app.stop().await;
}
