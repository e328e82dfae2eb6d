//! The driver: one run of one scenario on one handler. It creates a fresh
//! session (`?ep=setup`), sends the plan's lanes concurrently with the
//! session cookie, times every request on its own clock, and reads the
//! session back (`?ep=inspect`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use serde_json::Value;

use crate::http::{self, BaseUrl};
pub use crate::record::{Reply, ReqResult, RunResult};
use crate::scenario::{Plan, Scenario};

/// A request may wait this long (a lock wait of 30 s plus work) before the
/// driver gives up on it and counts an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

async fn call(base: &BaseUrl, query: &str, cookie: Option<&str>) -> (Option<u16>, Result<Reply>) {
    match http::get(base, query, cookie, REQUEST_TIMEOUT).await {
        Err(e) => (None, Err(e)),
        Ok(resp) => {
            let reply = serde_json::from_slice::<Reply>(&resp.body).with_context(|| {
                let body = String::from_utf8_lossy(&resp.body);
                format!(
                    "HTTP {}: not the app's JSON: {}",
                    resp.status,
                    body.chars().take(200).collect::<String>()
                )
            });
            (Some(resp.status), reply)
        }
    }
}

fn query(ep: &str, handler: &str, params: &[(&'static str, String)]) -> String {
    let mut q = format!("ep={ep}&h={}", http::encode(handler));
    for (k, v) in params {
        q.push('&');
        q.push_str(k);
        q.push('=');
        q.push_str(&http::encode(v));
    }
    q
}

pub async fn run_once(
    base: &BaseUrl,
    handler: &str,
    scenario: Scenario,
    plan: &Plan,
) -> Result<RunResult> {
    let (_, setup) = call(
        base,
        &query("setup", handler, &[("sc", scenario.name().into())]),
        None,
    )
    .await;
    let setup = setup.context("setup request")?;
    if !setup.ok {
        bail!("setup failed: {}", setup.errors.join("; "));
    }
    let sid = setup.result["sid"]
        .as_str()
        .context("setup: no session id")?
        .to_string();
    let cookie = Arc::new(format!("RACELAB={sid}"));

    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (li, lane) in plan.lanes.iter().enumerate() {
        let lane = lane.clone();
        let base = base.clone();
        let handler = handler.to_string();
        let cookie = cookie.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until((t0 + Duration::from_millis(lane.start_ms)).into()).await;
            let mut out = Vec::new();
            for (i, r) in lane.reqs.iter().enumerate() {
                if i > 0 && lane.gap_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(lane.gap_ms)).await;
                }
                let q = query(r.ep, &handler, &r.params);
                let start = t0.elapsed().as_secs_f64() * 1000.0;
                let (status, reply) = call(&base, &q, Some(&cookie)).await;
                let end = t0.elapsed().as_secs_f64() * 1000.0;
                let (reply, error) = match reply {
                    Ok(x) => (Some(x), None),
                    Err(e) => (None, Some(format!("{e:#}"))),
                };
                out.push(ReqResult {
                    lane: li,
                    ep: r.ep,
                    role: r.role,
                    params: r.params.clone(),
                    start_ms: start,
                    end_ms: end,
                    status,
                    reply,
                    error,
                });
            }
            out
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.extend(t.await.context("request task panicked")?);
    }
    let wall_ms = results.iter().map(|r| r.end_ms).fold(0.0, f64::max);

    let (_, inspect) = call(base, &query("inspect", handler, &[]), Some(&cookie)).await;
    let inspect = inspect.context("inspect request")?;
    if !inspect.ok {
        bail!("inspect failed: {}", inspect.errors.join("; "));
    }
    Ok(RunResult {
        results,
        inspect: inspect.result,
        wall_ms,
        sid,
    })
}

/// `?ep=info`: which handlers the app can run, and on what.
pub async fn info(base: &BaseUrl) -> Result<Value> {
    let (_, r) = call(base, "ep=info", None).await;
    let r = r.with_context(|| format!("{base}?ep=info"))?;
    Ok(r.result)
}
