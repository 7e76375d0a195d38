//! The proxy-wasm layer: Envoy's root context (configuration, JWKS fetching,
//! waiting requests) and HTTP contexts (one per request). All decisions are
//! made by [`crate::gate::Gate`]; this file only moves bytes to and from the
//! host (proxy-wasm ABI 0.2.1, Envoy `envoy.filters.http.wasm`).
//!
//! JWKS sharing across Envoy workers: each worker's VM keeps parsed keys; the
//! fetched document lives in shared data under `nhi-gate.jwks.<issuer>` as
//! `<fetched_at_ms>\n<jwks json>`, and a lease under `nhi-gate.lease.<issuer>`
//! (`<next_allowed_ms> <failures>`, updated by compare-and-swap) makes sure only
//! one worker fetches at a time, at most once per `min_refetch_seconds` after a
//! success (unknown `kid` cannot hammer the IdP) and with exponential backoff
//! after failures. The last good key set stays in place when a refresh fails.

use crate::approval::{self, Origin, Ticket, Verdict};
use crate::audit::{ApprovalRecord, Draft, IdentityRecord};
use crate::quota;
use crate::rls;
use crate::body::{self, BodyMode, Encoding};
use crate::config::{Config, KeySource, RequestMask, ResourceMask};
use crate::mask::{Counts, Masker, StreamKind, StreamMasker};
use crate::deny::Denial;
use crate::gate::{AuthError, Gate, KeyStore, Plan, QuotaPlan, TokenCache};
use crate::jwks::KeySet;
use crate::policy::Request;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

const TICK_MS: u64 = 100;
const MAX_BACKOFF_MS: u64 = 60_000;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { worker: Rc::new(RefCell::new(None)) }) });
}}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Per-provider state of remote keys in this worker.
#[derive(Default)]
struct Remote {
    /// CAS of the shared-data entry last parsed (the key-set generation).
    cas: Option<u32>,
    keys: Option<Rc<KeySet>>,
    fetched_at_ms: u64,
    /// `jwks_uri` path learned through discovery.
    discovered: Option<(String, String)>,
    /// A callout of ours is in flight.
    in_flight: bool,
    /// Someone asked for a refetch after an unknown `kid`.
    refetch_wanted: bool,
}

/// A request paused while keys are fetched.
struct Waiter {
    context_id: u32,
    provider: usize,
    deadline_ms: u64,
    /// Key generation seen when the request paused; new keys wake it.
    generation: Option<u64>,
    headers: Vec<(String, Vec<u8>)>,
}

enum CallKind {
    Discovery,
    Jwks,
}

/// State shared by the root context and the HTTP contexts of one worker VM.
struct Worker {
    gate: Rc<Gate>,
    cache: TokenCache,
    remote: Vec<Option<Remote>>,
    waiters: Vec<Waiter>,
    calls: HashMap<u32, (usize, CallKind)>,
    /// Streams that got a local reply (their body must not flow).
    denied: HashSet<u32>,
    /// Allowed streams whose bodies are masked: resource settings and method.
    masked: HashMap<u32, Rc<MaskedStream>>,
    /// Streams held for approval, until the service's verdict.
    holds: HashMap<u32, Hold>,
    /// Approval callouts dispatched by the root context: token → stream.
    approval_calls: HashMap<u32, u32>,
    /// Paused streams whose request already ended (body or trailers seen).
    ended: HashSet<u32>,
    /// Abandon notices for the approval service (sent from the root's tick).
    abandons: Vec<(Ticket, String)>,
    /// Audit records being assembled, by stream.
    drafts: HashMap<u32, Draft>,
    /// Streams of quota resources: checked and charged before forwarding, debited at the end.
    quotas: HashMap<u32, QuotaState>,
    /// Streams that wait for their whole request before it goes upstream
    /// (request masking, quota, sync audit); released by [`release`].
    gated: HashSet<u32>,
    /// Streams of sync-audit resources: `true` once their callout to the collector is out.
    syncs: HashMap<u32, bool>,
    /// Sync-audit callouts: token → stream.
    sync_calls: HashMap<u32, u32>,
    /// Rate-limit service checks: token → (stream, requested max_tokens).
    rls_calls: HashMap<u32, (u32, Option<u64>)>,
    /// Usage to debit at rate-limit services (sent from the root's tick).
    rls_debits: Vec<(crate::config::RlsService, rls::Descriptor, u32)>,
    /// Envoy's node id (for audit records).
    node: String,
    /// Pushing records to the collector, when configured.
    shipper: Option<Shipper>,
    /// Counter `nhi_gate_stream_tail_reset`: streamed responses reset at
    /// their trailers because masked bytes were still held (see [`Stream::response_trailers`]).
    tail_resets: Option<u32>,
}

/// Ships audit records to the collector: a queue shared by all workers
/// (proxy-wasm shared queue `nhi_gate_audit`), bounded by a shared counter
/// (`nhi_gate.audit.queued`, compare-and-swap), drained in batches by every
/// worker's tick; one batch in flight per worker, retried with backoff.
struct Shipper {
    queue: u32,
    /// Callout token of the batch in flight, and the batch.
    in_flight: Option<u32>,
    sending: Vec<Vec<u8>>,
    /// A batch that failed: retried before new records are taken.
    retry: Option<Vec<Vec<u8>>>,
    attempts: u32,
    next_ms: u64,
    /// Metrics (Envoy stats `wasmcustom.nhi_gate_audit_*`).
    sent: Option<u32>,
    failed: Option<u32>,
    dropped: Option<u32>,
}

const AUDIT_QUEUE: &str = "nhi_gate_audit";
const AUDIT_QUEUED_KEY: &str = "nhi_gate.audit.queued";

/// Adds `delta` to the shared queued-records counter with compare-and-swap;
/// with `limit`, refuses to go above it. Returns whether the change was made
/// (not when the shared data cannot be read, or after 16 conflicting
/// writes; a warning is logged: an increment refused drops the record from
/// shipping, a decrement lost leaves the count high, so the queue reads
/// full earlier — never unbounded).
fn queued_add(delta: i64, limit: Option<u64>) -> bool {
    for _ in 0..16 {
        let (cur, cas) = match hostcalls::get_shared_data(AUDIT_QUEUED_KEY) {
            Ok((Some(v), cas)) => (String::from_utf8_lossy(&v).parse::<u64>().unwrap_or(0), cas),
            Ok((None, _)) => (0, None),
            Err(e) => {
                log::warn!("audit: cannot read the queued-records count: {e:?}");
                return false;
            }
        };
        let next = if delta >= 0 { cur.saturating_add(delta.unsigned_abs()) } else { cur.saturating_sub(delta.unsigned_abs()) };
        if limit.is_some_and(|l| next > l) {
            return false;
        }
        if shared_write(AUDIT_QUEUED_KEY, next.to_string().as_bytes(), cas).is_ok() {
            return true;
        }
    }
    log::warn!("audit: the queued-records count kept changing under 16 writes; {delta:+} not applied");
    false
}

/// Envoy's node id: attribute `xds.node.id` (Envoy attributes, "xDS
/// attributes"); streams can read it, root contexts at configure time not always.
fn node_id() -> String {
    Some(property_text(vec!["xds", "node", "id"])).filter(|s| !s.is_empty()).unwrap_or_else(|| property_text(vec!["node", "id"]))
}

/// An Envoy attribute as text ("" when absent), e.g. `source.address`.
fn property_text(path: Vec<&str>) -> String {
    hostcalls::get_property(path).ok().flatten().map(|b| String::from_utf8_lossy(&b).to_string()).unwrap_or_default()
}

/// An audit record as JSON, written into a buffer sized up front for its
/// body texts (escaping may double them) rather than grown step by step.
fn record_json(record: &crate::audit::Record) -> Vec<u8> {
    let texts = record.request_body.as_ref().map_or(0, |b| b.text.len()) + record.response_body.as_ref().map_or(0, |b| b.text.len());
    let mut json = Vec::with_capacity(texts.saturating_mul(2).saturating_add(1024));
    match serde_json::to_writer(&mut json, record) {
        Ok(()) => json,
        Err(_) => Vec::new(),
    }
}

