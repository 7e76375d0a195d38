//! Group policy: which resource a request targets, whether it reads or
//! writes, and whether the caller's verified groups and scopes allow it.
//! Default deny: no matching resource, or an operation with no groups
//! configured, is refused.

use crate::config::{Config, GroupRule, Resource};
use crate::deny::Denial;
use serde_json::{Map, Value};

/// Operation class of a request (policy decides groups per class).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    Read,
    Write,
}

impl OpClass {
    /// Default class by method: GET, HEAD and OPTIONS read, all others write.
    pub fn default_for(method: &str) -> OpClass {
        match method {
            "GET" | "HEAD" | "OPTIONS" => OpClass::Read,
            _ => OpClass::Write,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OpClass::Read => "read",
            OpClass::Write => "write",
        }
    }
}

/// A path pattern: `*` matches within one segment (no `/`), `**` matches
/// across segments (any characters). Other characters match themselves.
#[derive(Debug, Clone)]
pub struct Glob {
    pattern: Vec<u8>,
    /// The pattern has a `**` (a star that crosses `/`), found once here
    /// rather than on every request.
    deep: bool,
}

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        let pattern = pattern.as_bytes().to_vec();
        let deep = pattern.windows(2).any(|w| w == b"**");
        Glob { pattern, deep }
    }

    /// The pattern as written.
    pub fn pattern(&self) -> &str {
        std::str::from_utf8(&self.pattern).unwrap_or_default()
    }

    /// The literal part before the first `*`: every path the glob matches
    /// starts with it (a trailing slash is only ever added, never removed).
    pub fn literal_prefix(&self) -> &[u8] {
        let end = self.pattern.iter().position(|b| *b == b'*').unwrap_or(self.pattern.len());
        self.pattern.get(..end).unwrap_or_default()
    }

    /// Whether `path` (without query string) matches. One trailing slash
    /// is not significant (`/a/export/` matches `/a/*/export`): most web
    /// frameworks route both forms to the same handler. Without `**`,
    /// segment by segment (literal ones compared); starred segments, and
    /// patterns with `**`, by one pass over the pattern keeping the set of
    /// matched path prefixes: O(len(path) × len(pattern)) at worst,
    /// whatever the number of stars.
    pub fn matches(&self, path: &[u8]) -> bool {
        self.matches_exactly(path) || path.strip_suffix(b"/").is_some_and(|p| !p.is_empty() && self.matches_exactly(p))
    }

    /// Whether `s` matches, its trailing slash significant.
    fn matches_exactly(&self, s: &[u8]) -> bool {
        if self.deep {
            return glob_nfa(&self.pattern, s);
        }
        // Without `**` no star crosses a `/`, so the pattern's k-th `/` can
        // only match the path's k-th `/`: segments match pair by pair, and
        // the literal ones (most of them) are compared rather than simulated.
        let (mut ps, mut ss) = (self.pattern.split(|b| *b == b'/'), s.split(|b| *b == b'/'));
        loop {
            match (ps.next(), ss.next()) {
                (None, None) => return true,
                (Some(a), Some(b)) if a.contains(&b'*') => {
                    if !glob_nfa(a, b) {
                        return false;
                    }
                }
                (Some(a), Some(b)) if a == b => {}
                _ => return false,
            }
        }
    }
}

fn glob_nfa(p: &[u8], s: &[u8]) -> bool {
    // reach[j]: the pattern read so far matches exactly s[..j]. Exhaustive
    // backtracking would cost O(len(s)^stars) on request-controlled paths.
    let mut reach = vec![false; s.len() + 1];
    let mut next = vec![false; s.len() + 1];
    if let Some(r) = reach.first_mut() {
        *r = true;
    }
    let mut rest = p;
    while let Some((&c, after)) = rest.split_first() {
        next.fill(false);
        if c == b'*' {
            let deep = after.first() == Some(&b'*');
            rest = if deep { after.get(1..).unwrap_or_default() } else { after };
            // A star extends any reached prefix by bytes other than '/'
            // (or by any bytes for `**`).
            let mut carry = false;
            for (j, (n, r)) in next.iter_mut().zip(reach.iter()).enumerate() {
                if !deep && j > 0 && s.get(j - 1) == Some(&b'/') {
                    carry = false;
                }
                carry |= *r;
                *n = carry;
            }
        } else {
            rest = after;
            for (j, b) in s.iter().enumerate() {
                if *b == c && reach.get(j) == Some(&true) {
                    if let Some(n) = next.get_mut(j + 1) {
                        *n = true;
                    }
                }
            }
        }
        std::mem::swap(&mut reach, &mut next);
        if !reach.contains(&true) {
            return false;
        }
    }
    reach.last() == Some(&true)
}

