//! Turning what an S3 server or the HTTP client said into a [`StoreError`].
//!
//! S3 names its errors with a `<Code>` in the XML body; `object_store`
//! keeps that body in its error messages but not in a type, so the code is
//! read back from the message. Transport failures are recognised by the
//! `HttpError` kind in the error's source chain.

use std::error::Error as StdError;

use object_store::client::{HttpError, HttpErrorKind};

use super::{Key, StoreError};

/// The names an error message needs: which store, reached where.
#[derive(Debug, Clone)]
pub(crate) struct Place {
    /// `s3://bucket/prefix`.
    pub store: String,
    /// The bucket's endpoint URL.
    pub endpoint: String,
    pub bucket: String,
}

/// What a failed request came to, before it is named.
#[derive(Debug, Default)]
pub(crate) struct Failure {
    /// The HTTP status, when a response came back.
    pub status: Option<u16>,
    /// S3's `<Code>`, when the body had one.
    pub code: Option<String>,
    /// S3's `<Message>`, or the innermost error's text.
    pub message: String,
    /// Whether no usable response came back at all.
    pub transport: bool,
}

impl Failure {
    /// A response with status `status` and body `body`.
    pub(crate) fn response(status: u16, body: &str) -> Failure {
        Failure {
            status: Some(status),
            code: tag(body, "Code").map(str::to_string),
            message: tag(body, "Message").unwrap_or(body).trim().to_string(),
            transport: false,
        }
    }

    /// A transport failure: no response.
    pub(crate) fn transport(err: &HttpError) -> Failure {
        Failure {
            message: innermost(err),
            transport: true,
            ..Failure::default()
        }
    }

    /// What an `object_store` error says.
    pub(crate) fn of(err: &object_store::Error) -> Failure {
        let text = chain(err);
        let status = match err {
            object_store::Error::NotFound { .. } => Some(404),
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => Some(412),
            object_store::Error::NotModified { .. } => Some(304),
            object_store::Error::PermissionDenied { .. } => Some(403),
            object_store::Error::Unauthenticated { .. } => Some(401),
            _ => status_in(&text),
        };
        let transport = http_kind(err).is_some_and(|k| {
            matches!(
                k,
                HttpErrorKind::Connect
                    | HttpErrorKind::Request
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted
            )
        });
        Failure {
            status,
            code: tag(&text, "Code").map(str::to_string),
            message: tag(&text, "Message").map_or_else(|| innermost(err), str::to_string),
            transport,
        }
    }
}

impl Place {
    /// The error `failure` of operation `op` (on `key`, if it was about
    /// one) is.
    pub(crate) fn name(&self, op: &'static str, key: Option<&Key>, failure: Failure) -> StoreError {
        let store = self.store.clone();
        let key_text = || key.map_or_else(String::new, Key::to_string);
        match (failure.code.as_deref(), failure.status) {
            (Some(code), _) if is_credentials(code) => StoreError::BadCredentials {
                store,
                code: code.to_string(),
            },
            (Some("RequestTimeTooSkewed"), _) => StoreError::ClockSkew { store },
            (Some("NoSuchBucket"), _) => StoreError::NoSuchBucket {
                bucket: self.bucket.clone(),
                endpoint: self.endpoint.clone(),
            },
            (Some("AccessDenied"), _) | (None, Some(403)) => StoreError::AccessDenied {
                store,
                detail: failure.message,
            },
            (Some("NoSuchKey"), _) | (None, Some(404)) if key.is_some() => StoreError::NotFound {
                store,
                key: key_text(),
            },
            (Some("PreconditionFailed"), _) | (None, Some(412)) if key.is_some() => {
                StoreError::AlreadyExists {
                    store,
                    key: key_text(),
                }
            }
            _ if failure.transport => StoreError::Unreachable {
                endpoint: self.endpoint.clone(),
                detail: failure.message,
            },
            (code, status) => StoreError::Remote {
                store,
                op,
                detail: describe(code, status, &failure.message),
            },
        }
    }

    /// [`Place::name`] of an `object_store` error.
    pub(crate) fn object_store(
        &self,
        op: &'static str,
        key: Option<&Key>,
        err: &object_store::Error,
    ) -> StoreError {
        self.name(op, key, Failure::of(err))
    }
}

/// The codes that mean the credentials themselves were refused.
fn is_credentials(code: &str) -> bool {
    matches!(
        code,
        "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "InvalidToken"
            | "ExpiredToken"
            | "TokenRefreshRequired"
            | "InvalidClientTokenId"
    )
}