fn metric(id: Option<u32>, n: usize) {
    if let Some(id) = id {
        let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// A stream's token quota.
struct QuotaState {
    plan: QuotaPlan,
    /// Checked and counted (requests + 1): debit its usage when it ends.
    admitted: bool,
    /// Tokens reserved at admission ([`quota::reservation`]), settled at the end.
    reserved: u64,
}

/// A stream held for approval.
struct Hold {
    ticket: Ticket,
    origin: Origin,
    /// The callout is in flight.
    calling: bool,
}

impl KeyStore for Worker {
    fn keys(&self, index: usize) -> Option<(Rc<KeySet>, u64)> {
        match self.remote.get(index) {
            Some(Some(r)) => r.keys.clone().map(|k| (k, u64::from(r.cas.unwrap_or(0)))),
            _ => self.gate.inline_keys(index).map(|k| (k, 0)),
        }
    }
}

fn data_key(gate: &Gate, index: usize) -> String {
    let iss = gate.config.providers.get(index).map(|p| p.issuer.as_str()).unwrap_or("");
    format!("nhi-gate.jwks.{iss}")
}

fn lease_key(gate: &Gate, index: usize) -> String {
    let iss = gate.config.providers.get(index).map(|p| p.issuer.as_str()).unwrap_or("");
    format!("nhi-gate.lease.{iss}")
}

/// The fetch lease of one provider, shared by all workers:
/// `<next_ms> <failures> <last_ok_ms>` in shared data.
/// - `next_ms`: no fetch may start before it (a fetch in flight, or backoff after failures);
/// - `last_ok_ms`: the last successful fetch; refetches on an unknown `kid`
///   wait `min_refetch_seconds` after it, regular refreshes do not.
#[derive(Default)]
struct Lease {
    next_ms: u64,
    failures: u32,
    last_ok_ms: u64,
    cas: Option<u32>,
}

impl Lease {
    fn read(key: &str) -> Lease {
        match hostcalls::get_shared_data(key) {
            Ok((Some(v), cas)) => {
                let s = String::from_utf8_lossy(&v).to_string();
                let mut it = s.split(' ').map(|x| x.parse::<u64>().ok());
                let mut next = || it.next().flatten().unwrap_or(0);
                let next_ms = next();
                let failures = u32::try_from(next()).unwrap_or(u32::MAX);
                Lease { next_ms, failures, last_ok_ms: next(), cas }
            }
            _ => Lease::default(),
        }
    }

    /// Writes with compare-and-swap; false when another worker wrote first.
    fn write(&self, key: &str) -> bool {
        let v = format!("{} {} {}", self.next_ms, self.failures, self.last_ok_ms);
        shared_write(key, v.as_bytes(), self.cas).is_ok()
    }

    fn backoff_ms(failures: u32) -> u64 {
        1000u64.saturating_mul(1u64 << failures.min(6)).min(MAX_BACKOFF_MS)
    }

    /// Records a failed fetch: exponential backoff (1 s … 60 s).
    fn fail(key: &str, now: u64) -> u64 {
        let mut l = Lease::read(key);
        l.failures = l.failures.saturating_add(1);
        let backoff = Lease::backoff_ms(l.failures);
        l.next_ms = now.saturating_add(backoff);
        let _ = l.write(key);
        backoff
    }
}

impl Worker {
    /// Re-reads provider `i`'s keys from shared data if another worker (or we) stored new ones.
    fn sync(&mut self, i: usize) {
        let key = data_key(&self.gate, i);
        let Some(Some(r)) = self.remote.get_mut(i) else { return };
        let Ok((Some(bytes), cas)) = hostcalls::get_shared_data(&key) else { return };
        if cas.is_some() && cas == r.cas {
            return;
        }
        let split = bytes.iter().position(|b| *b == b'\n').unwrap_or(0);
        let (head, body) = bytes.split_at(split);
        let fetched = String::from_utf8_lossy(head).parse().unwrap_or(0);
        match KeySet::from_json(body.get(1..).unwrap_or_default()) {
            Ok(ks) => {
                r.keys = Some(Rc::new(ks));
                r.cas = cas;
                r.fetched_at_ms = fetched;
            }
            Err(e) => log::warn!("shared JWKS entry {key} unusable: {e}"),
        }
    }

    /// Whether an on-demand refetch (unknown `kid`) for provider `i` may start now.
    fn refetch_allowed(&self, i: usize, now: u64) -> bool {
        let l = Lease::read(&lease_key(&self.gate, i));
        let min_ms = self.gate.config.jwks_fetch.min_refetch_seconds.saturating_mul(1000);
        l.next_ms <= now && now >= l.last_ok_ms.saturating_add(min_ms)
    }

    /// Whether a fetch of provider `i`'s keys is running now, on this worker
    /// or (the shared lease held, no failure backoff, past the minimum
    /// refetch interval) on another: a request with an unknown `kid` waits
    /// for it rather than failing while it runs.
    fn fetch_in_flight(&self, i: usize, now: u64) -> bool {
        if matches!(self.remote.get(i), Some(Some(r)) if r.in_flight) {
            return true;
        }
        let l = Lease::read(&lease_key(&self.gate, i));
        let min_ms = self.gate.config.jwks_fetch.min_refetch_seconds.saturating_mul(1000);
        l.next_ms > now && l.failures == 0 && now >= l.last_ok_ms.saturating_add(min_ms)
    }

    fn fetch_due(&self, i: usize, now: u64) -> bool {
        let Some(Some(r)) = self.remote.get(i) else { return false };
        if r.in_flight {
            return false;
        }
        let refresh_ms = self.gate.config.jwks_fetch.refresh_seconds.saturating_mul(1000);
        r.keys.is_none() || r.refetch_wanted || now.saturating_sub(r.fetched_at_ms) >= refresh_ms
    }
}

struct Root {
    worker: Rc<RefCell<Option<Worker>>>,
}

impl Context for Root {
    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        let call = self.worker.borrow_mut().as_mut().and_then(|w| w.rls_calls.remove(&token));
        if let Some((context_id, max_tokens)) = call {
            // A check the root dispatched for a stream resumed after a JWKS wait.
            if hostcalls::set_effective_context(context_id).is_ok() {
                rls_answer(self, &self.worker, context_id, max_tokens, status, size);
            }
        }
    }

    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        if self.shipped(token) {
            return;
        }
        let sync = self.worker.borrow_mut().as_mut().and_then(|w| w.sync_calls.remove(&token));
        if let Some(context_id) = sync {
            if hostcalls::set_effective_context(context_id).is_ok() {
                sync_answer(&self.worker, context_id);
            }
            return;
        }
        let stream = self.worker.borrow_mut().as_mut().and_then(|w| w.approval_calls.remove(&token));
        if let Some(context_id) = stream {
            // An approval callout the root dispatched for a stream resumed after a JWKS wait.
            if hostcalls::set_effective_context(context_id).is_ok() {
                approval_answer(self, &self.worker, context_id, body_size);
            }
            return;
        }
        let status = self.get_http_call_response_header(":status");
        let body = self.get_http_call_response_body(0, body_size.min(crate::jwks::MAX_JWKS_BYTES + 1)).unwrap_or_default();
        let mut guard = self.worker.borrow_mut();
        let Some(w) = guard.as_mut() else { return };
        let Some((i, kind)) = w.calls.remove(&token) else { return };
        let now = now_ms();
        let gate = w.gate.clone();
        let lease = lease_key(&gate, i);
        let name = gate.config.providers.get(i).map(|p| p.name.clone()).unwrap_or_default();
        let ok_status = status.as_deref() == Some("200");
        let outcome: Result<Option<KeySet>, String> = if !ok_status {
            Err(format!("status {}", status.as_deref().unwrap_or("none (no :status)")))
        } else {
            match kind {
                CallKind::Discovery => {
                    let issuer = gate.config.providers.get(i).map(|p| p.issuer.as_str()).unwrap_or("");
                    crate::jwks::discovered_jwks_uri(&body, issuer).map(|loc| {
                        if let Some(Some(r)) = w.remote.get_mut(i) {
                            r.discovered = Some(loc);
                        }
                        None
                    })
                }
                CallKind::Jwks => KeySet::from_json(&body).map(Some),
            }
        };
        if let Some(Some(r)) = w.remote.get_mut(i) {
            r.in_flight = false;
        }
        match outcome {
            Ok(None) => {
                // Discovery answered: fetch the JWKS right away.
                drop(guard);
                self.start_fetch(i, now, true);
            }
            Ok(Some(ks)) => {
                for s in &ks.skipped {
                    log::info!("provider {name}: skipped JWK {s}");
                }
                let mut v = format!("{now}\n").into_bytes();
                v.extend_from_slice(&body);
                if let Err(e) = hostcalls::set_shared_data(&data_key(&gate, i), Some(&v), None) {
                    log::warn!("provider {name}: storing JWKS failed: {e:?}");
                }
                let l = Lease::read(&lease);
                let _ = Lease { next_ms: now, failures: 0, last_ok_ms: now, cas: l.cas }.write(&lease);
                if let Some(Some(r)) = w.remote.get_mut(i) {
                    r.refetch_wanted = false;
                }
                w.sync(i);
                log::info!("provider {name}: JWKS loaded ({} keys)", ks.keys.len());
                drop(guard);
                self.wake(now, Some(i));
            }
            Err(e) => {
                let backoff = Lease::fail(&lease, now);
                log::warn!("provider {name}: JWKS fetch failed ({e}); keeping last good keys, retry in {backoff} ms");
            }
        }
    }
}

impl Root {
    /// Claims the shared lease and dispatches the JWKS (or discovery) callout.
    fn start_fetch(&self, i: usize, now: u64, after_discovery: bool) {
        let mut guard = self.worker.borrow_mut();
        let Some(w) = guard.as_mut() else { return };
        let gate = w.gate.clone();
        let Some(p) = gate.config.providers.get(i) else { return };
        let fetch = &gate.config.jwks_fetch;
        let lease = lease_key(&gate, i);
        if !after_discovery {
            let mut l = Lease::read(&lease);
            if l.next_ms > now {
                return;
            }
            // An on-demand refetch (keys present, not yet due for refresh) waits min_refetch_seconds.
            let refresh_ms = fetch.refresh_seconds.saturating_mul(1000);
            let on_demand = matches!(w.remote.get(i), Some(Some(r)) if r.keys.is_some() && now.saturating_sub(r.fetched_at_ms) < refresh_ms);
            if on_demand && now < l.last_ok_ms.saturating_add(fetch.min_refetch_seconds.saturating_mul(1000)) {
                return;
            }
            // Hold the lease for the callout's duration; CAS makes one worker win.
            l.next_ms = now.saturating_add(fetch.timeout_ms).saturating_add(500);
            if !l.write(&lease) {
                return;
            }
        }
        let Some(Some(r)) = w.remote.get_mut(i) else { return };
        let (cluster, kind, authority, path) = match (&p.keys, &r.discovered) {
            (KeySource::Remote { cluster, authority, path }, _) => (cluster, CallKind::Jwks, authority.clone(), path.clone()),
            (KeySource::Discovery { cluster, .. }, Some((a, pth))) if after_discovery || r.keys.is_some() => {
                (cluster, CallKind::Jwks, a.clone(), pth.clone())
            }
            (KeySource::Discovery { cluster, authority, path }, _) => {
                (cluster, CallKind::Discovery, authority.clone(), path.clone())
            }
            (KeySource::Inline(_), _) => return,
        };
        let headers = vec![(":method", "GET"), (":path", path.as_str()), (":authority", authority.as_str()), ("accept", "application/json")];
        match self.dispatch_http_call(cluster, headers, None, vec![], Duration::from_millis(fetch.timeout_ms)) {
            Ok(token) => {
                r.in_flight = true;
                w.calls.insert(token, (i, kind));
            }
            Err(e) => {
                Lease::fail(&lease, now);
                log::warn!("provider {}: cannot call cluster {cluster}: {e:?}", p.name);
            }
        }
    }

    /// Resumes or rejects paused requests: those of `provider` (or all when
    /// `None`) whose keys changed, and any whose wait is over.
    fn wake(&self, now: u64, provider: Option<usize>) {
        let ready: Vec<Waiter> = {
            let mut guard = self.worker.borrow_mut();
            let Some(w) = guard.as_mut() else { return };
            let mut ready = Vec::new();
            let mut keep = Vec::new();
            for waiter in std::mem::take(&mut w.waiters) {
                let gen_now = w.keys(waiter.provider).map(|(_, g)| g);
                let changed = provider.is_none_or(|p| p == waiter.provider) && gen_now.is_some() && gen_now != waiter.generation;
                if changed || now >= waiter.deadline_ms {
                    ready.push(waiter);
                } else {
                    keep.push(waiter);
                }
            }
            w.waiters = keep;
            ready
        };
        for waiter in ready {
            if hostcalls::set_effective_context(waiter.context_id).is_err() {
                continue;
            }
            let outcome = {
                let mut guard = self.worker.borrow_mut();
                let Some(w) = guard.as_mut() else { return };
                decide(w, &waiter.headers, now / 1000, waiter.context_id).map_err(AuthError::into_denial)
            };
            let next = apply(outcome, &self.worker, Some(waiter.context_id), &waiter.headers, true);
            let ended = self.worker.borrow().as_ref().is_some_and(|w| w.ended.contains(&waiter.context_id));
            match next {
                Next::Hold | Next::Gate if ended => {
                    finish_request(self, &self.worker, waiter.context_id, true);
                }
                // The whole body waited with the headers and now goes upstream.
                Next::Continue if ended => capture_request(&self.worker, waiter.context_id, false, 0),
                _ => {}
            }
        }
    }