/// The verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Provider name (from config).
    pub provider: String,
    pub issuer: String,
    /// `sub` claim ("" if absent).
    pub subject: String,
    /// Groups from the provider's group claim.
    pub groups: Vec<String>,
    /// Scopes from `scope` (space-delimited, RFC 8693 §4.2) or `scp` (array or string).
    pub scopes: Vec<String>,
    /// Whether the token carries Azure AD group-overage markers.
    pub groups_overage: bool,
    /// `jti` claim (RFC 7519 §4.1.7), "" if absent.
    pub jti: String,
    /// `azp` claim (OpenID Connect Core §2), "" if absent.
    pub azp: String,
    /// The audit session: value of the policy's `audit.session_claim`, if set and present.
    pub session: Option<String>,
    /// All verified claims (e.g. for a quota keyed by a claim such as `repository`).
    pub claims: std::rc::Rc<Map<String, Value>>,
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        // space-delimited (RFC 8693 §4.2 `scope`; a string `groups`): only
        // U+0020 separates, so `team\u{a0}admins` is one name, not `admins`
        Value::String(s) => s.split(' ').filter(|p| !p.is_empty()).map(str::to_string).collect(),
        Value::Array(a) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

impl Identity {
    /// Builds the identity from verified claims. `groups_claim` is a dot path;
    /// the value may be an array, a single string or a space-delimited string.
    pub fn from_claims(provider: &str, issuer: &str, groups_claim: &[String], claims: &Map<String, Value>) -> Identity {
        Identity::from_shared_claims(provider, issuer, groups_claim, &std::rc::Rc::new(claims.clone()))
    }

    /// [`Identity::from_claims`] keeping a reference to already shared
    /// claims (e.g. a verified-token cache entry) instead of copying them.
    pub fn from_shared_claims(provider: &str, issuer: &str, groups_claim: &[String], shared: &std::rc::Rc<Map<String, Value>>) -> Identity {
        let claims: &Map<String, Value> = shared;
        let mut cur: Option<&Value> = None;
        for (i, seg) in groups_claim.iter().enumerate() {
            cur = if i == 0 { claims.get(seg) } else { cur.and_then(|v| v.get(seg)) };
        }
        let groups = cur.map(strings).unwrap_or_default();
        let mut scopes = claims.get("scope").map(strings).unwrap_or_default();
        scopes.extend(claims.get("scp").map(strings).unwrap_or_default());
        let groups_overage = claims.get("_claim_names").and_then(|c| c.get("groups")).is_some()
            || claims.get("hasgroups").is_some_and(|v| v == &Value::Bool(true) || v.as_str() == Some("true"));
        Identity {
            provider: provider.to_string(),
            issuer: issuer.to_string(),
            subject: claims.get("sub").and_then(Value::as_str).unwrap_or_default().to_string(),
            groups,
            scopes,
            groups_overage,
            jti: claims.get("jti").and_then(Value::as_str).unwrap_or_default().to_string(),
            azp: claims.get("azp").and_then(Value::as_str).unwrap_or_default().to_string(),
            session: None,
            claims: shared.clone(),
        }
    }
}

/// Whether `method` is in `methods` (empty = any). `GET` also covers `HEAD`
/// (RFC 9110 §9.3.2: a HEAD is a GET without the body, and most frameworks
/// run the GET handler for it, side effects included).
pub fn method_listed(methods: &[String], method: &str) -> bool {
    methods.is_empty() || methods.iter().any(|m| m == method || (method == "HEAD" && m == "GET"))
}

/// The request as the policy sees it.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// `:authority`, as received.
    pub authority: &'a [u8],
    /// `:path` including any query string.
    pub path: &'a [u8],
    /// `:method`.
    pub method: &'a str,
}

