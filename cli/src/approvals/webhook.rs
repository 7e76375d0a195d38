//! Webhook notifications: each new pending approval is POSTed as JSON
//!
//! ```json
//! {"event": "approval.pending", "approval": {<approval>},
//!  "approve_url": "<public>/v1/approvals/<id>/approve", "deny_url": "…/deny",
//!  "page_url": "<public>/#<id>"}
//! ```
//!
//! from a background thread (the callout never waits for it). A delivery
//! succeeds on any 2xx answer; otherwise it is retried after 0.5 s, 1 s, 2 s,
//! 4 s and 8 s (6 attempts in all), each attempt limited to 10 s, and every
//! failure is logged to stderr.

use serde_json::Value;
use std::time::Duration;

/// Attempts per event, the first included.
pub const ATTEMPTS: u32 = 6;

/// Delay before the first retry; doubled for each further one.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// Sends `payload` to `url` in a new thread, with retries (see the module doc).
pub fn notify(url: String, payload: Value) {
    std::thread::spawn(move || {
        deliver(&url, &payload.to_string());
    });
}

/// Delivers one event, blocking through the retries. Returns whether a 2xx came back.
pub fn deliver(url: &str, body: &str) -> bool {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .user_agent("nhi-gate-approvals")
        .build()
        .into();
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let outcome = agent.post(url).header("content-type", "application/json").send(body);
        let failure = match outcome {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) => format!("HTTP {}", r.status().as_u16()),
            Err(e) => e.to_string(),
        };
        if attempt == ATTEMPTS {
            eprintln!("nhi-gate approvals: webhook {url}: attempt {attempt}/{ATTEMPTS} failed ({failure}); giving up");
            break;
        }
        eprintln!(
            "nhi-gate approvals: webhook {url}: attempt {attempt}/{ATTEMPTS} failed ({failure}); retrying in {:.1} s",
            backoff.as_secs_f64()
        );
        std::thread::sleep(backoff);
        backoff *= 2;
    }
    false
}