    /// Sends the next batch of audit records to the collector (one batch in
    /// flight per worker; a failed batch is retried with backoff first).
    fn ship(&self, now: u64) {
        let (batch, c) = {
            let mut guard = self.worker.borrow_mut();
            let Some(w) = guard.as_mut() else { return };
            let Some(c) = w.gate.config.audit.collector.clone() else { return };
            let Some(sh) = w.shipper.as_mut() else { return };
            if sh.in_flight.is_some() || now < sh.next_ms {
                return;
            }
            let batch = match sh.retry.take() {
                Some(b) => b,
                None => {
                    let mut b = Vec::new();
                    while b.len() < c.batch_max {
                        match hostcalls::dequeue_shared_queue(sh.queue) {
                            Ok(Some(r)) => {
                                queued_add(-1, None);
                                b.push(r);
                            }
                            _ => break,
                        }
                    }
                    b
                }
            };
            if batch.is_empty() {
                sh.next_ms = now.saturating_add(c.flush_ms);
                return;
            }
            (batch, c)
        };
        let mut body = b"{\"records\":[".to_vec();
        for (i, r) in batch.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(r);
        }
        body.extend_from_slice(b"]}");
        let sent = post_records(self, &c, &body);
        let mut guard = self.worker.borrow_mut();
        let Some(sh) = guard.as_mut().and_then(|w| w.shipper.as_mut()) else { return };
        match sent {
            Ok(token) => {
                sh.in_flight = Some(token);
                sh.sending = batch;
            }
            Err(e) => {
                log::warn!("audit: cannot call collector cluster {}: {e:?}", c.cluster);
                Self::shipping_failed(sh, batch, now);
            }
        }
    }

    fn shipping_failed(sh: &mut Shipper, batch: Vec<Vec<u8>>, now: u64) {
        metric(sh.failed, batch.len());
        sh.attempts = sh.attempts.saturating_add(1);
        sh.next_ms = now.saturating_add(500u64.saturating_mul(1u64 << sh.attempts.min(6)).min(30_000));
        sh.retry = Some(batch);
    }

    /// Handles the collector's answer if `token` is our batch in flight.
    fn shipped(&self, token: u32) -> bool {
        let mut guard = self.worker.borrow_mut();
        let Some(w) = guard.as_mut() else { return false };
        let flush_ms = w.gate.config.audit.collector.as_ref().map(|c| (c.flush_ms, c.batch_max));
        let Some(sh) = w.shipper.as_mut() else { return false };
        if sh.in_flight != Some(token) {
            return false;
        }
        sh.in_flight = None;
        let batch = std::mem::take(&mut sh.sending);
        let now = now_ms();
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status").ok().flatten();
        if status.as_deref() == Some("200") {
            metric(sh.sent, batch.len());
            sh.attempts = 0;
            let (flush, max) = flush_ms.unwrap_or((1000, 100));
            // A full batch means more are waiting: send again on the next tick.
            sh.next_ms = if batch.len() >= max { now } else { now.saturating_add(flush) };
        } else {
            log::warn!("audit: collector answered {} for {} records; retrying", status.as_deref().unwrap_or("nothing"), batch.len());
            Self::shipping_failed(sh, batch, now);
        }
        true
    }

    /// Debits finished streams' usage at rate-limit services (`hits_addend`).
    fn send_debits(&self) {
        let queued = match self.worker.borrow_mut().as_mut() {
            Some(w) => std::mem::take(&mut w.rls_debits),
            None => return,
        };
        for (svc, descriptor, hits) in queued {
            let msg = rls::encode_request(&svc.domain, &[descriptor], hits);
            if let Err(e) = self.dispatch_grpc_call(&svc.cluster, rls::SERVICE, rls::METHOD, vec![], Some(&msg), Duration::from_millis(svc.timeout_ms)) {
                log::warn!("quota: debit of {hits} tokens at {} not sent: {e:?}", svc.cluster);
            }
        }
    }

    /// Sends queued abandon notices (clients that hung up while held).
    fn send_abandons(&self) {
        let queued = match self.worker.borrow_mut().as_mut() {
            Some(w) => std::mem::take(&mut w.abandons),
            None => return,
        };
        for (ticket, hold_id) in queued {
            let headers = ticket.callout_headers(true);
            let refs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let body = approval::abandon_body(&hold_id);
            let cluster = ticket.settings.0.cluster.as_str();
            if let Err(e) = self.dispatch_http_call(cluster, refs, Some(&body), vec![], Duration::from_secs(5)) {
                log::warn!("approval: abandon notice for hold {hold_id} not sent: {e:?}");
            }
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::from_json(&bytes) {
            Ok(config) => {
                let remote = config
                    .providers
                    .iter()
                    .map(|p| match p.keys {
                        KeySource::Inline(_) => None,
                        _ => Some(Remote::default()),
                    })
                    .collect();
                let cache = TokenCache::new(config.token_cache_entries);
                let node = String::new(); // read from the first stream (see node_id)
                let shipper = match &config.audit.collector {
                    Some(_) => match hostcalls::register_shared_queue(AUDIT_QUEUE) {
                        Ok(queue) => Some(Shipper {
                            queue,
                            in_flight: None,
                            sending: Vec::new(),
                            retry: None,
                            attempts: 0,
                            next_ms: 0,
                            sent: hostcalls::define_metric(MetricType::Counter, "nhi_gate_audit_sent").ok(),
                            failed: hostcalls::define_metric(MetricType::Counter, "nhi_gate_audit_failed").ok(),
                            dropped: hostcalls::define_metric(MetricType::Counter, "nhi_gate_audit_dropped").ok(),
                        }),
                        Err(e) => {
                            log::error!("audit: cannot register the shared queue: {e:?}");
                            return false;
                        }
                    },
                    None => None,
                };
                log::info!(
                    "nhi-gate: configured {} providers, {} resources",
                    config.providers.len(),
                    config.resources.len()
                );
                *self.worker.borrow_mut() =
                    Some(Worker {
                        gate: Rc::new(Gate::new(config)),
                        cache,
                        remote,
                        waiters: Vec::new(),
                        calls: HashMap::new(),
                        denied: HashSet::new(),
                        masked: HashMap::new(),
                        holds: HashMap::new(),
                        approval_calls: HashMap::new(),
                        ended: HashSet::new(),
                        abandons: Vec::new(),
                        drafts: HashMap::new(),
                        quotas: HashMap::new(),
                        gated: HashSet::new(),
                        syncs: HashMap::new(),
                        sync_calls: HashMap::new(),
                        rls_calls: HashMap::new(),
                        rls_debits: Vec::new(),
                        node,
                        shipper,
                        tail_resets: hostcalls::define_metric(MetricType::Counter, "nhi_gate_stream_tail_reset").ok(),
                    });
                self.set_tick_period(Duration::from_millis(TICK_MS));
                true
            }
            Err(errors) => {
                for e in &errors {
                    log::error!("invalid configuration: {e}");
                }
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let now = now_ms();
        let due: Vec<usize> = {
            let mut guard = self.worker.borrow_mut();
            let Some(w) = guard.as_mut() else { return };
            let n = w.remote.len();
            for i in 0..n {
                w.sync(i);
            }
            (0..n).filter(|i| w.fetch_due(*i, now)).collect()
        };
        for i in due {
            self.start_fetch(i, now, false);
        }
        self.wake(now, None);
        self.send_abandons();
        self.ship(now);
        self.send_debits();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            context_id,
            worker: self.worker.clone(),
            response: Response::Pass,
            counts: Counts::new(),
            request_buffered: false,
            response_captured: false,
            text_started: false,
            token: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Runs the pipeline for one request's headers.
fn decide(w: &mut Worker, headers: &[(String, Vec<u8>)], now_s: u64, context_id: u32) -> Result<Plan, AuthError> {
    let refs: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
    let get = |name: &str| refs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v).unwrap_or_default();
    let gate = w.gate.clone();
    let mut cache = std::mem::replace(&mut w.cache, TokenCache::new(0));
    let id = gate.authenticate_digest(&refs, w, &mut cache, now_s);
    w.cache = cache;
    let method = String::from_utf8_lossy(get(":method")).to_string();
    let req = Request { authority: get(":authority"), path: get(":path"), method: &method };
    if let Some(d) = w.drafts.get_mut(&context_id) {
        if let Ok((identity, token_sha256)) = &id {
            d.identity = Some(IdentityRecord::with_digest(identity, token_sha256.clone()));
            d.session = identity.session.clone();
        }
        if let Ok(r) = gate.config.resource_for(&req) {
            d.resource = Some(r.name.clone());
            d.operation = Some(r.operation(&req).as_str());
        }
    }
    Ok(gate.authorize(&req, &refs, id?.0)?)
}

/// What the stream does after [`apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Allowed: the request flows (or was resumed).
    Continue,
    /// Allowed but held for approval: buffer the body, then call the service.
    Hold,
    /// Allowed but quota-checked: buffer the body, check, then forward.
    Gate,
    /// Refused with a local reply.
    Stop,
}

/// Applies a decision to the current (effective) stream: header changes on
/// allow, a local reply on deny. `resume` continues a paused request (not
/// when the plan holds it for approval).
fn apply(
    outcome: Result<Plan, Denial>,
    worker: &Rc<RefCell<Option<Worker>>>,
    context_id: Option<u32>,
    headers: &[(String, Vec<u8>)],
    resume: bool,
) -> Next {
    let request_id = headers
        .iter()
        .find(|(n, _)| n == "x-request-id")
        .map(|(_, v)| String::from_utf8_lossy(v).to_string())
        .unwrap_or_default();
    match outcome {
        Ok(plan) => {
            for name in &plan.remove {
                let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
            }
            for (name, value) in &plan.set {
                let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
            }
            if let (Some(m), Some(id)) = (&plan.mask, context_id) {
                let method = headers.iter().find(|(n, _)| n == ":method").map(|(_, v)| String::from_utf8_lossy(v).to_string()).unwrap_or_default();
                if let Some(w) = worker.borrow_mut().as_mut() {
                    w.masked.insert(id, Rc::new((m.clone(), method)));
                }
            }
            let subject = plan.identity.as_ref().map(|i| i.subject.as_str()).unwrap_or("");
            log::debug!("allow {request_id} subject={subject} resource={} op={}", plan.resource, plan.operation);
            if let (Some(q), Some(id), Some(w)) = (&plan.quota, context_id, worker.borrow_mut().as_mut()) {
                w.quotas.insert(id, QuotaState { plan: q.clone(), admitted: false, reserved: 0 });
            }
            if let (true, Some(id), Some(w)) = (plan.sync_audit, context_id, worker.borrow_mut().as_mut()) {
                w.syncs.insert(id, false);
            }
            if let (Some(ticket), Some(id)) = (&plan.hold, context_id) {
                let ticket = ticket.clone();
                let origin = Origin {
                    hold_id: hold_id(),
                    request_id,
                    source: property_text(vec!["source", "address"]),
                    time_ms: now_ms(),
                };
                if let Some(w) = worker.borrow_mut().as_mut() {
                    if let Some(d) = w.drafts.get_mut(&id) {
                        d.approval = Some(ApprovalRecord { hold_id: origin.hold_id.clone(), ..Default::default() });
                    }
                    w.holds.insert(id, Hold { ticket, origin, calling: false });
                }
                return Next::Hold;
            }
            let masks_request = plan.mask.as_ref().is_some_and(|m| m.requests.is_some());
            if let (true, Some(id)) = (plan.quota.is_some() || plan.sync_audit || masks_request, context_id) {
                if let Some(w) = worker.borrow_mut().as_mut() {
                    w.gated.insert(id);
                }
                return Next::Gate;
            }
            if let (Some(w), Some(id)) = (worker.borrow_mut().as_mut(), context_id) {
                if let Some(d) = w.drafts.get_mut(&id) {
                    d.forwarded_ms = Some(now_ms());
                }
            }
            if resume {
                let _ = hostcalls::resume_http_request();
            }
            Next::Continue
        }
        Err(d) => deny_reply(worker, context_id, &request_id, d, &[]),
    }
}

/// Sends the local reply of a denial to the current (effective) stream and
/// marks the stream refused; `extra` headers are added (e.g. `retry-after`).
fn deny_reply(worker: &Rc<RefCell<Option<Worker>>>, context_id: Option<u32>, request_id: &str, d: Denial, extra: &[(&'static str, String)]) -> Next {
    {
        {
            let realm = match worker.borrow_mut().as_mut() {
                Some(w) => {
                    if let Some(id) = context_id {
                        w.denied.insert(id);
                        w.holds.remove(&id);
                        if let Some(dr) = w.drafts.get_mut(&id) {
                            dr.refused = Some((d.status, d.reason));
                        }
                    }
                    w.gate.config.realm.clone()
                }
                None => "nhi-gate".into(),
            };
            let challenge = d.www_authenticate(&realm);
            let body = d.body(request_id);
            let mut h: Vec<(&str, &str)> = vec![("content-type", "application/json"), ("x-nhi-reason", d.reason)];
            if let Some(c) = &challenge {
                h.push(("www-authenticate", c));
            }
            h.extend(extra.iter().map(|(n, v)| (*n, v.as_str())));
            log::info!("deny {request_id} status={} reason={}", d.status, d.reason);
            let _ = hostcalls::send_http_response(d.status, h, Some(&body));
            Next::Stop
        }
    }
}

/// 32 random hex characters (Envoy provides randomness to wasm32-wasip1).
fn hold_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // Still unique per worker and time; the id is a key, not a secret.
        let t = now_ms().to_le_bytes();
        for (i, x) in t.iter().enumerate() {
            if let Some(slot) = b.get_mut(i) {
                *slot = *x;
            }
        }
    }
    approval::hex(&b)
}

/// Refuses the current (effective) stream with a local reply.
fn refuse(worker: &Rc<RefCell<Option<Worker>>>, context_id: u32, d: Denial) {
    refuse_with(worker, context_id, d, &[]);
}

/// [`refuse`] with extra reply headers.
fn refuse_with(worker: &Rc<RefCell<Option<Worker>>>, context_id: u32, d: Denial, extra: &[(&'static str, String)]) {
    let request_id = hostcalls::get_map_value(MapType::HttpRequestHeaders, "x-request-id").ok().flatten().unwrap_or_default();
    deny_reply(worker, Some(context_id), &request_id, d, extra);
}

/// proxy-wasm shared data as the store of quota counters.
struct HostStore;

/// Compare-and-swap write of shared data read as `(value, cas)`: `cas: None`
/// (the key was absent) creates the key only if it is still absent
/// ([`quota::SharedStore::create`]: Envoy ignores the token of a write to an
/// absent key, so a plain write would replace another worker's first write).
/// `Err(CasMismatch)` when another worker wrote first.
fn shared_write(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), quota::StoreError> {
    use quota::SharedStore;
    match cas {
        Some(_) => HostStore.set(key, value, cas),
        None => HostStore.create(key, value),
    }
}

impl quota::SharedStore for HostStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), quota::StoreError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(quota::StoreError::CasMismatch),
            Err(_) => Err(quota::StoreError::Failed),
        }
    }
}

