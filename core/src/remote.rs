//! What a remote server's error may say in a batch's status and Events: a status code
//! and a short reason, never the server's own words.
//!
//! A batch names its own S3 endpoint (and its callback URL), so the body of an error
//! response is text from a server of the batch author's choosing, or from one inside the
//! cluster network that they could not otherwise read. [`brief`] keeps what a user needs to
//! act (not found, access denied, HTTP 503, could not connect) and drops the rest; the
//! operator's log keeps the whole error.

use std::error::Error;

use object_store::client::HttpErrorKind;

/// `e` in a few words: the object store's kind of failure, the HTTP status it carries,
/// or what the connection did.
pub fn brief(e: &(dyn Error + 'static)) -> String {
    let mut status = None;
    let mut next = Some(e);
    while let Some(e) = next {
        // An I/O error's `source` is its inner error's source: look at the inner one.
        if let Some(inner) = e.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
            next = Some(inner as &(dyn Error + 'static));
            continue;
        }
        if let Some(e) = e.downcast_ref::<object_store::Error>() {
            let known = match e {
                object_store::Error::NotFound { .. } => Some("not found (HTTP 404)"),
                object_store::Error::PermissionDenied { .. } => Some("access denied (HTTP 403)"),
                object_store::Error::Unauthenticated { .. } => Some("not authenticated (HTTP 401)"),
                object_store::Error::Precondition { .. } => Some("changed since it was read (HTTP 412)"),
                object_store::Error::NotModified { .. } => Some("not modified (HTTP 304)"),
                object_store::Error::InvalidPath { .. } => Some("invalid path"),
                object_store::Error::NotSupported { .. } | object_store::Error::NotImplemented { .. } => Some("not supported"),
                _ => None,
            };
            if let Some(known) = known {
                return known.into();
            }
        }
        if let Some(e) = e.downcast_ref::<object_store::client::HttpError>() {
            return match e.kind() {
                HttpErrorKind::Connect => "could not connect",
                HttpErrorKind::Timeout => "timed out",
                HttpErrorKind::Decode => "unreadable response",
                HttpErrorKind::Interrupted => "connection interrupted",
                _ => "request failed",
            }
            .into();
        }
        if let Some(e) = e.downcast_ref::<reqwest::Error>() {
            if let Some(s) = e.status() {
                return http_status(s.as_u16());
            }
            return if e.is_connect() {
                "could not connect"
            } else if e.is_timeout() {
                "timed out"
            } else {
                "request failed"
            }
            .into();
        }
        // object_store's retry error is private; its message starts with the status.
        status = status.or_else(|| status_in(&e.to_string()));
        next = e.source();
    }
    status.map_or_else(|| "request failed".into(), http_status)
}

/// `HTTP 503 Service Unavailable`.
pub fn http_status(code: u16) -> String {
    match reqwest::StatusCode::from_u16(code).ok().and_then(|s| s.canonical_reason()) {
        Some(reason) => format!("HTTP {code} {reason}"),
        None => format!("HTTP {code}"),
    }
}

fn status_in(message: &str) -> Option<u16> {
    let (_, after) = message.split_once("status code: ")?;
    after.get(..3)?.parse().ok().filter(|c| (100..600).contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error(
        "Error performing GET http://evil in 2ms - Server returned non-2xx status code: 503 Service Unavailable: <secret>internal body</secret>"
    )]
    struct Retry;

    #[test]
    fn a_remote_body_never_comes_through() {
        let e = object_store::Error::Generic { store: "S3", source: Box::new(Retry) };
        assert!(e.to_string().contains("internal body"), "the test's error carries a body");
        assert_eq!(brief(&e), "HTTP 503 Service Unavailable");
        let e = object_store::Error::NotFound { path: "a".into(), source: Box::new(Retry) };
        assert_eq!(brief(&e), "not found (HTTP 404)");
        let e = std::io::Error::other(object_store::Error::PermissionDenied { path: "a".into(), source: Box::new(Retry) });
        assert_eq!(brief(&e), "access denied (HTTP 403)");
        let plain = std::io::Error::other("some <html> from a server");
        assert_eq!(brief(&plain), "request failed");
    }

    #[test]
    fn statuses_are_read_only_where_they_are_numbers() {
        assert_eq!(status_in("non-2xx status code: 404 Not Found: x"), Some(404));
        assert_eq!(status_in("status code: abc"), None);
        assert_eq!(status_in("status code: 999"), None);
        assert_eq!(http_status(418), "HTTP 418 I'm a teapot");
        assert_eq!(http_status(599), "HTTP 599");
    }
}
