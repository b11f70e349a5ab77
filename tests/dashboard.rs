//! The dashboard through a real drover: the page and its script are served by drover, its
//! data is live, and it is guarded like the admin API (token, cookie, write marker). The
//! page itself is driven in a real browser by tests/e2e/test_dashboard.py.

mod support;

use serde_json::{json, Value};
use support::mock_ollama::{MockOllama, Mode};
use support::{chat, http, Drover, FAST};

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

#[tokio::test]
async fn the_dashboard_shows_the_fleet_live_behind_the_admin_token() {
    let a = MockOllama::start("a", &["llama3:latest"]).await;
    let b = MockOllama::start("b", &["llama3:latest"]).await;
    let d = Drover::start(&format!(
        "{FAST}admin:\n  token: \"sesame\"\nroutes:\n{}{}",
        support::route_yaml("chat", &a.url, "llama3:latest", 100, 1),
        support::route_yaml("chat", &b.url, "llama3:latest", 100, 2)
    ))
    .await;

    // Without the token: nothing, not even the page.
    for path in ["/dashboard", "/dashboard/app.js", "/dashboard/data"] {
        let r = http().get(format!("{}{path}", d.url)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let r = no_redirects().get(format!("{}/dashboard?token=wrong", d.url)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // A value that could not travel in a cookie is refused, not put in a header.
    let r = no_redirects().get(format!("{}/dashboard?token=a%3B%20b", d.url)).send().await.unwrap();
    assert_eq!(r.status(), 400);

    // The token in the URL once: a cookie, and back to a URL without it.
    let r = no_redirects().get(format!("{}/dashboard?token=sesame", d.url)).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(support::header(&r, "location"), "/dashboard");
    let cookie = support::header(&r, "set-cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let cookie = cookie.split(';').next().unwrap().to_string();
    let get = |path: &str| http().get(format!("{}{path}", d.url)).header("cookie", &cookie).send();
    let page = get("/dashboard").await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(support::header(&page, "content-type").starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(
        html.contains("<script src=\"/dashboard/app.js\">") && !html.contains("http://") && !html.contains("https://")
    );
    let js = get("/dashboard/app.js").await.unwrap();
    assert!(support::header(&js, "content-type").starts_with("text/javascript"));
    assert!(js.text().await.unwrap().contains("/dashboard/data"));

    // The data: servers with state, tier, loaded models; per-model counters; recent errors.
    let (status, _, _) = chat(&d, "chat").await;
    assert_eq!(status, 200);
    a.set_mode(Mode::Error);
    b.set_mode(Mode::Error);
    let (failed, _, _) = chat(&d, "chat").await;
    assert!(failed >= 500);
    a.set_mode(Mode::Normal);
    b.set_mode(Mode::Normal);
    let data: Value = get("/dashboard/data").await.unwrap().json().await.unwrap();
    let servers = data["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2);
    assert_eq!(servers[0]["url"], a.url);
    assert_eq!(servers[0]["routes"], json!([{ "model": "chat:latest", "priority": 1, "weight": 100 }]));
    assert_eq!(servers[1]["routes"][0]["priority"], 2);
    assert!(servers[0]["loaded"].as_array().unwrap().contains(&json!("llama3:latest")), "{data}");
    let chat_row = data["models"].as_array().unwrap().iter().find(|m| m["model"] == "chat:latest").unwrap().clone();
    assert_eq!(chat_row["requests"], 2, "{data}");
    let errors = data["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{data}");
    assert_eq!((errors[0]["status"].as_u64(), errors[0]["model"].as_str()), (Some(failed as u64), Some("chat:latest")));

    // Live: a server going down shows within the health-check interval.
    b.stop();
    let mut state = String::new();
    for _ in 0..50 {
        let data: Value = get("/dashboard/data").await.unwrap().json().await.unwrap();
        state = data["servers"][1]["state"].as_str().unwrap().to_string();
        if state == "down" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(state, "down");

    // Writes with the cookie need the dashboard's marker header (a cross-site form cannot send it).
    let drain = |marker: bool| {
        let mut r = http()
            .post(format!("{}/admin/drain", d.url))
            .header("cookie", &cookie)
            .json(&json!({ "server_url": a.url, "drained": true }));
        if marker {
            r = r.header("x-drover-dashboard", "1");
        }
        r.send()
    };
    assert_eq!(drain(false).await.unwrap().status(), 401);
    assert_eq!(drain(true).await.unwrap().status(), 200);
    let data: Value = get("/dashboard/data").await.unwrap().json().await.unwrap();
    assert_eq!(data["servers"][0]["state"], "drained");
}
