//! `/api/whatsapp/webhook-endpoints`, on PostgreSQL and SQLite: a private
//! URL is a 422 unless private targets are allowed; bad URLs and unknown
//! event types are 400s; only admin keys; the `whsec_` secret is shown once
//! (never by GET, nor by an Idempotency-Key replay, nor stored in clear);
//! an endpoint belongs to a config of the key, or is global for a key that
//! sees every config, and other keys do not see it.

mod common;

use common::{Api, perms};
use reqwest::{Method, StatusCode};
use sea_orm::EntityTrait;
use serde_json::{Value, json};
use wapipe_api::ApiSettings;
use wapipe_shared::entities::{idempotency_keys, webhook_endpoints};

const PATH: &str = "/api/whatsapp/webhook-endpoints";

fn body(url: &str) -> Value {
    json!({"url": url, "eventTypes": ["message.created", "chat.updated"]})
}

async fn private_urls_refused(api: Api) {
    let admin = api.admin().await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://172.16.5.4/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest",
        "http://0.0.0.0/",
        "http://[::1]/hook",
        "http://[fd00::1]/hook",
        "http://[fe80::1]/hook",
    ] {
        let r = api.post(&admin, PATH, body(url)).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {r:?}");
        assert_eq!(r.body["error"]["code"], "private_address", "{url}");
    }
    for (url, field) in [
        ("ftp://example.com/x", "url"),
        ("not a url", "url"),
        ("https://user:pw@example.com/", "url"),
    ] {
        let r = api.post(&admin, PATH, body(url)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{url}: {r:?}");
        assert!(r.body["error"]["fields"][field].is_string(), "{r:?}");
    }
    let r = api
        .post(
            &admin,
            PATH,
            json!({"url": "https://example.com/", "eventTypes": ["chat.exploded"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
    assert!(r.body["error"]["fields"]["eventTypes"].is_string());
    let r = api
        .post(
            &admin,
            PATH,
            json!({"url": "https://example.com/", "eventTypes": []}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
    let list = api.get(&admin, PATH).await;
    assert_eq!(list.body["data"], json!([]), "nothing was created");
}
both!(private_urls_refused_test, private_urls_refused);

async fn scoped_and_secret_once(api: Api) {
    let operator = api.admin().await;
    let acme = api.admin_of(&["Acme"]).await;
    let globex = api.admin_of(&["Globex"]).await;
    let (_, agent) = api.agent("Ann", perms(true), 5).await;

    let r = api.post(&agent, PATH, body("http://127.0.0.1:9/a")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");

    // Acme's admin: the endpoint is Acme's config's.
    let create_once = || {
        api.call_h(
            &acme,
            Method::POST,
            PATH,
            Some(body("http://127.0.0.1:9/acme")),
            &[("Idempotency-Key", "ep-1")],
        )
    };
    let r = create_once().await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let acme_ep = r.body["id"].as_str().expect("id").to_owned();
    assert_eq!(r.body["configId"], json!(api.config_id));
    let secret = r.body["secret"].as_str().expect("secret").to_owned();
    let raw = secret.strip_prefix("whsec_").expect("whsec_ prefix");
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .expect("base64 secret");
    assert!(key.len() >= 24, "24+ random bytes");
    assert_eq!(
        r.body["eventTypes"],
        json!(["message.created", "chat.updated"])
    );

    // The replay answers the same endpoint without the secret, and the
    // secret rests nowhere in clear.
    let again = create_once().await;
    assert_eq!(again.status, StatusCode::CREATED, "{again:?}");
    assert_eq!(again.body["id"], json!(acme_ep));
    assert_eq!(again.body["secret"], Value::Null);
    let stored = idempotency_keys::Entity::find()
        .all(&api.db)
        .await
        .expect("read");
    assert!(
        stored
            .iter()
            .all(|k| !k.response_body.as_deref().unwrap_or("").contains(&secret))
    );
    let row = webhook_endpoints::Entity::find()
        .all(&api.db)
        .await
        .expect("read");
    assert_eq!(row.len(), 1);
    assert!(!row[0].secret_enc.contains(raw), "encrypted at rest");

    let got = api.get(&acme, &format!("{PATH}/{acme_ep}")).await;
    assert_eq!(got.status, StatusCode::OK, "{got:?}");
    assert!(
        got.body.get("secret").is_none(),
        "GET never shows the secret"
    );
    assert_eq!(got.body["enabled"], json!(true));

    // The operator's key makes a global endpoint.
    let r = api
        .post(&operator, PATH, body("http://127.0.0.1:9/all"))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(r.body["configId"], Value::Null);
    let global = r.body["id"].as_str().expect("id").to_owned();

    // Globex's admin sees neither; Acme's sees its own; the operator both.
    let ids = |v: &Value| -> Vec<String> {
        v["data"]
            .as_array()
            .expect("page")
            .iter()
            .map(|e| e["id"].as_str().expect("id").to_owned())
            .collect()
    };
    assert!(ids(&api.get(&globex, PATH).await.body).is_empty());
    assert_eq!(ids(&api.get(&acme, PATH).await.body), vec![acme_ep.clone()]);
    assert_eq!(
        ids(&api.get(&operator, PATH).await.body),
        vec![global.clone(), acme_ep.clone()]
    );
    for path in [
        format!("{PATH}/{acme_ep}"),
        format!("{PATH}/{global}"),
        format!("{PATH}/{acme_ep}/deliveries"),
    ] {
        let r = api.get(&globex, &path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {r:?}");
    }
    let r = api.delete(&globex, &format!("{PATH}/{acme_ep}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let r = api
        .get(&acme, &format!("{PATH}/{acme_ep}/deliveries"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["data"], json!([]));
    let r = api
        .get(&acme, &format!("{PATH}/{acme_ep}/deliveries?status=nope"))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
    let r = api
        .post(
            &acme,
            &format!("{PATH}/{acme_ep}/deliveries/{}/retry", uuid::Uuid::now_v7()),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");

    let r = api.delete(&acme, &format!("{PATH}/{acme_ep}")).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    let r = api.get(&acme, &format!("{PATH}/{acme_ep}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");
    assert!(ids(&api.get(&acme, PATH).await.body).is_empty());
}

async fn private_allowed(backend: common::Backend) -> Api {
    Api::start_with(
        backend,
        ApiSettings {
            webhooks_allow_private: true,
            ..ApiSettings::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_and_secret_once_postgres() {
    scoped_and_secret_once(private_allowed(common::Backend::Postgres).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_and_secret_once_sqlite() {
    scoped_and_secret_once(private_allowed(common::Backend::Sqlite).await).await;
}