fn authority_matches(patterns: &[String], authority: &[u8]) -> bool {
    if patterns.is_empty() {
        return true;
    }
    // Without allocating (this runs per request and resource): the host and
    // the `:port` (none after a bracketed IPv6 literal), compared ASCII
    // case-insensitively with the patterns, which are lowercase.
    let (host, port) = match authority.iter().rposition(|b| *b == b':') {
        Some(i) if !authority.ends_with(b"]") => (authority.get(..i).unwrap_or_default(), authority.get(i..).unwrap_or_default()),
        _ => (authority, &[][..]),
    };
    // A fully qualified name ("api.example.com.") names the same host (RFC 1034 §3.1).
    let mut host = host;
    while let Some(h) = host.strip_suffix(b".") {
        host = h;
    }
    patterns.iter().any(|p| {
        let p = p.as_bytes();
        p == b"*"
            || (p.len() == host.len() + port.len()
                && p.get(..host.len()).is_some_and(|h| h.eq_ignore_ascii_case(host))
                && p.get(host.len()..).is_some_and(|x| x.eq_ignore_ascii_case(port)))
            // A bracketed IPv6 literal without port ("[::1]") has no port either.
            || ((!p.contains(&b':') || p.ends_with(b"]")) && p.eq_ignore_ascii_case(host))
            || p.strip_prefix(b"*.").is_some_and(|suffix| {
                host.len() > suffix.len()
                    && host.get(host.len() - suffix.len() - 1) == Some(&b'.')
                    && host.get(host.len() - suffix.len()..).is_some_and(|t| t.eq_ignore_ascii_case(suffix))
            })
    })
}

/// Whether `:path` (without query) is in the form the policy can be trusted
/// on: no dot-segments (`.`/`..`, RFC 3986 §5.2.4), no empty segments
/// (`//`), no backslashes, no `;` (path parameters, which Tomcat and Spring
/// cut off before routing: `/export;x` is `/export` there), no
/// percent-encoded control characters (`%09`, `%0A`, … which some servers
/// trim), and no percent-encoding of `/`, `\`, `.` or any other unreserved
/// character (RFC 3986 §6.2.2.2) — otherwise the upstream could act on
/// another path than the one matched. Envoy's `normalize_path`,
/// `merge_slashes` and `path_with_escaped_slashes_action` (set in
/// `envoy/envoy.yaml`) fix most of these before the filter runs.
pub fn path_is_normalized(path: &[u8]) -> bool {
    let p = path_only(path);
    if !p.starts_with(b"/") || p.contains(&b'\\') || p.contains(&b';') {
        return false;
    }
    let segments: Vec<&[u8]> = p.split(|b| *b == b'/').skip(1).collect();
    let n = segments.len();
    // An empty last segment is a trailing slash, which is fine.
    if segments.iter().enumerate().any(|(i, seg)| *seg == b"." || *seg == b".." || (seg.is_empty() && i + 1 < n)) {
        return false;
    }
    let mut i = 0;
    while let Some(pos) = p.get(i..).and_then(|rest| rest.iter().position(|b| *b == b'%')) {
        let at = i + pos;
        let hex = p.get(at + 1..at + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            None => return false,
            Some(c) if c.is_ascii_alphanumeric() || b"-._~/\\".contains(&c) || c.is_ascii_control() => return false,
            Some(_) => {}
        }
        i = at + 3;
    }
    true
}

/// Strips the query string (and fragment) from `:path`.
pub fn path_only(path: &[u8]) -> &[u8] {
    let end = path.iter().position(|b| *b == b'?' || *b == b'#').unwrap_or(path.len());
    path.get(..end).unwrap_or(path)
}