/// The request has fully arrived (body end, trailers, or headers without a
/// body) on a stream that waited for it: check and charge its token quota
/// (also the `max_tokens` pre-check, and `stream_options.include_usage` on
/// streamed chat requests), then start its approval hold if it has one.
/// `Continue` when the request may go upstream now (from the root context,
/// `via_root`, it is resumed here). The effective context must be the stream.
fn finish_request(caller: &dyn Context, worker: &Rc<RefCell<Option<Worker>>>, context_id: u32, via_root: bool) -> Action {
    let (pending_quota, held) = match worker.borrow().as_ref() {
        Some(w) => (
            w.quotas.get(&context_id).filter(|q| !q.admitted).map(|q| q.plan.clone()),
            w.holds.contains_key(&context_id),
        ),
        None => return Action::Pause,
    };
    // The quota reads the request as the client sent it, before masking:
    // masked tool-input keys may become one key given twice
    // (`{"[EMAIL]": …, "[EMAIL]": …}`), which strict JSON refuses.
    let (mut asked, mut body) = (None, Vec::new());
    if pending_quota.is_some() {
        body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, MAX_CAPTURE_BYTES).ok().flatten().unwrap_or_default();
        let ctype = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "content-type").ok().flatten();
        asked = if !body.is_empty() && body::read_as_json(ctype.as_deref(), &body) {
            match body::strict_json(&body) {
                Ok(doc) => quota::requested_max_tokens_in(&doc),
                Err(_) => {
                    // A lenient backend (Python's json: NaN, a BOM; Go: both
                    // copies of a member given twice merged) would read what
                    // the quota could not: its max_tokens, n and stream.
                    refuse(worker, context_id, Denial { status: 400, reason: "invalid_json", detail: "the request body of a quota resource must be strict JSON (RFC 8259), each member name once".into() });
                    return Action::Pause;
                }
            }
        } else {
            quota::requested_max_tokens(&body)
        };
    }
    match mask_request_buffer(worker, context_id) {
        // the body as it goes upstream
        Ok(Some(masked)) => body = masked,
        Ok(None) => {}
        Err(d) => {
            refuse(worker, context_id, d);
            return Action::Pause;
        }
    }
    if let Some(plan) = pending_quota {
        let q = &plan.quota;
        let max_tokens = if q.check_max_tokens { asked } else { None };
        let reserved = quota::reservation(body.len(), asked.filter(|m| *m != u64::MAX));
        let path = hostcalls::get_map_value(MapType::HttpRequestHeaders, ":path").ok().flatten().unwrap_or_default();
        let with_usage = if quota::streams_usage_on_request(&path) { quota::ensure_include_usage(&body) } else { None };
        if let Some(with_usage) = with_usage {
            // Written past Envoy's buffer limit, Envoy would answer 413 from
            // inside the call (see `Stream::mask_buffered`).
            let limit = worker.borrow().as_ref().map_or(0, |w| w.gate.config.envoy_buffer_limit);
            if with_usage.len() > limit {
                refuse(worker, context_id, Denial { status: 413, reason: "request_too_large", detail: "request body larger than Envoy's buffer limit once stream usage is asked for".into() });
                return Action::Pause;
            }
            if let Err(e) = hostcalls::set_buffer(BufferType::HttpRequestBody, 0, body.len(), &with_usage) {
                log::warn!("quota: cannot ask for stream usage: {e:?}");
            }
        }
        if let Some(svc) = &q.service {
            // The budget lives in a rate-limit service: ask it (charging 1 token now,
            // the rest of the usage at the end); its answer continues the request.
            let msg = rls::encode_request(&svc.domain, &[rls_descriptor(&plan)], 1);
            let timeout = Duration::from_millis(svc.timeout_ms);
            match caller.dispatch_grpc_call(&svc.cluster, rls::SERVICE, rls::METHOD, vec![], Some(&msg), timeout) {
                Ok(token) => {
                    if let Some(w) = worker.borrow_mut().as_mut() {
                        w.rls_calls.insert(token, (context_id, max_tokens));
                    }
                }
                Err(e) => refuse(worker, context_id, quota::unavailable(format!("cannot call rate-limit cluster {}: {e:?}", svc.cluster))),
            }
            return Action::Pause;
        }
        let now_s = now_ms() / 1000;
        let outcome = quota::update(&HostStore, &plan.key, q.window, now_s, |c| {
            quota::check(q, &c, now_s, max_tokens).map(|()| quota::debit(quota::admit(c), reserved))
        });
        match outcome {
            Ok(_) => {
                if let Some(st) = worker.borrow_mut().as_mut().and_then(|w| w.quotas.get_mut(&context_id)) {
                    st.admitted = true;
                    st.reserved = reserved;
                }
            }
            Err(quota::UpdateError::Refused(ex)) => {
                refuse_with(worker, context_id, ex.denial(), &ex.headers());
                return Action::Pause;
            }
            Err(quota::UpdateError::Unavailable(e)) => {
                refuse(worker, context_id, quota::unavailable(e));
                return Action::Pause;
            }
        }
    }
    after_quota(caller, worker, context_id, via_root, held)
}

/// Masks the whole buffered request body (the prompt) in place when the
/// stream's resource masks requests; redaction counts go to its audit draft.
/// Returns the body written (`None`: the resource does not mask requests, or
/// the body is empty and passes as it is). Errors: 413 `request_too_large` over the
/// masking limit (before or after masking), 400 `invalid_json`.
fn mask_request_buffer(worker: &Rc<RefCell<Option<Worker>>>, context_id: u32) -> Result<Option<Vec<u8>>, Denial> {
    let Some((masker, settings)) = worker
        .borrow()
        .as_ref()
        .and_then(|w| Some((w.gate.config.masker.clone()?, w.masked.get(&context_id)?.clone())))
    else {
        return Ok(None);
    };
    let m = &settings.0;
    let Some(kind) = m.requests else { return Ok(None) };
    let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, m.max_buffer_bytes.saturating_add(1)).ok().flatten().unwrap_or_default();
    if body.len() > m.max_buffer_bytes {
        return Err(Denial { status: 413, reason: "request_too_large", detail: "request body larger than the masking limit".into() });
    }
    if body.is_empty() {
        // no body (a GET, a bodiless POST): nothing to mask
        return Ok(None);
    }
    let mut counts = Counts::new();
    let out = match kind {
        RequestMask::ChatMessages => body::mask_prompt(&masker, &body, &mut counts),
        RequestMask::Json => masker.mask_request_json(&body, &mut counts).map_err(|e| format!("{e:?}")),
    };
    let out = out.map_err(|e| Denial { status: 400, reason: "invalid_json", detail: format!("request body is not the JSON the policy masks: {e}") })?;
    // held to the limit after masking too: see `Stream::mask_buffered`
    if out.len() > m.max_buffer_bytes {
        return Err(Denial { status: 413, reason: "request_too_large", detail: "masked request body larger than the masking limit".into() });
    }
    if hostcalls::set_buffer(BufferType::HttpRequestBody, 0, body.len(), &out).is_err() {
        return Err(Denial { status: 502, reason: "unmaskable_body", detail: "the request body could not be rewritten".into() });
    }
    if let Some(d) = worker.borrow_mut().as_mut().and_then(|w| w.drafts.get_mut(&context_id)) {
        for (k, v) in counts {
            *d.request_masking.entry(k).or_insert(0) += v;
        }
    }
    Ok(Some(out))
}

/// The rest of [`finish_request`] once the quota admitted the request:
/// record the body, then the approval hold or release.
fn after_quota(caller: &dyn Context, worker: &Rc<RefCell<Option<Worker>>>, context_id: u32, resume: bool, held: bool) -> Action {
    // The whole request, as it goes upstream, in the audit record.
    capture_request(worker, context_id, false, 0);
    if held {
        start_approval(caller, worker, context_id, resume);
        return Action::Pause;
    }
    release(caller, worker, context_id, resume)
}

