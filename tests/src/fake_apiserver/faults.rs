//! What tests script and inspect through the handle: faults (a status code, a delay, a request
//! that never gets an answer, a dropped connection) for the requests they match, and the log of
//! every request received (method, path, query, content type, body, arrival time, status sent).

use super::status::{reason_for, ApiError};
use serde_json::Value;
use std::time::{Duration, Instant};

/// What a fault does to a request it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAction {
    /// Answers with this `Status` instead of serving the request.
    Respond(ApiError),
    /// Waits this long, then serves the request (a slow API: past the client's timeout, the
    /// client has given up by then).
    Delay(Duration),
    /// Never answers; the connection stays open until the client gives up or the server stops
    /// listening.
    Hang,
    /// Closes the connection without an answer.
    Disconnect,
}

/// A scripted fault: which requests it matches and what it does to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    method: Option<String>,
    path_prefix: Option<String>,
    watch: Option<bool>,
    remaining: Option<u32>,
    pub action: FaultAction,
}

impl Fault {
    fn new(action: FaultAction) -> Fault {
        Fault {
            method: None,
            path_prefix: None,
            watch: None,
            remaining: None,
            action,
        }
    }

    /// Answers with `code` and the reason the real server gives with it (403 `Forbidden`, 429
    /// `TooManyRequests` with `Retry-After: 1`, 500 `InternalError`, ...).
    pub fn status(code: u16) -> Fault {
        let mut error = ApiError::new(code, reason_for(code), format!("scripted failure {code}"));
        if code == 429 {
            error.retry_after = Some(1);
        }
        Fault::new(FaultAction::Respond(error))
    }

    /// Answers with this exact error.
    pub fn error(error: ApiError) -> Fault {
        Fault::new(FaultAction::Respond(error))
    }

    /// Serves the request after `delay`.
    pub fn delay(delay: Duration) -> Fault {
        Fault::new(FaultAction::Delay(delay))
    }

    /// Never answers.
    pub fn hang() -> Fault {
        Fault::new(FaultAction::Hang)
    }

    /// Drops the connection.
    pub fn disconnect() -> Fault {
        Fault::new(FaultAction::Disconnect)
    }

    /// Only requests with this method (`GET`, `PATCH`, ...).
    pub fn method(mut self, method: &str) -> Fault {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    /// Only requests whose path starts with `prefix` (`/api/v1/nodes/n1/status`,
    /// `/apis/coordination.k8s.io/`).
    pub fn path(mut self, prefix: &str) -> Fault {
        self.path_prefix = Some(prefix.to_string());
        self
    }

    /// Only watches (`true`) or only requests that are not watches (`false`).
    pub fn watches(mut self, watch: bool) -> Fault {
        self.watch = Some(watch);
        self
    }

    /// Only the next `n` matching requests; then the fault is gone.
    pub fn times(mut self, n: u32) -> Fault {
        self.remaining = Some(n);
        self
    }

    /// Replaces the message of a `status` fault.
    pub fn message(mut self, message: &str) -> Fault {
        if let FaultAction::Respond(error) = &mut self.action {
            error.message = message.to_string();
        }
        self
    }

    fn matches(&self, method: &str, path: &str, watch: bool) -> bool {
        self.method.as_deref().is_none_or(|m| m == method)
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
            && self.watch.is_none_or(|w| w == watch)
    }
}

/// The scripted faults, first match wins.
#[derive(Debug, Default)]
pub struct Faults(Vec<Fault>);

impl Faults {
    pub fn add(&mut self, fault: Fault) {
        self.0.push(fault);
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// The action for a request, using up one of a limited fault's times.
    pub fn take(&mut self, method: &str, path: &str, watch: bool) -> Option<FaultAction> {
        let index = self.0.iter().position(|f| f.matches(method, path, watch))?;
        let fault = &mut self.0[index];
        let action = fault.action.clone();
        if let Some(remaining) = &mut fault.remaining {
            *remaining -= 1;
            if *remaining == 0 {
                self.0.remove(index);
            }
        }
        Some(action)
    }
}

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Sequence number, from 1.
    pub id: u64,
    pub at: Instant,
    pub method: String,
    pub path: String,
    /// The raw query string (percent-encoded), empty when there was none.
    pub query: String,
    pub content_type: Option<String>,
    pub body: String,
    /// The HTTP status sent; `None` while unanswered (a hang, a watch still streaming is 200).
    pub status: Option<u16>,
}

impl RecordedRequest {
    /// A query parameter, decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// Whether this is a watch (`watch=true` or `watch=1`).
    pub fn is_watch(&self) -> bool {
        matches!(self.param("watch").as_deref(), Some("true" | "1"))
    }

    /// The body as JSON, when it is.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }
}

/// The log of requests.
#[derive(Debug, Default)]
pub struct RequestLog {
    entries: Vec<RecordedRequest>,
    next_id: u64,
}

impl RequestLog {
    /// Records an arriving request; its id, to set the status later.
    pub fn record(
        &mut self,
        method: &str,
        path: &str,
        query: &str,
        content_type: Option<String>,
        body: String,
    ) -> u64 {
        self.next_id += 1;
        self.entries.push(RecordedRequest {
            id: self.next_id,
            at: Instant::now(),
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            content_type,
            body,
            status: None,
        });
        self.next_id
    }

    pub fn set_status(&mut self, id: u64, status: u16) {
        if let Some(entry) = self.entries.iter_mut().rev().find(|e| e.id == id) {
            entry.status = Some(status);
        }
    }

    pub fn entries(&self) -> Vec<RecordedRequest> {
        self.entries.clone()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_fault_wins_and_limited_ones_run_out() {
        let mut faults = Faults::default();
        faults.add(
            Fault::status(409)
                .method("put")
                .path("/apis/coordination.k8s.io/")
                .times(2),
        );
        faults.add(Fault::hang().watches(true));
        faults.add(Fault::status(500));
        let lease = "/apis/coordination.k8s.io/v1/namespaces/n/leases/x";
        for _ in 0..2 {
            assert!(
                matches!(faults.take("PUT", lease, false), Some(FaultAction::Respond(e)) if e.code == 409)
            );
        }
        assert!(
            matches!(faults.take("PUT", lease, false), Some(FaultAction::Respond(e)) if e.code == 500)
        );
        assert_eq!(
            faults.take("GET", "/api/v1/pods", true),
            Some(FaultAction::Hang)
        );
        faults.clear();
        assert_eq!(faults.take("GET", "/api/v1/pods", true), None);
    }

    #[test]
    fn too_many_requests_says_when_to_retry() {
        let FaultAction::Respond(error) = Fault::status(429).action else {
            panic!("a status fault responds");
        };
        assert_eq!(error.reason, "TooManyRequests");
        assert_eq!(error.retry_after, Some(1));
    }

    #[test]
    fn recorded_requests_decode_their_query() {
        let mut log = RequestLog::default();
        let id = log.record(
            "GET",
            "/api/v1/pods",
            "fieldSelector=spec.nodeName%3Dn1&watch=true",
            None,
            String::new(),
        );
        log.set_status(id, 200);
        let entry = &log.entries()[0];
        assert_eq!(
            entry.param("fieldSelector").as_deref(),
            Some("spec.nodeName=n1")
        );
        assert!(entry.is_watch());
        assert_eq!(entry.status, Some(200));
    }
}
