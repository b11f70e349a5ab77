//! Starting in any order: drover comes up while its database or Redis is not there yet and
//! joins them when they come; several drovers started at once on a fresh database all come up.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::mock_ollama::MockOllama;
use support::{database_urls, fresh_database, http, route_yaml, Drover, TcpRelay, FAST};

const RELOAD: &str = "  db_check_interval: 300ms\n";

async fn get(d: &Drover, path: &str) -> Value {
    http().get(format!("{}{path}", d.url)).send().await.unwrap().json().await.unwrap_or(Value::Null)
}

async fn add_route(d: &Drover, name: &str, server: &str) -> u16 {
    let route = json!({ "virtual_model_name": name, "server_url": server, "actual_model_name": "m:1b" });
    http().post(format!("{}/admin/servers", d.url)).json(&route).send().await.unwrap().status().as_u16()
}

/// Waits until /health says the store answers.
async fn store_ok(d: &Drover, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if get(d, "/health").await["store"]["state"] == "ok" {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Whether `d` answers a chat for `model` within `within` (a route added through another drover).
async fn serves(d: &Drover, model: &str, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if support::chat(d, model).await.0 == 200 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A database away at start: drover serves its config's routes at once, says degraded, and
/// when the database comes loads the routes stored there (by another drover, before) and
/// accepts writes.
async fn database_later(kind: &str, url: &str) {
    let m = MockOllama::start("m", &["m:1b"]).await;
    let (relay, through) = TcpRelay::in_front_of(url).await;
    {
        let earlier = Drover::start_with_db(&format!("{FAST}{RELOAD}"), Some(&through)).await;
        assert_eq!(add_route(&earlier, "stored", &m.url).await, 201, "{kind}");
    }
    relay.stop();
    let yaml = format!("{FAST}{RELOAD}routes:\n{}", route_yaml("fixed", &m.url, "m:1b", 1, 1));
    let started = std::time::Instant::now();
    let d = Drover::start_with_db(&yaml, Some(&through)).await;
    eprintln!("{kind}: serving {:?} after start with the database away", started.elapsed());
    let health = get(&d, "/health").await;
    assert_eq!((health["status"].as_str(), health["store"]["state"].as_str()), (Some("degraded"), Some("unreachable")));
    assert_eq!(support::chat(&d, "fixed").await.0, 200, "{kind}: the config's routes are served");
    assert_eq!(support::chat(&d, "stored").await.0, 404, "{kind}: the stored ones are not known yet");
    assert_eq!(add_route(&d, "later", &m.url).await, 503, "{kind}: no write without the database");

    relay.restart().await;
    assert!(store_ok(&d, Duration::from_secs(10)).await, "{kind}: joined the database: {}", d.log());
    assert!(d.log().contains("reachable again"), "{kind}");
    assert_eq!(support::chat(&d, "stored").await.0, 200, "{kind}: the stored routes were loaded");
    assert_eq!(add_route(&d, "later", &m.url).await, 201, "{kind}: writes accepted");
    assert_eq!(support::chat(&d, "later").await.0, 200, "{kind}");
}

#[tokio::test]
async fn a_database_that_comes_later_is_joined() {
    for (kind, base) in database_urls().into_iter().filter(|(k, _)| *k != "sqlite") {
        database_later(kind, &fresh_database(kind, &base).await).await;
    }
}

/// SQLite in a directory that does not exist yet (a volume not mounted yet): drover starts,
/// and when the directory appears it creates the file, migrates it and accepts writes.
#[tokio::test]
async fn an_sqlite_file_that_cannot_be_made_yet_is_made_later() {
    let m = MockOllama::start("m", &["m:1b"]).await;
    let dir = support::scratch_dir("later").join("not-yet");
    let url = format!("sqlite://{}/drover.db", dir.display());
    let d = Drover::start_with_db(&format!("{FAST}{RELOAD}"), Some(&url)).await;
    assert_eq!(get(&d, "/health").await["store"]["state"], "unreachable");
    assert_eq!(add_route(&d, "m", &m.url).await, 503);
    std::fs::create_dir_all(&dir).unwrap();
    assert!(store_ok(&d, Duration::from_secs(10)).await, "{}", d.log());
    assert_eq!(add_route(&d, "m", &m.url).await, 201, "{}", d.log());
    assert_eq!(support::chat(&d, "m").await.0, 200);
}

/// Three drovers started at the same moment on a fresh database all come up: the
/// migrations run under the database's lock, once.
#[tokio::test]
async fn three_drovers_at_once_on_a_fresh_database() {
    for (kind, base) in database_urls() {
        let url = fresh_database(kind, &base).await;
        let yaml = format!("{FAST}{RELOAD}");
        let (a, b, c) = tokio::join!(
            Drover::start_with_db(&yaml, Some(&url)),
            Drover::start_with_db(&yaml, Some(&url)),
            Drover::start_with_db(&yaml, Some(&url)),
        );
        for d in [&a, &b, &c] {
            assert_eq!(get(d, "/health").await["store"]["state"], "ok", "{kind}: {}", d.log());
            assert!(!d.log().contains("migration failed"), "{kind}: {}", d.log());
        }
        let applied: usize = [&a, &b, &c].iter().map(|d| d.log().matches("applying migration").count()).sum();
        let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite")).unwrap().count();
        assert_eq!(applied, migrations, "{kind}: each migration applied once, by one of them");
        let m = MockOllama::start("m", &["m:1b"]).await;
        assert_eq!(add_route(&a, "m", &m.url).await, 201, "{kind}");
        for d in [&b, &c] {
            assert!(serves(d, "m", Duration::from_secs(5)).await, "{kind}: every drover follows the same store");
        }
    }
}

/// Redis away at start: drover starts, limits are per process meanwhile (/health says so),
/// and it joins Redis when it comes.
#[tokio::test]
async fn redis_that_comes_later_is_joined() {
    let Some(mut redis) = support::RedisServer::start().await else { return };
    let url = redis.url.clone();
    redis.stop();
    let m = MockOllama::start("m", &["m:1b"]).await;
    let yaml = format!("{FAST}state:\n  redis_url: \"{url}\"\nroutes:\n{}", route_yaml("m", &m.url, "m:1b", 1, 1));
    let d = Drover::start(&yaml).await;
    assert_eq!(support::chat(&d, "m").await.0, 200);
    let shared = get(&d, "/health").await["shared_state"].clone();
    assert_eq!(shared["state"], "unreachable", "{shared}");
    redis.restart().await;
    let mut joined = false;
    for _ in 0..100 {
        if get(&d, "/health").await["shared_state"]["state"] == "ok" {
            joined = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(joined, "joined Redis when it came: {}", d.log());
    assert_eq!(support::chat(&d, "m").await.0, 200);
}