/// The RLS descriptor of a quota: `[("resource", name), ("issuer", iss), ("identity", key claim value)]`.
fn rls_descriptor(plan: &QuotaPlan) -> rls::Descriptor {
    rls::Descriptor {
        entries: vec![
            ("resource".into(), plan.resource.clone()),
            ("issuer".into(), plan.issuer.clone()),
            ("identity".into(), plan.identity.clone()),
        ],
    }
}

/// Handles the rate-limit service's answer for the current (effective)
/// stream: OK → admitted, the request continues; OVER_LIMIT → 429 with the
/// service's limit, remaining and reset; anything else → 503 `quota_unavailable`.
fn rls_answer(caller: &dyn Context, worker: &Rc<RefCell<Option<Worker>>>, context_id: u32, max_tokens: Option<u64>, status: u32, size: usize) {
    let Some(plan) = worker.borrow().as_ref().and_then(|w| w.quotas.get(&context_id)).map(|q| q.plan.clone()) else { return };
    let body = hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size.min(64 * 1024)).ok().flatten().unwrap_or_default();
    let answer = if status == 0 { rls::decode_response(&body) } else { Err(format!("gRPC status {status}")) };
    let q = &plan.quota;
    let window_reset = q.window.reset_in(now_ms() / 1000);
    match answer {
        Ok(a) if a.code == rls::Code::Ok || a.code == rls::Code::OverLimit => {
            let limit = a.limit.map(|(n, _)| u64::from(n)).unwrap_or(q.tokens);
            let remaining = u64::from(a.remaining.unwrap_or(0));
            let reset = a.reset_s.unwrap_or(window_reset).max(1);
            let over_max = max_tokens.is_some_and(|m| m > remaining);
            if a.code == rls::Code::OverLimit || over_max {
                let detail = if over_max && a.code == rls::Code::Ok {
                    format!("max_tokens is more than the {remaining} tokens left")
                } else {
                    format!("token budget of {limit} spent; resets in {reset} s")
                };
                let d = Denial { status: 429, reason: "quota_exceeded", detail };
                let mut headers = quota::ratelimit_headers(limit, remaining, reset);
                headers.retain(|(n, _)| *n != "retry-after");
                headers.push(("retry-after", reset.to_string()));
                return refuse_with(worker, context_id, d, &headers);
            }
            let held = match worker.borrow_mut().as_mut() {
                Some(w) => {
                    if let Some(st) = w.quotas.get_mut(&context_id) {
                        st.admitted = true;
                    }
                    w.holds.contains_key(&context_id)
                }
                None => return,
            };
            after_quota(caller, worker, context_id, true, held);
        }
        Ok(_) => refuse(worker, context_id, quota::unavailable("rate-limit service answered UNKNOWN")),
        Err(e) => refuse(worker, context_id, quota::unavailable(format!("rate-limit service failed: {e}"))),
    }
}

/// Lets a waiting request go upstream — after a synchronous audit of its
/// request part, when its resource asks for one (then `Pause`: the
/// collector's answer resumes it). `resume`: the stream is paused outside
/// its own body callback (root context, or a callout answer) and is resumed
/// here; otherwise `Continue` is for the caller to return.
fn release(caller: &dyn Context, worker: &Rc<RefCell<Option<Worker>>>, context_id: u32, resume: bool) -> Action {
    // None: no sync audit (or already acknowledged); Some(None): it cannot be sent.
    let sync: Option<Option<(crate::config::Collector, Vec<u8>)>> = {
        let mut guard = worker.borrow_mut();
        let Some(w) = guard.as_mut() else { return Action::Pause };
        match w.syncs.get(&context_id) {
            Some(false) => Some(w.gate.config.audit.collector.clone().zip(w.drafts.get(&context_id)).map(|(c, d)| {
                let rec = d.request_part(now_ms(), w.node.clone(), BTreeMap::new());
                (c, serde_json::to_vec(&serde_json::json!({"records": [rec]})).unwrap_or_default())
            })),
            _ => None,
        }
    };
    if let Some(ready) = sync {
        let Some((c, body)) = ready else {
            refuse(worker, context_id, audit_unavailable("no audit record to acknowledge".into()));
            return Action::Pause;
        };
        match post_records(caller, &c, &body) {
            Ok(token) => {
                if let Some(w) = worker.borrow_mut().as_mut() {
                    w.syncs.insert(context_id, true);
                    w.sync_calls.insert(token, context_id);
                }
            }
            Err(e) => refuse(worker, context_id, audit_unavailable(format!("cannot call the audit collector: {e:?}"))),
        }
        return Action::Pause;
    }
    if let Some(w) = worker.borrow_mut().as_mut() {
        w.gated.remove(&context_id);
        if let Some(d) = w.drafts.get_mut(&context_id) {
            d.forwarded_ms = Some(now_ms());
        }
    }
    if resume {
        let _ = hostcalls::resume_http_request();
    }
    Action::Continue
}

/// `POST {"records": [...]}` to the audit collector (docs/audit-record.md) from `caller`.
fn post_records(caller: &dyn Context, c: &crate::config::Collector, body: &[u8]) -> Result<u32, Status> {
    let auth = c.token.as_ref().map(|t| format!("Bearer {t}"));
    let mut headers = vec![(":method", "POST"), (":path", c.path.as_str()), (":authority", c.authority.as_str()), ("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    caller.dispatch_http_call(&c.cluster, headers, Some(body), vec![], Duration::from_millis(c.timeout_ms))
}

/// 503 `audit_unavailable`: a sync-audit record was not acknowledged (fail closed).
fn audit_unavailable(detail: String) -> Denial {
    Denial { status: 503, reason: "audit_unavailable", detail }
}

/// Handles the collector's answer to a sync-audit callout for the current
/// (effective) stream: 200 → forward; anything else → 503 `audit_unavailable`.
fn sync_answer(worker: &Rc<RefCell<Option<Worker>>>, context_id: u32) {
    let waiting = worker.borrow_mut().as_mut().and_then(|w| w.syncs.remove(&context_id)).is_some();
    if !waiting {
        return;
    }
    let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status").ok().flatten();
    if status.as_deref() != Some("200") {
        let got = status.unwrap_or_else(|| "no answer".into());
        return refuse(worker, context_id, audit_unavailable(format!("the audit collector did not acknowledge the record ({got})")));
    }
    if let Some(w) = worker.borrow_mut().as_mut() {
        w.gated.remove(&context_id);
        if let Some(d) = w.drafts.get_mut(&context_id) {
            d.forwarded_ms = Some(now_ms());
        }
    }
    let _ = hostcalls::resume_http_request();
}

/// Reads the held request's buffered body and dispatches its approval callout
/// from `caller` (the stream, or the root when it resumed the stream after a
/// JWKS wait: then the answer reaches the root, which routes it by token).
/// The effective context must be the stream.
fn start_approval(caller: &dyn Context, worker: &Rc<RefCell<Option<Worker>>>, context_id: u32, via_root: bool) {
    let Some((ticket, origin)) = worker
        .borrow()
        .as_ref()
        .and_then(|w| w.holds.get(&context_id))
        .filter(|h| !h.calling)
        .map(|h| (h.ticket.clone(), h.origin.clone()))
    else {
        return;
    };
    let settings = &ticket.settings.0;
    let max = settings.max_body_bytes;
    let body = match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, max.saturating_add(1)) {
        Ok(b) => b.unwrap_or_default(),
        Err(e) => return refuse(worker, context_id, approval::unavailable(format!("request body unreadable: {e:?}"))),
    };
    if body.len() > max {
        return refuse(worker, context_id, body_too_large(max));
    }
    let json = ticket.callout_body(&origin, &body);
    let headers = ticket.callout_headers(false);
    let refs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let timeout = Duration::from_millis(settings.hold_ms.saturating_add(settings.timeout_ms));
    match caller.dispatch_http_call(&settings.cluster, refs, Some(&json), vec![], timeout) {
        Ok(token) => {
            if let Some(w) = worker.borrow_mut().as_mut() {
                if let Some(h) = w.holds.get_mut(&context_id) {
                    h.calling = true;
                }
                if let Some(d) = w.drafts.get_mut(&context_id) {
                    d.request.reset();
                    d.request.push(&body);
                    d.request_seen = true;
                    d.approval_started_ms = Some(now_ms());
                }
                if via_root {
                    w.approval_calls.insert(token, context_id);
                }
            }
            log::info!(
                "hold {} request={} subject={} resource={} {} {} ({} bytes)",
                origin.hold_id,
                origin.request_id,
                ticket.identity.subject,
                ticket.resource,
                ticket.method,
                ticket.path,
                body.len()
            );
        }
        Err(e) => refuse(
            worker,
            context_id,
            approval::unavailable(format!("cannot call approval cluster {}: {e:?}", settings.cluster)),
        ),
    }
}

/// Largest request body read back for the audit record and approval digest.
const MAX_CAPTURE_BYTES: usize = 64 << 20;

/// Records the request body going upstream in the stream's audit draft:
/// `chunk_only` — the buffer holds just this callback's `size` bytes (append);
/// otherwise it holds the whole body so far (replace). The effective context
/// must be the stream.
fn capture_request(worker: &Rc<RefCell<Option<Worker>>>, context_id: u32, chunk_only: bool, size: usize) {
    let limit = if chunk_only { size } else { MAX_CAPTURE_BYTES };
    let data = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, limit).ok().flatten().unwrap_or_default();
    if let Some(d) = worker.borrow_mut().as_mut().and_then(|w| w.drafts.get_mut(&context_id)) {
        if !chunk_only {
            d.request.reset();
        }
        if !data.is_empty() || !chunk_only {
            d.request.push(&data);
            d.request_seen = true;
        }
    }
}

fn body_too_large(max: usize) -> Denial {
    Denial { status: 413, reason: "approval_body_too_large", detail: format!("requests held for approval carry at most {max} body bytes") }
}

