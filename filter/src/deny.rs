//! Denials and their local replies: status, machine-readable reason, and the
//! `WWW-Authenticate` challenge of RFC 6750 §3.

/// Why a request was refused. `status` is the HTTP status of the local reply
/// (400, 401, 403, 413, 502, 503); `reason` is a short snake_case word that clients
/// and audit records match on (`expired`, `group_not_allowed`, ...);
/// `detail` is a human sentence, never containing token material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub status: u32,
    pub reason: &'static str,
    pub detail: String,
}

impl Denial {
    /// 401: the caller's credential is missing or invalid.
    pub fn unauthorized(reason: &'static str, detail: impl Into<String>) -> Self {
        Denial { status: 401, reason, detail: detail.into() }
    }

    /// 400: the request carries its credential in a way RFC 6750 §2 forbids
    /// (`invalid_request`, §3.1).
    pub fn bad_request(reason: &'static str, detail: impl Into<String>) -> Self {
        Denial { status: 400, reason, detail: detail.into() }
    }

    /// 403: the caller is authenticated but the policy does not allow the request.
    pub fn forbidden(reason: &'static str, detail: impl Into<String>) -> Self {
        Denial { status: 403, reason, detail: detail.into() }
    }

    /// The `WWW-Authenticate` value for this denial, if any (RFC 6750 §3):
    /// a request without a token gets a bare challenge, an invalid token gets
    /// `error="invalid_token"`, a missing scope `error="insufficient_scope"`.
    pub fn www_authenticate(&self, realm: &str) -> Option<String> {
        let realm = quote_free(realm);
        let desc = quote_free(&self.detail);
        match (self.status, self.reason) {
            (401, "missing_token") => Some(format!("Bearer realm=\"{realm}\"")),
            (400, _) => Some(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_request\", error_description=\"{}: {desc}\"",
                self.reason
            )),
            (401, _) => Some(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}: {desc}\"",
                self.reason
            )),
            (403, "scope_missing") => Some(format!(
                "Bearer realm=\"{realm}\", error=\"insufficient_scope\", error_description=\"{desc}\""
            )),
            _ => None,
        }
    }

    /// The JSON body of the local reply:
    /// `{"error": ..., "reason": ..., "detail": ..., "request_id": ...}`,
    /// `error` by status: 400 `invalid_request`, 401 `unauthorized`, 403
    /// `forbidden`, 413 `payload_too_large`, 429 `too_many_requests`, 502
    /// `bad_gateway`, 503 `unavailable`.
    pub fn body(&self, request_id: &str) -> Vec<u8> {
        let error = match self.status {
            400 => "invalid_request",
            401 => "unauthorized",
            403 => "forbidden",
            413 => "payload_too_large",
            429 => "too_many_requests",
            502 => "bad_gateway",
            503 => "unavailable",
            _ => "error",
        };
        let v = serde_json::json!({
            "error": error,
            "reason": self.reason,
            "detail": self.detail,
            "request_id": request_id,
        });
        let mut out = v.to_string().into_bytes();
        out.push(b'\n');
        out
    }
}

/// Drops characters that would break a quoted-string in a header value
/// (RFC 9110 §5.6.4): quotes, backslashes and control characters.
fn quote_free(s: &str) -> String {
    s.chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_shapes_follow_rfc6750() {
        let d = Denial::unauthorized("missing_token", "no bearer token");
        assert_eq!(d.www_authenticate("r").as_deref(), Some("Bearer realm=\"r\""));
        let d = Denial::unauthorized("expired", "token \"expired\"");
        assert_eq!(
            d.www_authenticate("r").as_deref(),
            Some("Bearer realm=\"r\", error=\"invalid_token\", error_description=\"expired: token expired\"")
        );
        assert!(Denial::forbidden("group_not_allowed", "x").www_authenticate("r").is_none());
        let d = Denial::forbidden("scope_missing", "needs rag");
        assert!(d.www_authenticate("r").unwrap_or_default().contains("insufficient_scope"));
    }

    #[test]
    fn body_error_names_the_status() {
        for (status, want) in [
            (400, "invalid_request"),
            (401, "unauthorized"),
            (403, "forbidden"),
            (413, "payload_too_large"),
            (429, "too_many_requests"),
            (502, "bad_gateway"),
            (503, "unavailable"),
        ] {
            let d = Denial { status, reason: "r", detail: String::new() };
            let v: serde_json::Value = serde_json::from_slice(&d.body("id")).unwrap_or_default();
            assert_eq!(v["error"], want, "{status}");
        }
    }

    #[test]
    fn body_is_json_with_reason_and_request_id() {
        let b = Denial::forbidden("no_matching_resource", "x").body("abc");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
        assert_eq!(v["error"], "forbidden");
        assert_eq!(v["reason"], "no_matching_resource");
        assert_eq!(v["request_id"], "abc");
    }
}
