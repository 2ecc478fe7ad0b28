//! Errors as the real API server sends them: a `Status` object (`kind: Status`, `status:
//! Failure`, `reason`, `message`, `details`, `code`) with the HTTP code, and the messages of the
//! common cases worded as the real server words them.

use super::resources::ResourceType;
use serde_json::{json, Value};

/// A failed request: HTTP code, `reason` and `message` of its `Status` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: String,
    pub message: String,
    /// `details`: the object's name, group and kind (the plural, as the real server puts it).
    pub details: Option<Value>,
    /// `Retry-After` seconds (429 and some 5xx).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A failure with any code and reason.
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason: reason.to_string(),
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    fn about(mut self, resource: &ResourceType, name: &str) -> ApiError {
        self.details = Some(json!({
            "name": name,
            "group": resource.group,
            "kind": resource.plural,
        }));
        self
    }

    /// 404 `NotFound`: `nodes "x" not found`.
    pub fn not_found(resource: &ResourceType, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", resource.qualified_plural()),
        )
        .about(resource, name)
    }

    /// 409 `AlreadyExists` on create.
    pub fn already_exists(resource: &ResourceType, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", resource.qualified_plural()),
        )
        .about(resource, name)
    }

    /// 409 `Conflict` on a stale resourceVersion (or UID) precondition.
    pub fn conflict(resource: &ResourceType, name: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                resource.qualified_plural()
            ),
        )
        .about(resource, name)
    }

    /// 400 `BadRequest`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    /// 422 `Invalid`: the object (or the patched object) breaks a rule.
    pub fn invalid(resource: &ResourceType, name: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(
            422,
            "Invalid",
            format!(
                "{} \"{name}\" is invalid: {}",
                resource.kind,
                message.into()
            ),
        )
        .about(resource, name)
    }

    /// 405 `MethodNotAllowed`.
    pub fn method_not_allowed(method: &str) -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )
    }

    /// 415 `UnsupportedMediaType`.
    pub fn unsupported_media_type(content_type: &str) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"),
        )
    }

    /// 410 `Expired`: a watch or list from a resourceVersion older than the history kept.
    pub fn expired(requested: u64, oldest: u64) -> ApiError {
        ApiError::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        let mut details = self.details.clone();
        if let Some(seconds) = self.retry_after {
            details
                .get_or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("details is an object")
                .insert("retryAfterSeconds".into(), json!(seconds));
        }
        if let Some(details) = details {
            status["details"] = details;
        }
        status
    }
}

/// The reason the real server gives with a code, for scripted failures.
pub fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

/// A `Status` of success (the answer to some deletes).
pub fn success(resource: &ResourceType, name: &str, uid: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "group": resource.group, "kind": resource.plural, "uid": uid},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_apiserver::resources::LEASES;

    #[test]
    fn a_conflict_names_the_object_as_the_real_server_does() {
        let status = ApiError::conflict(&LEASES, "slot-0").to_status();
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["status"], "Failure");
        assert_eq!(status["reason"], "Conflict");
        assert_eq!(status["code"], 409);
        assert_eq!(status["details"]["kind"], "leases");
        assert_eq!(status["details"]["group"], "coordination.k8s.io");
        assert!(status["message"]
            .as_str()
            .unwrap()
            .starts_with("Operation cannot be fulfilled on leases.coordination.k8s.io \"slot-0\""));
    }

    #[test]
    fn retry_after_goes_into_the_details() {
        let mut error = ApiError::new(429, reason_for(429), "slow down");
        error.retry_after = Some(2);
        assert_eq!(error.to_status()["details"]["retryAfterSeconds"], 2);
    }
}