/// Handles the approval service's answer for the current (effective) stream:
/// resume, 202 Accepted, or refuse. Ignored if the stream is no longer held.
fn approval_answer(caller: &dyn Context, worker: &Rc<RefCell<Option<Worker>>>, context_id: u32, body_size: usize) {
    let Some(hold) = worker.borrow_mut().as_mut().and_then(|w| w.holds.remove(&context_id)) else { return };
    let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status").ok().flatten();
    let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size.min(64 * 1024))
        .ok()
        .flatten()
        .unwrap_or_default();
    let id = &hold.origin.hold_id;
    let mut verdict = approval::verdict(status.as_deref(), &body);
    if let Verdict::Approved { approval_id, .. } = &verdict {
        if hold.ticket.approval_id.as_ref().is_some_and(|a| a != approval_id) {
            verdict = Verdict::Denied(approval::unavailable("approval service approved another approval than the one redeemed"));
        }
    }
    if let Some(d) = worker.borrow_mut().as_mut().and_then(|w| w.drafts.get_mut(&context_id)) {
        let now = now_ms();
        d.approval_wait_ms = d.approval_started_ms.map(|t| now.saturating_sub(t)).unwrap_or(0);
        if let Some(a) = &mut d.approval {
            match &verdict {
                Verdict::Approved { approval_id, approver } => {
                    a.outcome = Some("approved");
                    a.approval_id = Some(approval_id.clone());
                    a.approver = Some(approver.clone());
                    a.decided_ms = Some(now);
                    d.forwarded_ms = Some(now);
                }
                Verdict::Pending(p) => {
                    a.outcome = Some("pending");
                    a.approval_id = Some(p.approval_id.clone());
                    d.pending = true;
                }
                Verdict::Denied(den) => {
                    a.outcome = Some(if den.status == 503 { "unavailable" } else { "denied" });
                    // the redeemed approval, else the one the service names
                    // (a new request denied by an approver) and who denied it
                    let (named, approver) = if den.status == 503 { (None, None) } else { approval::answer_names(&body) };
                    a.approval_id = hold.ticket.approval_id.clone().or(named);
                    a.approver = approver;
                    a.decided_ms = Some(now);
                }
            }
        }
    }
    match verdict {
        Verdict::Approved { approval_id, approver } => {
            log::info!("approved hold {id} approval={approval_id} approver={approver}");
            release(caller, worker, context_id, true);
        }
        Verdict::Pending(p) => {
            if let Some(w) = worker.borrow_mut().as_mut() {
                w.denied.insert(context_id);
            }
            log::info!("pending hold {id} approval={}", p.approval_id);
            let retry = p.retry_after.to_string();
            let headers = vec![
                ("content-type", "application/json"),
                ("retry-after", retry.as_str()),
                ("x-nhi-reason", "approval_pending"),
                ("x-nhi-approval-id", p.approval_id.as_str()),
            ];
            let _ = hostcalls::send_http_response(202, headers, Some(&p.body()));
        }
        Verdict::Denied(d) => refuse(worker, context_id, d),
    }
}

/// One request.
struct Stream {
    context_id: u32,
    worker: Rc<RefCell<Option<Worker>>>,
    /// Response body handling chosen at response headers.
    response: Response,
    /// Values redacted in this stream, by detector (for the audit record).
    counts: Counts,
    /// The last request body callback paused (Envoy keeps buffering: the
    /// next callback's buffer holds the whole body so far).
    request_buffered: bool,
    /// The response body callback already captured what it sent on.
    response_captured: bool,
    /// A streamed text body's first bytes were seen (its byte-order mark is checked there).
    text_started: bool,
    /// The request's bearer token, read at the request headers (before
    /// `Authorization` is removed), to drop copies of it in request trailers.
    token: Option<String>,
}

/// Masking settings of one allowed stream: the resource's mask and the request method.
type MaskedStream = (Rc<ResourceMask>, String);

/// The response headers masking looks at.
#[derive(Default)]
struct ResponseHead {
    /// `:status`; 0 when missing or not a number.
    status: u32,
    ctype: Option<Vec<u8>>,
    cenc: Option<Vec<u8>>,
    /// `Content-Length` in bytes; `None` when missing or not a number.
    clen: Option<usize>,
}

/// What happens to the response body of one stream.
enum Response {
    Pass,
    /// Buffer the whole body, then mask (`gzip`: decode first).
    Buffer { mode: BodyMode, gzip: bool, limit: usize, reject: bool },
    /// Mask chunk by chunk.
    Stream(StreamMasker),
    /// A body that cannot be masked ([`BodyMode::Unmaskable`], with its
    /// reason): the headers wait; the first body byte is refused, an empty
    /// body passes.
    Unmaskable(&'static str),
}

impl Context for Stream {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let sync = self.worker.borrow_mut().as_mut().and_then(|w| w.sync_calls.remove(&token));
        if sync.is_some() {
            sync_answer(&self.worker, self.context_id);
        } else {
            approval_answer(self, &self.worker, self.context_id, body_size);
        }
    }

    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        let call = self.worker.borrow_mut().as_mut().and_then(|w| w.rls_calls.remove(&token));
        if let Some((context_id, max_tokens)) = call {
            rls_answer(self, &self.worker, context_id, max_tokens, status, size);
        }
    }

    fn on_done(&mut self) -> bool {
        if let Some(w) = self.worker.borrow_mut().as_mut() {
            w.waiters.retain(|x| x.context_id != self.context_id);
            w.denied.remove(&self.context_id);
            w.masked.remove(&self.context_id);
            w.ended.remove(&self.context_id);
            w.syncs.remove(&self.context_id);
            w.gated.remove(&self.context_id);
            if let Some(h) = w.holds.remove(&self.context_id) {
                if h.calling {
                    // The client hung up while held: never resumed; tell the service.
                    log::info!("abandoned hold {} request={}", h.origin.hold_id, h.origin.request_id);
                    w.abandons.push((h.ticket, h.origin.hold_id));
                }
            }
        }
        if !self.counts.is_empty() && log::log_enabled!(log::Level::Debug) {
            let summary: Vec<String> = self.counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
            log::debug!("masked context={} {}", self.context_id, summary.join(" "));
        }
        true
    }
}

/// Where a stream's request stands, for its body and trailer callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Allowed and not held: the request flows.
    Free,
    /// Waiting for JWKS keys (the root context decides later).
    Waiting,
    /// Held for approval: buffering the body (`calling == false`) or waiting
    /// for the service (`calling == true`).
    Held { calling: bool },
    /// Quota-checked at the request's end: buffering the body.
    Gated,
    /// Refused with a local reply (or no configuration).
    Refused,
}

impl Stream {
    /// Body and trailers of a request that is paused, held or refused must
    /// not move on: with `allow_on_headers_stop_iteration` a `Continue` from
    /// a body callback would release the request (fail open).
    fn standing(&self) -> Standing {
        let guard = self.worker.borrow();
        let Some(w) = guard.as_ref() else { return Standing::Refused };
        let id = self.context_id;
        if w.denied.contains(&id) {
            Standing::Refused
        } else if w.waiters.iter().any(|x| x.context_id == id) {
            Standing::Waiting
        } else if let Some(h) = w.holds.get(&id) {
            Standing::Held { calling: h.calling }
        } else if w.syncs.get(&id) == Some(&true) {
            Standing::Held { calling: true }
        } else if w.gated.contains(&id) {
            Standing::Gated
        } else {
            Standing::Free
        }
    }

    /// Records that this paused request has ended (for the root context,
    /// which may resume it after a JWKS wait and must then start its hold).
    fn mark_ended(&self) {
        if let Some(w) = self.worker.borrow_mut().as_mut() {
            w.ended.insert(self.context_id);
        }
    }

    /// Opens this stream's audit draft at its request headers.
    fn start_audit(&self, headers: &[(String, Vec<u8>)], now: u64) {
        let get = |name: &str| {
            headers.iter().find(|(n, _)| n == name).map(|(_, v)| String::from_utf8_lossy(v).to_string()).unwrap_or_default()
        };
        let mut guard = self.worker.borrow_mut();
        let Some(w) = guard.as_mut() else { return };
        let a = &w.gate.config.audit;
        let mut d = Draft::new(now, get("x-request-id"), get(":method"), get(":authority"), &get(":path"), (a.max_request_bytes, a.max_response_bytes));
        d.source = property_text(vec!["source", "address"]);
        w.drafts.insert(self.context_id, d);
    }

    /// Records response bytes sent on to the client (after masking).
    fn capture_response(&mut self, data: &[u8]) {
        self.response_captured = true;
        if let Some(d) = self.worker.borrow_mut().as_mut().and_then(|w| w.drafts.get_mut(&self.context_id)) {
            d.response.push(data);
            d.response_seen = true;
        }
    }

    fn response_done(&self) {
        if let Some(d) = self.worker.borrow_mut().as_mut().and_then(|w| w.drafts.get_mut(&self.context_id)) {
            d.response_done = true;
        }
    }

    /// Finishes this stream's audit record: Envoy filter state
    /// `wasm.nhi_gate_audit` (for access loggers) and, with a collector, the
    /// shared queue (bounded: over `queue_max` the record is dropped and counted).
    fn finish_audit(&mut self) {
        let status = hostcalls::get_property(vec!["response", "code"])
            .ok()
            .flatten()
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(|b| u32::try_from(u64::from_le_bytes(b)).unwrap_or(0))
            .unwrap_or(0);
        let mut guard = self.worker.borrow_mut();
        let Some(w) = guard.as_mut() else { return };
        let Some(mut d) = w.drafts.remove(&self.context_id) else { return };
        let details = property_text(vec!["response", "code_details"]);
        // The client left (e.g. while the filter buffered a masked body): no
        // reply of Envoy's, and the client got no status.
        let client_left = details.starts_with("downstream_remote_disconnect");
        let status = if client_left && !d.response_done { 0 } else { status };
        if status != 0 && !details.is_empty() && details != "via_upstream" && d.refused.is_none() && !d.pending {
            d.envoy_reply = Some(details);
        }
        if w.node.is_empty() {
            w.node = node_id();
        }
        let credentials = w.gate.config.credentials.clone();
        d.response.redact(&credentials);
        d.request.redact(&credentials);
        let admitted = w.quotas.remove(&self.context_id).filter(|q| q.admitted);
        // A response cut short is estimated: its tail may end right after
        // something the model wrote (a `usage` object in tool input).
        let mut usage = match (d.usage_body && d.response_done, d.usage_lines) {
            (true, true) => quota::usage_from_lines(d.response.tail()),
            (true, false) => quota::usage_from_tail(d.response.tail()),
            (false, _) => None,
        };
        if let Some(q) = &admitted {
            let u = usage.get_or_insert_with(|| quota::estimate(d.request.size(), d.response.size())).total_tokens;
            if let Some(svc) = &q.plan.quota.service {
                // One token was charged by the check.
                let rest = u32::try_from(u.saturating_sub(1)).unwrap_or(u32::MAX);
                if rest > 0 {
                    w.rls_debits.push((svc.clone(), rls_descriptor(&q.plan), rest));
                }
            }
        }
        if let Some(q) = admitted.as_ref().filter(|q| q.plan.quota.service.is_none()) {
            let used = usage.as_ref().map(|u| u.total_tokens).unwrap_or(0);
            let completed = d.response_done && status != 0 && status < 500 && d.refused.is_none();
            let u = quota::charge(used, q.reserved, completed);
            let now_s = now_ms() / 1000;
            // Settled in the window the request started in; a new window starts from zero.
            let debited = quota::update(&HostStore, &q.plan.key, q.plan.quota.window, now_s, |c| {
                let reserved = if c.window_start == q.plan.quota.window.start(d.time_ms / 1000) { q.reserved } else { 0 };
                Ok::<_, ()>(quota::settle(c, reserved, u))
            });
            if let Err(e) = debited {
                log::warn!("quota: debit of {u} tokens for {} failed: {e:?}", d.request_id);
            }
        }
        let mut masking = self.counts.clone();
        for (k, v) in &d.request_masking {
            *masking.entry(k.clone()).or_insert(0) += v;
        }
        let record = d.finish(now_ms(), w.node.clone(), status, masking, usage);
        let json = record_json(&record);
        let queue = w.shipper.as_ref().map(|sh| (sh.queue, sh.dropped));
        let queue_max = w.gate.config.audit.collector.as_ref().map(|c| c.queue_max).unwrap_or(0);
        drop(guard);
        if let Err(e) = hostcalls::set_property(vec!["nhi_gate_audit"], Some(&json)) {
            log::warn!("audit: cannot set filter state: {e:?}");
        }
        if let Some((queue, dropped)) = queue {
            let queued = queued_add(1, Some(queue_max)) && {
                let ok = hostcalls::enqueue_shared_queue(queue, Some(&json)).is_ok();
                if !ok {
                    queued_add(-1, None);
                }
                ok
            };
            if !queued {
                metric(dropped, 1);
                log::warn!("audit: collector queue full, record {} dropped", record.request_id);
            }
        }
    }

