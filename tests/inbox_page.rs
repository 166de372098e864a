//! The inbox page (`/`) that `wapipe serve` and `wapipe api` serve: its
//! files and headers, then the page itself in headless Chromium driven over
//! WebDriver, against the real service (embedded mode, as `make run`) and
//! the fake Graph API: log in with a key, see a customer's chat arrive live
//! over the WebSocket, open it, reply (the reply reaches the fake Graph and
//! its receipts come back live), assign it; and the same page at 360 px.
//! Screenshots of each step go to `target/inbox-screenshots/`.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use wapipe::serve::Roles;
use wapipe_testkit::app::{Mode, TestApp, settings_for};
use wapipe_testkit::build::text_webhook_at;

mod common;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// How long a step may take on a busy CI machine.
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_and_assets_are_served_outside_the_api() {
    let app = TestApp::spawn(Mode::Embedded).await;
    let get = |path: &str| app.http.get(app.url(path)).send();

    let page = get("/").await.expect("page");
    assert_eq!(page.status(), 200);
    let h = page.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let csp = h["content-security-policy"].to_str().expect("csp");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let html = page.text().await.expect("html");
    // The CSP allows no inline code: every script and style is a file.
    assert!(html.contains(r#"<script src="/inbox/inbox.js" defer></script>"#));
    assert!(!html.contains("<script>") && !html.contains("style="));
    // Every input has a label.
    for id in ["key", "f-status", "f-label", "agent", "reply", "template"] {
        assert!(html.contains(&format!(r#"<label for="{id}""#)), "{id}");
    }

    for (path, kind) in [
        ("/inbox/inbox.js", "text/javascript; charset=utf-8"),
        ("/inbox/inbox.css", "text/css; charset=utf-8"),
        ("/inbox/icon.svg", "image/svg+xml"),
    ] {
        let r = get(path).await.expect("asset");
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], kind, "{path}");
        assert!(r.headers().contains_key("content-security-policy"));
    }
    let js = get("/inbox/inbox.js")
        .await
        .expect("js")
        .text()
        .await
        .expect("text");
    assert!(
        !js.contains("innerHTML") && !js.contains("insertAdjacentHTML"),
        "data goes into the page as text only"
    );
    assert_eq!(get("/inbox/nope.js").await.expect("get").status(), 404);

    // Not part of the API's document (the conformance run reads it).
    let doc: Value = get("/api/openapi.json")
        .await
        .expect("doc")
        .json()
        .await
        .expect("json");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.keys().all(|p| p.starts_with("/api/")), "{paths:?}");
    // The receiver keeps its own paths on the shared listener.
    assert_eq!(get("/healthz").await.expect("get").status(), 200);
    app.stop().await;
}

/// chromedriver on a free port, ended when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    /// `None` when chromedriver is not installed (and this is not CI).
    async fn start() -> Option<Driver> {
        if !std::path::Path::new(CHROMEDRIVER).exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{CHROMEDRIVER} is missing on CI (.ci/run installs chromium-driver)"
            );
            eprintln!(
                "SKIPPED: {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        // Its own process group, which the browsers it starts join: a test
        // that fails before closing its session still leaves no Chromium.
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http
                .get(format!("{}/status", driver.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Some(driver);
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn browser(&self, profile: &std::path::Path) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1280,800", "--lang=en-US",
                    format!("--user-data-dir={}", profile.display())],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group's id is chromedriver's pid (`process_group(0)`).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the screenshots go, for a person to look at.
fn shots_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/inbox-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(shots_dir().join(format!("{name}.png")), png).expect("write screenshot");
}

/// Waits until `script` (a JS function body) returns true in the page.
async fn until(c: &Client, what: &str, script: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = c.execute(script, vec![]).await.expect("script runs");
        if v == Value::Bool(true) {
            return;
        }
        if Instant::now() > deadline {
            let page = c
                .execute("return document.body.innerText", vec![])
                .await
                .unwrap_or_default();
            let _ = c
                .screenshot()
                .await
                .map(|png| std::fs::write(shots_dir().join("failed.png"), png).expect("write"));
            panic!("timed out waiting for {what}; the page reads:\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text_of(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .expect("text")
}

/// Sizes the window so the page's viewport is `width` CSS pixels wide.
async fn viewport_width(c: &Client, width: u32) {
    c.set_window_size(width, 780).await.expect("resize");
    let inner = c
        .execute("return window.innerWidth", vec![])
        .await
        .expect("width")
        .as_u64()
        .expect("a number") as u32;
    if inner != width {
        c.set_window_size(width + width.saturating_sub(inner), 780)
            .await
            .expect("resize");
    }
}

/// The service (embedded, every role, sending to the fake Graph), an admin
/// key, and a Chromium logged in to the page with it.
struct Session {
    c: Client,
    app: TestApp,
    graph: wapipe_sim::GraphHandle,
    key: String,
    // Last: chromedriver outlives the browser session.
    _driver: Driver,
}

impl Session {
    /// `None` when chromedriver is not installed (see [`Driver::start`]).
    async fn start(tweak: impl FnOnce(&mut wapipe_shared::config::Settings)) -> Option<Session> {
        common::install_tls_provider();
        let driver = Driver::start().await?;
        let (graph_listener, graph_base) = common::graph_listener().await;
        let (mut settings, dir) = settings_for(Mode::Embedded).await;
        settings.graph_api_base = graph_base;
        tweak(&mut settings);
        let app = TestApp::spawn_with(Mode::Embedded, settings, dir, Roles::all()).await;
        let graph = common::fake_graph(graph_listener, &app).await;
        let key = app.admin_key().await;
        let c = driver.browser(&app.dir.path().join("chrome")).await;
        c.goto(&app.url("/")).await.expect("open the page");
        Some(Session {
            c,
            app,
            graph,
            key,
            _driver: driver,
        })
    }

    /// Makes a resource through the REST API; answers its id.
    async fn create(&self, path: &str, body: Value) -> String {
        let r = self
            .app
            .http
            .post(self.app.url(path))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .expect("create");
        assert!(r.status().is_success(), "{path}: {}", r.status());
        let v: Value = r.json().await.expect("json");
        v["id"].as_str().expect("id").to_owned()
    }

    async fn type_into(&self, id: &str, text: &str) {
        let field = self.c.find(Locator::Id(id)).await.expect(id);
        field.clear().await.expect("clear");
        field.send_keys(text).await.expect("type");
    }

    async fn click(&self, css: &str) {
        self.c
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .expect("click");
    }

    async fn log_in(&self, key: &str) {
        self.type_into("key", key).await;
        self.click("#login-button").await;
    }

    /// Until the page's WebSocket is open.
    async fn wait_live(&self) {
        until(
            &self.c,
            "the WebSocket",
            "return document.getElementById('live').textContent === 'live'",
        )
        .await;
    }

    async fn stop(self) {
        self.c.close().await.expect("close the browser");
        self.app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_in_a_browser() {
    let Some(s) = Session::start(|_| {}).await else {
        return;
    };
    let c = &s.c;
    let agent_id = s
        .create(
            "/api/whatsapp/agents",
            json!({"name": "Alex Agent", "email": "alex@example.com", "company": "Test Co"}),
        )
        .await;
    s.create(
        "/api/whatsapp/labels",
        json!({"name": "VIP", "color": "#d4a017"}),
    )
    .await;
    // An approved WhatsApp template, synced from the fake Meta.
    s.graph
        .set_templates(vec![json!({"id": "1001", "name": "order_update",
        "language": "en_US", "status": "APPROVED", "category": "UTILITY",
        "components": [{"type": "BODY", "text": "Hi {{1}}, order {{2}} shipped"}]})]);
    let r = s
        .app
        .http
        .post(s.app.url("/api/whatsapp/templates/sync"))
        .bearer_auth(&s.key)
        .json(&json!({"configId": s.app.config_id}))
        .send()
        .await
        .expect("sync");
    assert_eq!(r.status(), 200);
    shot(c, "01-login").await;

    // A wrong key is refused on the page.
    s.log_in("wpk_not-a-key").await;
    until(
        c,
        "the refusal",
        "return document.getElementById('login-error').textContent.includes('not valid')",
    )
    .await;

    // The right key opens the inbox, live.
    s.log_in(&s.key).await;
    s.wait_live().await;
    shot(c, "02-inbox-empty").await;

    // A customer writes (markup in the name and text must stay text).
    let now = chrono::Utc::now().timestamp();
    let (status, _) = s
        .app
        .post(&text_webhook_at(
            "inbox1",
            "34600111222",
            "Ana <img src=x>",
            "Hola, <b>ayuda</b> por favor",
            now,
        ))
        .await;
    assert_eq!(status, 200);
    until(
        c,
        "the chat to arrive live",
        "return document.querySelector('#chats button[data-id]') !== null",
    )
    .await;
    let item = text_of(c, "#chats button[data-id]").await;
    assert!(item.contains("Ana <img src=x>"), "{item}");
    assert!(item.contains("Hola, <b>ayuda</b> por favor"), "{item}");
    assert_eq!(text_of(c, "#chats .badge").await, "1", "one unread");
    let markup = c
        .execute(
            "return document.querySelectorAll('#app img, #app b').length",
            vec![],
        )
        .await
        .expect("count");
    assert_eq!(markup, json!(0), "customer text became markup");
    shot(c, "03-chat-arrived").await;

    // Open it: the message, and the unread count goes back to zero.
    s.click("#chats button[data-id]").await;
    until(
        c,
        "the customer's message",
        "return [...document.querySelectorAll('#messages li.msg.in')].some(m => m.textContent.includes('ayuda'))",
    )
    .await;
    until(
        c,
        "the chat marked read",
        "return document.querySelector('#chats .badge') === null",
    )
    .await;
    shot(c, "04-chat-open").await;

    // Reply: it reaches the fake Graph, and its receipts come back live.
    let reply = "Hola Ana, te ayudo enseguida.";
    s.type_into("reply", reply).await;
    s.click("#send").await;
    // Meta's mark-as-read of the customer's message goes elsewhere: the
    // reply is the first send.
    assert!(
        s.graph.wait_for_sent(1, WAIT).await,
        "no send reached Graph"
    );
    let m = &s.graph.sent()[0];
    assert_eq!(m.kind, "text");
    assert_eq!(m.body["text"]["body"], reply);
    assert_eq!(m.to, "34600111222");
    until(
        c,
        "the reply read",
        "return document.querySelector('#messages li.msg.out[data-status=\"read\"]') !== null",
    )
    .await;
    let out = text_of(c, "#messages li.msg.out").await;
    assert!(out.contains(reply) && out.contains("read"), "{out}");
    shot(c, "05-reply-read").await;

    // A template, with its parameters.
    s.type_into("template-params", "Ana | A-1001").await;
    s.click("#send-template").await;
    assert!(
        s.graph.wait_for_sent(2, WAIT).await,
        "no template reached Graph"
    );
    let t = &s.graph.sent()[1].body["template"];
    assert_eq!(t["name"], "order_update", "{t}");
    assert_eq!(t["language"]["code"], "en_US", "{t}");
    let params = t["components"][0]["parameters"].to_string();
    assert!(
        params.contains("\"Ana\"") && params.contains("\"A-1001\""),
        "{t}"
    );
    until(
        c,
        "the template on the page",
        "return document.querySelectorAll('#messages li.msg.out').length === 2",
    )
    .await;

    // Assign the chat to Alex.
    c.find(Locator::Id("agent"))
        .await
        .expect("agent select")
        .select_by_value(&agent_id)
        .await
        .expect("pick Alex");
    s.click("#assign").await;
    until(
        c,
        "the assignment",
        "return document.getElementById('chat-meta').textContent.includes('assigned to Alex Agent')",
    )
    .await;
    let chats = s.app.get_json("/api/whatsapp/chats", &s.key).await;
    assert_eq!(chats["data"][0]["assignedTo"], json!(agent_id));
    assert_eq!(chats["data"][0]["status"], "assigned");

    // A label and a team note.
    s.click("#add-label").await;
    until(
        c,
        "the label on the chat",
        "return document.getElementById('chat-labels').textContent.includes('VIP')",
    )
    .await;
    s.type_into("note", "Wants a refund <script>").await;
    s.click("#add-note").await;
    until(
        c,
        "the note",
        "return document.getElementById('notes').textContent.includes('Wants a refund <script>')",
    )
    .await;
    shot(c, "06-assigned").await;

    // A phone: 360 px, one column, nothing wider than the screen.
    viewport_width(c, 360).await;
    s.click("#back").await;
    let fits = "return document.documentElement.scrollWidth <= window.innerWidth";
    until(c, "the list to fit 360 px", fits).await;
    shot(c, "07-phone-list").await;
    s.click("#chats button[data-id]").await;
    until(
        c,
        "the conversation alone, fitting 360 px",
        "const r = document.getElementById('send').getBoundingClientRect();
         return getComputedStyle(document.getElementById('side')).display === 'none'
           && r.width > 0 && r.right <= window.innerWidth
           && document.documentElement.scrollWidth <= window.innerWidth",
    )
    .await;
    shot(c, "08-phone-chat").await;
    s.stop().await;
}

/// A WebSocket the server drops (here: a client that falls more than
/// `WAPIPE_WS_MAX_BUFFER` events behind is closed with 1013) is reopened
/// with `after` = the last seq the page saw: the events in between are
/// replayed, and the page is never reloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_resumes_after_a_dropped_socket() {
    let Some(s) = Session::start(|settings| settings.ws_max_buffer = 1).await else {
        return;
    };
    let c = &s.c;
    s.log_in(&s.key).await;
    s.wait_live().await;
    // Set in this page: a reload would lose it.
    c.execute("window.sameLoad = true; return true", vec![])
        .await
        .expect("mark the page");

    // A customer writes; the chat is open with her first message.
    let now = chrono::Utc::now().timestamp();
    let (status, _) = s
        .app
        .post(&text_webhook_at(
            "burst",
            "34600333444",
            "Bea",
            "message 0",
            now,
        ))
        .await;
    assert_eq!(status, 200);
    until(
        c,
        "the chat",
        "return document.querySelector('#chats button[data-id]') !== null",
    )
    .await;
    s.click("#chats button[data-id]").await;
    // The page has seen an event (so it has a seq to resume from) and shows
    // the message: what comes next reaches the open chat only as events.
    until(
        c,
        "the first message and a seq",
        "return document.querySelectorAll('#messages li.msg.in').length === 1
           && document.getElementById('live').dataset.seq !== undefined
           && document.getElementById('live').textContent === 'live'",
    )
    .await;
    let opens = || async {
        c.execute(
            "return Number(document.getElementById('live').dataset.opens)",
            vec![],
        )
        .await
        .expect("opens")
        .as_u64()
        .unwrap_or(0)
    };
    let opened = opens().await;

    // Bursts of 20 messages, one webhook each, until the socket was dropped
    // and reopened.
    let mut sent = 1;
    for burst in 1..=10 {
        let mut body: Value = serde_json::from_slice(&text_webhook_at(
            &format!("burst{burst}-0"),
            "34600333444",
            "Bea",
            &format!("message {sent}"),
            now,
        ))
        .expect("json");
        let first = body["entry"][0]["changes"][0]["value"]["messages"][0].clone();
        let messages = body["entry"][0]["changes"][0]["value"]["messages"]
            .as_array_mut()
            .expect("messages");
        sent += 1;
        for i in 1..20 {
            let mut m = first.clone();
            m["id"] = json!(format!("wamid.burst{burst}-{i}"));
            m["text"]["body"] = json!(format!("message {sent}"));
            messages.push(m);
            sent += 1;
        }
        let (status, _) = s.app.post(body.to_string().as_bytes()).await;
        assert_eq!(status, 200);
        s.app.wait_settled(burst + 1, WAIT).await;
        if opens().await > opened {
            break;
        }
    }
    // Every message is on the page, once, in the same page load.
    until(
        c,
        "every message",
        &format!(
            "const texts = [...document.querySelectorAll('#messages li.msg.in')]
               .map(m => m.firstChild.textContent);
             return texts.length === {sent} && new Set(texts).size === {sent}"
        ),
    )
    .await;
    let same = c
        .execute("return window.sameLoad === true", vec![])
        .await
        .expect("marker");
    assert_eq!(same, json!(true), "the page was reloaded");
    assert!(
        opens().await > opened,
        "the socket was never dropped and reopened"
    );
    shot(c, "09-resumed").await;
    s.stop().await;
}