fn describe(code: Option<&str>, status: Option<u16>, message: &str) -> String {
    match (code, status) {
        (Some(code), _) => format!("{code}: {message}"),
        (None, Some(status)) => format!("HTTP {status}: {message}"),
        (None, None) => message.to_string(),
    }
}

/// The text of the element `<name>` in `text`, if there is one.
pub(crate) fn tag<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = text.find(&open)? + open.len();
    let len = text[start..].find(&format!("</{name}>"))?;
    Some(&text[start..start + len])
}

/// Every message in the error's source chain, joined.
fn chain(err: &dyn StdError) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        text.push_str(": ");
        text.push_str(&e.to_string());
        next = e.source();
    }
    text
}

/// The innermost error's message: the one that says what happened
/// ("Connection refused"), without the layers of context around it.
fn innermost(err: &dyn StdError) -> String {
    let mut last: &dyn StdError = err;
    while let Some(e) = last.source() {
        last = e;
    }
    last.to_string()
}

/// The kind of the first `HttpError` in the chain.
fn http_kind(err: &(dyn StdError + 'static)) -> Option<HttpErrorKind> {
    let mut next: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(http) = e.downcast_ref::<HttpError>() {
            return Some(http.kind());
        }
        next = e.source();
    }
    None
}

/// The status `object_store` wrote into a message
/// ("... non-2xx status code: 503 Service Unavailable ...").
fn status_in(text: &str) -> Option<u16> {
    let after = text.split("status code: ").nth(1)?;
    after.get(..3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place() -> Place {
        Place {
            store: "s3://b/p".into(),
            endpoint: "http://127.0.0.1:9/b".into(),
            bucket: "b".into(),
        }
    }

    fn body(code: &str) -> String {
        format!(
            "<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>says {code}</Message></Error>"
        )
    }

    #[test]
    fn s3_codes_become_typed_errors() {
        let key = Key::new("k").unwrap();
        let name = |status, code: &str| {
            place().name("list", Some(&key), Failure::response(status, &body(code)))
        };
        assert!(
            matches!(name(403, "InvalidAccessKeyId"), StoreError::BadCredentials { code, .. } if code == "InvalidAccessKeyId")
        );
        assert!(matches!(
            name(403, "SignatureDoesNotMatch"),
            StoreError::BadCredentials { .. }
        ));
        assert!(matches!(
            name(403, "RequestTimeTooSkewed"),
            StoreError::ClockSkew { .. }
        ));
        assert!(
            matches!(name(404, "NoSuchBucket"), StoreError::NoSuchBucket { bucket, .. } if bucket == "b")
        );
        assert!(matches!(
            name(404, "NoSuchKey"),
            StoreError::NotFound { .. }
        ));
        assert!(matches!(
            name(403, "AccessDenied"),
            StoreError::AccessDenied { .. }
        ));
        assert!(matches!(
            name(412, "PreconditionFailed"),
            StoreError::AlreadyExists { .. }
        ));
        let other = name(500, "InternalError").to_string();
        assert!(
            other.contains("InternalError: says InternalError"),
            "{other}"
        );
        let bare = place().name("head", Some(&key), Failure::response(403, ""));
        assert!(matches!(bare, StoreError::AccessDenied { .. }));
    }

    #[test]
    fn every_refusal_has_a_hint_naming_the_next_step() {
        let key = Key::new("k").unwrap();
        for (status, code, words) in [
            (403, "InvalidAccessKeyId", "AWS_ACCESS_KEY_ID"),
            (403, "SignatureDoesNotMatch", "AWS_SECRET_ACCESS_KEY"),
            (403, "RequestTimeTooSkewed", "clock"),
            (404, "NoSuchBucket", "create the bucket b"),
            (412, "PreconditionFailed", "never overwrites"),
        ] {
            let err = place().name("put", Some(&key), Failure::response(status, &body(code)));
            let hint = err.hint().unwrap();
            assert!(hint.contains(words), "{code}: {hint}");
        }
        let err = place().name(
            "put",
            None,
            Failure {
                message: "Connection refused".into(),
                transport: true,
                ..Failure::default()
            },
        );
        assert!(
            matches!(&err, StoreError::Unreachable { detail, .. } if detail == "Connection refused")
        );
        assert!(err.hint().unwrap().contains("http://127.0.0.1:9/b"));
    }

    #[test]
    fn statuses_are_read_back_from_messages() {
        assert_eq!(
            status_in("Server returned non-2xx status code: 503 Service"),
            Some(503)
        );
        assert_eq!(status_in("nothing"), None);
        assert_eq!(tag("<a><Code>X</Code></a>", "Code"), Some("X"));
        assert_eq!(tag("<Code>X", "Code"), None);
    }
}