    /// Largest body of this held stream (its resource's approval setting).
    fn max_held_body(&self) -> usize {
        self.worker
            .borrow()
            .as_ref()
            .and_then(|w| w.holds.get(&self.context_id))
            .map(|h| h.ticket.settings.0.max_body_bytes)
            .unwrap_or(0)
    }
}

impl Stream {
    /// The masker and this stream's masking settings (resource mask, request
    /// method), if its bodies are masked. Reference-counted: cheap per chunk.
    fn masker(&self) -> Option<(Rc<Masker>, Rc<MaskedStream>)> {
        let guard = self.worker.borrow();
        let w = guard.as_ref()?;
        let settings = w.masked.get(&self.context_id)?.clone();
        Some((w.gate.config.masker.clone()?, settings))
    }

    /// Local reply from the response path (headers not yet sent downstream).
    /// Resets a response whose headers already went out (the status can
    /// no longer change), recording `reason` in the audit record as the
    /// filter's refusal: the client did not abort, the filter cut it.
    fn reset_response(&mut self, reason: &'static str) -> Action {
        self.response = Response::Pass;
        if let Some(d) = self.worker.borrow_mut().as_mut().and_then(|w| w.drafts.get_mut(&self.context_id)) {
            d.refused = Some((502, reason));
        }
        let _ = hostcalls::reset_http_response();
        Action::Pause
    }

    fn fail(&mut self, status: u32, reason: &'static str, detail: &str) -> Action {
        self.response = Response::Pass;
        let d = Denial { status, reason, detail: detail.to_string() };
        let headers = self.get_http_request_headers_bytes();
        apply(Err(d), &self.worker, Some(self.context_id), &headers, false);
        Action::Pause
    }
}