impl Resource {
    /// Whether this resource matches every request that `later` matches, so
    /// that `later`, placed after it, never decides a request (the first
    /// match decides: [`Config::resource_for`]). Sound, not complete: it
    /// answers true only when coverage is certain from the written fields:
    /// - methods: none, or a superset (`GET` covers `HEAD`);
    /// - authorities: none, `*`, or each of `later`'s matched by one of
    ///   these as a request authority would be (`api.example.com` covers
    ///   `api.example.com:8443`, `*.example.com` covers `api.example.com`);
    /// - path: none, `path_prefix` `/` or `path_glob` `/**` (every path
    ///   starts with `/`; `OPTIONS *` aside); a prefix that starts
    ///   `later`'s prefix or the literal part of its glob; a glob ending in
    ///   its only `**` likewise; a glob that matches `later`'s star-less
    ///   glob; the same glob.
    ///
    /// Partial overlaps are not reported.
    pub fn covers(&self, later: &Resource) -> bool {
        // every path `later` matches starts with `literal`; `exact`: the
        // glob has no star, so it matches `literal` (and `literal/`) only
        let (literal, exact): (&[u8], bool) = match (&later.path_prefix, &later.path_glob) {
            (Some(p), _) => (p.as_bytes(), false),
            (None, Some(g)) => (g.literal_prefix(), !g.pattern.contains(&b'*')),
            (None, None) => (b"/", false),
        };
        let path = match (&self.path_prefix, &self.path_glob) {
            // both set is a policy error of its own; no claim then
            (Some(_), Some(_)) => false,
            (None, None) => true,
            (Some(p), _) => p == "/" || literal.starts_with(p.as_bytes()),
            (None, Some(g)) => {
                let deep_tail = g.pattern.strip_suffix(b"**").filter(|l| !l.contains(&b'*'));
                deep_tail.is_some_and(|l| l == b"/" || literal.starts_with(l))
                    || (exact && g.matches_exactly(literal))
                    || later.path_glob.as_ref().is_some_and(|lg| lg.pattern == g.pattern)
            }
        };
        // (cheapest first: most pairs differ by path)
        let methods = || self.methods.is_empty() || (!later.methods.is_empty() && later.methods.iter().all(|m| method_listed(&self.methods, m)));
        let authorities = || {
            self.authorities.is_empty()
                || self.authorities.iter().any(|a| a == "*")
                || (!later.authorities.is_empty()
                    && later.authorities.iter().all(|a| a != "*" && authority_matches(&self.authorities, a.as_bytes())))
        };
        path && methods() && authorities()
    }

    /// Whether this resource covers the request (its `methods` by
    /// [`method_listed`]: `GET` covers `HEAD`).
    pub fn matches(&self, req: &Request<'_>) -> bool {
        let path = path_only(req.path);
        method_listed(&self.methods, req.method)
            && authority_matches(&self.authorities, req.authority)
            && self.path_prefix.as_ref().is_none_or(|p| path.starts_with(p.as_bytes()))
            && self.path_glob.as_ref().is_none_or(|g| g.matches(path))
    }

    /// The operation class: the first matching override, else the method default.
    pub fn operation(&self, req: &Request<'_>) -> OpClass {
        let path = path_only(req.path);
        self.operations
            .iter()
            .find(|o| method_listed(&o.methods, req.method) && o.path_glob.matches(path))
            .map(|o| o.class)
            .unwrap_or_else(|| OpClass::default_for(req.method))
    }

    fn rule(&self, op: OpClass) -> &GroupRule {
        match op {
            OpClass::Read => &self.read,
            OpClass::Write => &self.write,
        }
    }

    /// Decides whether `id` may perform `op` on this resource.
    ///
    /// Errors (403): `provider_not_allowed`, `groups_overage` (the token
    /// does not carry the full group list), `scope_missing`,
    /// `group_not_allowed` (including operations with no groups configured).
    pub fn authorize(&self, id: &Identity, op: OpClass) -> Result<(), Denial> {
        if !self.providers.is_empty() && !self.providers.iter().any(|p| p == &id.provider) {
            return Err(Denial::forbidden("provider_not_allowed", format!("issuer not accepted for resource {}", self.name)));
        }
        if id.groups_overage {
            return Err(Denial::forbidden("groups_overage", "token has a group-overage claim instead of groups"));
        }
        if let Some(s) = self.scopes.iter().find(|s| !id.scopes.contains(s)) {
            return Err(Denial::forbidden("scope_missing", format!("scope {s} is required")));
        }
        let rule = self.rule(op);
        let has = |g: &String| id.groups.contains(g);
        let ok = !rule.is_empty()
            && (rule.any_of.is_empty() || rule.any_of.iter().any(has))
            && rule.all_of.iter().all(has);
        if !ok {
            return Err(Denial::forbidden(
                "group_not_allowed",
                format!("no group of the caller may {} resource {}", op.as_str(), self.name),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The first resource covering the request, in document order.
    ///
    /// Errors (403): `no_matching_resource` (default deny).
    pub fn resource_for(&self, req: &Request<'_>) -> Result<&Resource, Denial> {
        self.resources
            .iter()
            .find(|r| r.matches(req))
            .ok_or_else(|| Denial::forbidden("no_matching_resource", "no policy resource covers this request"))
    }
}