impl HttpContext for Stream {
    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        let was_buffered = self.request_buffered;
        let action = self.request_body(size, eos);
        if action == Action::Continue {
            // What goes upstream now: the whole buffer after a pause, else this chunk.
            capture_request(&self.worker, self.context_id, !was_buffered, size);
        }
        self.request_buffered = action == Action::Pause;
        action
    }

    fn on_http_response_body(&mut self, size: usize, eos: bool) -> Action {
        self.response_captured = false;
        let action = self.response_body(size, eos);
        if action == Action::Continue {
            if !self.response_captured {
                let chunk = hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size).ok().flatten().unwrap_or_default();
                self.capture_response(&chunk);
            }
            if eos {
                self.response_done();
            }
        }
        action
    }

    fn on_log(&mut self) {
        self.finish_audit();
    }

    fn on_http_request_headers(&mut self, _n: usize, eos: bool) -> Action {
        let headers: Vec<(String, Vec<u8>)> = self.get_http_request_headers_bytes();
        if !eos {
            // (a request without a body has no trailers)
            let gate = self.worker.borrow().as_ref().map(|w| w.gate.clone());
            if let Some(gate) = gate {
                let refs: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
                self.token = gate.request_token(&refs);
            }
        }
        let now = now_ms();
        self.start_audit(&headers, now);
        let outcome = {
            let mut guard = self.worker.borrow_mut();
            let Some(w) = guard.as_mut() else {
                drop(guard);
                apply(Err(Denial { status: 503, reason: "not_configured", detail: "filter has no configuration".into() }), &self.worker, Some(self.context_id), &headers, false);
                return Action::Pause;
            };
            match decide(w, &headers, now / 1000, self.context_id) {
                Err(AuthError::NeedKeys { provider, .. }) => {
                    w.sync(provider);
                    match decide(w, &headers, now / 1000, self.context_id) {
                        Err(AuthError::NeedKeys { provider, unknown_kid }) => {
                            let remote = matches!(w.remote.get(provider), Some(Some(_)));
                            let fetch = w.gate.config.jwks_fetch.clone();
                            let wait_ms = if !remote {
                                None
                            } else if unknown_kid {
                                (w.refetch_allowed(provider, now) || w.fetch_in_flight(provider, now)).then_some(fetch.timeout_ms.saturating_add(1000))
                            } else {
                                Some(fetch.cold_start_wait_ms)
                            };
                            match wait_ms {
                                Some(ms) if ms > 0 => {
                                    let generation = w.keys(provider).map(|(_, g)| g);
                                    if let Some(Some(r)) = w.remote.get_mut(provider) {
                                        r.refetch_wanted |= unknown_kid;
                                    }
                                    w.waiters.push(Waiter {
                                        context_id: self.context_id,
                                        provider,
                                        deadline_ms: now.saturating_add(ms),
                                        generation,
                                        headers,
                                    });
                                    return Action::Pause;
                                }
                                _ => Err(AuthError::NeedKeys { provider, unknown_kid }.into_denial()),
                            }
                        }
                        other => other.map_err(AuthError::into_denial),
                    }
                }
                other => other.map_err(AuthError::into_denial),
            }
        };
        if let Some(d) = self.worker.borrow_mut().as_mut().and_then(|w| w.drafts.get_mut(&self.context_id)) {
            d.auth_ms = now_ms().saturating_sub(now);
        }
        match apply(outcome, &self.worker, Some(self.context_id), &headers, false) {
            Next::Continue => Action::Continue,
            Next::Stop => Action::Pause,
            Next::Hold | Next::Gate => {
                if eos {
                    return finish_request(self, &self.worker, self.context_id, false);
                }
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _n: usize, eos: bool) -> Action {
        let masker = self.masker();
        // One host call: the content type alone, or (masked, or with backend
        // credentials to look for) the whole map. A header read that finds a
        // value costs about two thirds of reading the whole map (Envoy calls
        // back into the module to allocate the copy), so the four headers
        // masking needs are not read one by one (scripts/bench-mask.sh
        // --instructions: ~12k vs ~18k instructions per read). Envoy joins a repeated Content-Type or
        // Content-Encoding into one value (tests/test_leaks_repeated_response_headers.py).
        let mut head = ResponseHead::default();
        let credentials = self.worker.borrow().as_ref().map(|w| w.gate.config.credentials.clone()).unwrap_or_else(|| Rc::from([]));
        if masker.is_some() || !credentials.is_empty() {
            for (name, value) in self.get_http_response_headers_bytes() {
                // a backend credential echoed back (a reflected header, a
                // redirect, an error) never reaches the job
                if credentials.iter().any(|c| memchr::memmem::find(&value, c.as_bytes()).is_some()) {
                    log::warn!("context={}: response header {name} held a backend credential: removed", self.context_id);
                    *self.counts.entry("backend_credential".to_string()).or_insert(0) += 1;
                    self.set_http_response_header(&name, None);
                    continue;
                }
                match name.as_str() {
                    ":status" => head.status = std::str::from_utf8(&value).ok().and_then(|s| s.parse().ok()).unwrap_or(0),
                    // repeated: joined, as Envoy joins them (several types: unmaskable)
                    "content-type" => match &mut head.ctype {
                        Some(v) => {
                            v.push(b',');
                            v.extend_from_slice(&value);
                        }
                        None => head.ctype = Some(value),
                    },
                    "content-encoding" => head.cenc = Some(value),
                    "content-length" => head.clen = std::str::from_utf8(&value).ok().and_then(|s| s.trim().parse().ok()),
                    _ => {}
                }
            }
        } else {
            head.ctype = self.get_http_response_header_bytes("content-type");
        }
        let ctype = head.ctype.as_deref().unwrap_or_default().to_ascii_lowercase();
        let usage_body = ctype.windows(4).any(|w| w == b"json") || ctype.windows(12).any(|w| w == b"event-stream");
        let media = body::media_type(&ctype);
        let usage_lines = body::JSON_LINES.contains(&media.as_str());
        if let Some(d) = self.worker.borrow_mut().as_mut().and_then(|w| w.drafts.get_mut(&self.context_id)) {
            d.usage_body = usage_body;
            d.usage_lines = usage_lines;
        }
        let action = match masker {
            Some(m) => self.response_headers(m, head, eos),
            None => Action::Continue,
        };
        if eos && action == Action::Continue {
            self.response_done();
        }
        action
    }

    fn on_http_request_trailers(&mut self, n: usize) -> Action {
        // The request-header rules hold for trailers too (Envoy forwards
        // them after the body): no job token, identity header, method
        // override, range or header the gateway sets upstream comes this way.
        let gate = self.worker.borrow().as_ref().map(|w| w.gate.clone());
        if let Some(gate) = gate {
            let trailers = self.get_http_request_trailers_bytes();
            // a copy of the job's token in any trailer is dropped too (the
            // token was read at the headers, before Authorization went)
            for (name, value) in trailers {
                let carries = self.token.as_deref().is_some_and(|t| crate::gate::carries_token(t, &value));
                if carries || gate.config.strips_trailer(&name.to_ascii_lowercase()) {
                    self.set_http_request_trailer(&name, None);
                }
            }
        }
        let action = self.request_trailers(n);
        if action == Action::Continue && self.request_buffered {
            // The body was held until now and goes upstream as a whole.
            capture_request(&self.worker, self.context_id, false, 0);
        }
        action
    }

    fn on_http_response_trailers(&mut self, n: usize) -> Action {
        // a backend credential echoed in a trailer is dropped, as in a header
        let credentials = self.worker.borrow().as_ref().map(|w| w.gate.config.credentials.clone()).unwrap_or_else(|| Rc::from([]));
        if !credentials.is_empty() {
            for (name, value) in self.get_http_response_trailers_bytes() {
                if credentials.iter().any(|c| memchr::memmem::find(&value, c.as_bytes()).is_some()) {
                    *self.counts.entry("backend_credential".to_string()).or_insert(0) += 1;
                    self.set_http_response_trailer(&name, None);
                }
            }
        }
        let action = self.response_trailers(n);
        if action == Action::Continue {
            self.response_done();
        }
        action
    }
}

impl Stream {
    /// Response headers of a stream whose bodies are masked (`masker`, its
    /// settings): decides how the body is handled.
    fn response_headers(&mut self, (masker, settings): (Rc<Masker>, Rc<MaskedStream>), head: ResponseHead, eos: bool) -> Action {
        let (m, method) = (&settings.0, &settings.1);
        let ResponseHead { status, ctype, cenc, clen } = head;
        let mode = body::response_mode(m, method, status, ctype.as_deref());
        if mode == BodyMode::Pass {
            return Action::Continue;
        }
        if let BodyMode::Unmaskable(reason) = mode {
            if eos {
                return Action::Continue;
            }
            // refused at its first byte; an empty body (e.g. chunked) passes
            self.response = Response::Unmaskable(reason);
            return Action::Pause;
        }
        let gzip = match body::encoding(cenc.as_deref()) {
            Encoding::Identity => false,
            Encoding::Gzip => true,
            Encoding::Unsupported => return self.fail(502, "unmaskable_encoding", "the upstream answered with a content encoding the filter cannot decode"),
        };
        // (a gzip body loses its Content-Encoding only once it is written
        // back decoded: a body passed over the limit keeps it)
        if eos {
            return Action::Continue;
        }
        self.response = match (mode, gzip) {
            (BodyMode::Sse, false) => Response::Stream(masker.stream(StreamKind::Sse)),
            (BodyMode::StreamText, false) => Response::Stream(masker.stream(StreamKind::Text)),
            (BodyMode::JsonLines, false) => Response::Stream(masker.stream(StreamKind::JsonLines)),
            // A body announced over the limit is refused (or passed) now,
            // before Envoy buffers it: past Envoy's own buffer limit Envoy
            // would answer 500 itself, without the filter's reason.
            _ if clen.is_some_and(|n| n > m.max_buffer_bytes) => {
                if m.reject_over_limit {
                    return self.fail(502, "response_too_large", "response body larger than the masking limit");
                }
                log::warn!("response over the masking limit passed unmasked (over_limit: pass)");
                return Action::Continue;
            }
            (mode, gzip) => Response::Buffer { mode, gzip, limit: m.max_buffer_bytes, reject: m.reject_over_limit },
        };
        match self.response {
            // The headers wait for the whole body: Content-Length is set
            // then, to the length of what is sent.
            Response::Buffer { .. } => Action::Pause,
            // Streamed: the headers go now, the length is not known.
            _ => {
                self.set_http_response_header("content-length", None);
                Action::Continue
            }
        }
    }

    fn request_trailers(&mut self, _n: usize) -> Action {
        let held = match self.standing() {
            Standing::Waiting => {
                self.mark_ended();
                return Action::Pause;
            }
            Standing::Refused | Standing::Held { calling: true } => return Action::Pause,
            Standing::Held { calling: false } | Standing::Gated => true,
            Standing::Free => false,
        };
        if held {
            // The body ended with trailers: it is complete; masking, quota, then approval.
            return finish_request(self, &self.worker, self.context_id, false);
        }
        Action::Continue
    }

    /// A response body that ends with trailers: its last body callback had
    /// no end of stream, so a streamed body may still hold bytes. Envoy does
    /// not let a filter add body bytes at trailers time (the body buffer of a
    /// streamed response is gone: `proxy_set_buffer_bytes` answers
    /// `BadArgument`), so held bytes can be neither sent nor dropped silently:
    /// the stream is reset (the client sees an incomplete response, as when
    /// Envoy's own buffer limits are hit after the headers went out), with a
    /// warning and the counter `nhi_gate_stream_tail_reset`. Nothing held (an
    /// SSE stream whose events and choices were complete, e.g. after
    /// `data: [DONE]`): the trailers pass.
    fn response_trailers(&mut self, _n: usize) -> Action {
        match &mut self.response {
            // Buffered for masking and ended with trailers: the whole body is
            // in Envoy's buffer (its last chunk was paused), so it is masked
            // now, before anything goes out.
            Response::Buffer { mode, gzip, limit, .. } => {
                let (mode, gzip, limit) = (*mode, *gzip, *limit);
                let Some((masker, _)) = self.masker() else {
                    return self.fail(502, "unmaskable_body", "masking settings missing for a buffered body");
                };
                match hostcalls::get_buffer(BufferType::HttpResponseBody, 0, limit.saturating_add(1)) {
                    Ok(raw) => {
                        let raw = raw.unwrap_or_default();
                        if raw.len() > limit {
                            return self.fail(502, "response_too_large", "response body larger than the masking limit");
                        }
                        self.mask_buffered(&masker, raw, mode, gzip, limit, true)
                    }
                    Err(_) => self.fail(502, "unmaskable_body", "the buffered body could not be read at trailers time"),
                }
            }
            Response::Stream(sm) => {
                let held = sm.held();
                if held == 0 {
                    self.response = Response::Pass;
                    return Action::Continue;
                }
                // Never sent: neither the held bytes nor their masked form
                // (what they held is counted all the same).
                let _ = sm.finish(&mut self.counts);
                log::warn!(
                    "context={}: streamed response ended with trailers while {held} bytes were held for masking; Envoy cannot send them now: resetting the stream",
                    self.context_id
                );
                let id = self.worker.borrow().as_ref().and_then(|w| w.tail_resets);
                metric(id, 1);
                self.reset_response("stream_tail_reset")
            }
            Response::Pass => Action::Continue,
            // no body byte came (the first would have been refused)
            Response::Unmaskable(_) => Action::Continue,
        }
    }
}

impl Stream {
    fn request_body(&mut self, size: usize, eos: bool) -> Action {
        let held = match self.standing() {
            Standing::Waiting => {
                if eos {
                    self.mark_ended();
                }
                return Action::Pause;
            }
            Standing::Refused | Standing::Held { calling: true } => return Action::Pause,
            Standing::Held { calling: false } => true,
            Standing::Gated | Standing::Free => false,
        };
        let waits = held || self.standing() == Standing::Gated;
        if held && size > self.max_held_body() {
            refuse(&self.worker, self.context_id, body_too_large(self.max_held_body()));
            return Action::Pause;
        }
        if let Some((_, settings)) = self.masker().filter(|(_, s)| s.0.requests.is_some()) {
            if size > settings.0.max_buffer_bytes {
                return self.fail(413, "request_too_large", "request body larger than the masking limit");
            }
        }
        if waits {
            if eos {
                return finish_request(self, &self.worker, self.context_id, false);
            }
            return Action::Pause;
        }
        Action::Continue
    }

    fn response_body(&mut self, size: usize, eos: bool) -> Action {
        let Some((masker, _)) = self.masker() else { return Action::Continue };
        if let Response::Stream(_) = self.response {
            let chunk = self.get_http_response_body(0, size).unwrap_or_default();
            let at_start = !self.text_started;
            self.text_started = true;
            if body::not_text(&chunk, at_start) {
                // UTF-16/32 text (NUL bytes, byte-order marks): the detectors
                // would see nothing. The headers are gone: reset the stream.
                log::warn!("context={}: streamed text body is not UTF-8 or ASCII text: resetting the stream", self.context_id);
                return self.reset_response("unmaskable_charset");
            }
            let Response::Stream(sm) = &mut self.response else { return Action::Continue };
            let mut out = sm.push(&chunk, &mut self.counts);
            if eos {
                out.extend(sm.finish(&mut self.counts));
            }
            if let Err(e) = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, size, &out) {
                // The headers are gone; the chunk's own bytes must not flow on.
                log::warn!("context={}: masked body chunk could not be written ({e:?}): resetting the stream", self.context_id);
                return self.reset_response("unmaskable_body");
            }
            self.capture_response(&out);
            return Action::Continue;
        }
        match &mut self.response {
            Response::Pass | Response::Stream(_) => Action::Continue,
            Response::Unmaskable(reason) if size > 0 => {
                let reason: &'static str = reason;
                let detail = match reason {
                    "unmaskable_partial_content" => "a partial (206) answer cannot be masked: a value may be cut at the range's edge",
                    "unmaskable_charset" => "the response's charset is not ASCII-compatible, so its values cannot be found",
                    _ => "the response has no single Content-Type that the resource masks",
                };
                self.fail(502, reason, detail)
            }
            Response::Unmaskable(_) if eos => {
                self.response = Response::Pass;
                Action::Continue
            }
            Response::Unmaskable(_) => Action::Pause,
            Response::Buffer { mode, gzip, limit, reject } => {
                let (mode, gzip, limit, reject) = (*mode, *gzip, *limit, *reject);
                if size > limit {
                    if reject {
                        return self.fail(502, "response_too_large", "response body larger than the masking limit");
                    }
                    log::warn!("response over the masking limit passed unmasked (over_limit: pass)");
                    self.response = Response::Pass;
                    return Action::Continue;
                }
                if !eos {
                    return Action::Pause;
                }
                let raw = self.get_http_response_body(0, size).unwrap_or_default();
                self.mask_buffered(&masker, raw, mode, gzip, limit, false)
            }
        }
    }

    /// Masks a whole buffered response body `raw` (Envoy's buffer holds it;
    /// the response headers are still paused) and writes the result back.
    /// `trailers`: the body ended with trailers, so it goes out chunked
    /// (no `Content-Length`); otherwise `Content-Length` is set to the
    /// length sent. Fails closed (local reply) on gzip, JSON or write
    /// errors, and when the masked body is longer than `limit` (502
    /// `response_too_large`).
    fn mask_buffered(&mut self, masker: &Masker, raw: Vec<u8>, mode: BodyMode, gzip: bool, limit: usize, trailers: bool) -> Action {
        let size = raw.len();
        let plain: std::borrow::Cow<[u8]> = if gzip {
            match body::gunzip(&raw, limit) {
                Ok(p) => p.into(),
                Err(e) => return self.fail(502, "unmaskable_encoding", &e),
            }
        } else {
            raw.as_slice().into()
        };
        let out = match mode {
            BodyMode::Json => match masker.mask_json_changes(&plain, &mut self.counts) {
                Ok(Some(o)) => o,
                // nothing to redact: Envoy's buffer already holds the exact bytes
                Ok(None) if !gzip => {
                    self.response = Response::Pass;
                    self.capture_response(&raw);
                    return Action::Continue;
                }
                Ok(None) => plain.into_owned(),
                Err(_) => return self.fail(502, "unmaskable_body", "the upstream's JSON body could not be parsed for masking"),
            },
            BodyMode::Sse | BodyMode::JsonLines => {
                let kind = if mode == BodyMode::Sse { StreamKind::Sse } else { StreamKind::JsonLines };
                let mut sm = masker.stream(kind);
                let mut o = sm.push(&plain, &mut self.counts);
                o.extend(sm.finish(&mut self.counts));
                o
            }
            _ if body::not_text(&plain, true) => return self.fail(502, "unmaskable_charset", "the response body is not UTF-8 or ASCII text, so its values cannot be found"),
            _ => masker.mask_text(&String::from_utf8_lossy(&plain), &mut self.counts).into_bytes(),
        };
        // Redaction can lengthen a body (`a@b.co` → `[EMAIL]`, keyed-hash
        // tokens). Envoy holds the paused body to its buffer limit; writing
        // more makes Envoy send its own 500 from inside this call, which
        // re-enters the module and aborts the VM. The masked body is held to
        // the masking limit, which must not exceed Envoy's.
        if out.len() > limit {
            return self.fail(502, "response_too_large", "masked body larger than the masking limit");
        }
        if hostcalls::set_buffer(BufferType::HttpResponseBody, 0, size, &out).is_err() {
            return self.fail(502, "unmaskable_body", "the masked body could not be written back");
        }
        self.response = Response::Pass;
        // the headers are still held (paused at response headers)
        if gzip {
            self.set_http_response_header("content-encoding", None);
        }
        if trailers {
            self.set_http_response_header("content-length", None);
        } else {
            self.set_http_response_header("content-length", Some(&out.len().to_string()));
        }
        self.capture_response(&out);
        Action::Continue
    }
}
