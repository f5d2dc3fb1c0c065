//! What can go wrong with a store, each failure with the next step to take.

use std::io;

use crate::error::ErrorKind;

/// A failure of a [`Store`](super::Store) that is not a plain I/O error on
/// a local path (those are [`Error::Io`](crate::Error::Io), naming the
/// path).
///
/// `store` fields name the store as [`Store::describe`](super::Store::describe)
/// does (`s3://bucket/prefix`, or the directory); no variant ever holds a
/// credential.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A key that no store accepts.
    #[error("invalid object key `{key}`: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    /// A store URL that cannot be used.
    #[error("invalid store URL `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// A store setting that cannot be used (a part size below the S3
    /// minimum, an endpoint that is not a URL).
    #[error("invalid store setting: {message}")]
    InvalidConfig { message: String },
    /// No credentials were found, or the ones named cannot be read.
    #[error("no usable S3 credentials: {detail}")]
    NoCredentials { detail: String },
    /// The server refused the credentials (`InvalidAccessKeyId`,
    /// `SignatureDoesNotMatch`, `InvalidToken`, `ExpiredToken`).
    #[error("{store} refused the credentials ({code})")]
    BadCredentials { store: String, code: String },
    /// The credentials are valid but may not do what was asked.
    #[error("{store} denied access: {detail}")]
    AccessDenied { store: String, detail: String },
    /// The bucket does not exist at this endpoint.
    #[error("bucket {bucket} does not exist at {endpoint}")]
    NoSuchBucket { bucket: String, endpoint: String },
    /// The server refused a request because this machine's clock is too far
    /// from its own (`RequestTimeTooSkewed`).
    #[error("{store} refused the request: this machine's clock is too far from the server's")]
    ClockSkew { store: String },
    /// The endpoint could not be reached (connection refused, name not
    /// resolved, timed out, connection dropped), retries included.
    #[error("cannot reach {endpoint}: {detail}")]
    Unreachable { endpoint: String, detail: String },
    /// An object already exists under this key: stores never overwrite.
    #[error("{key} already exists in {store}")]
    AlreadyExists { store: String, key: String },
    /// No object under this key.
    #[error("{key} does not exist in {store}")]
    NotFound { store: String, key: String },
    /// An object ended before the bytes asked for, or changed while read.
    #[error("{key} in {store} is shorter than expected: {got} of {expected} bytes")]
    Short {
        store: String,
        key: String,
        expected: u64,
        got: u64,
    },
    /// An object would need more than the 10,000 parts S3 allows.
    #[error("{key} would need more than 10000 parts of {part_size} bytes")]
    TooLarge { key: String, part_size: usize },
    /// Any other failure the server reported, after retries.
    #[error("{store}: {op} failed: {detail}")]
    Remote {
        store: String,
        op: &'static str,
        detail: String,
    },
}

impl StoreError {
    /// The classification that decides the exit code.
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            StoreError::InvalidKey { .. }
            | StoreError::InvalidUrl { .. }
            | StoreError::InvalidConfig { .. }
            | StoreError::NoCredentials { .. } => ErrorKind::Usage,
            StoreError::Short { .. } => ErrorKind::Integrity,
            _ => ErrorKind::Failed,
        }
    }

    /// What the user can do next.
    pub(crate) fn hint(&self) -> Option<String> {
        Some(match self {
            StoreError::InvalidKey { .. } => return None,
            StoreError::InvalidUrl { .. } => {
                "write the store as `s3://BUCKET/PREFIX` (credentials go in the environment \
                 or ~/.aws/credentials, never in the URL)"
                    .into()
            }
            StoreError::InvalidConfig { .. } => "correct the store's settings in the config".into(),
            StoreError::NoCredentials { .. } => {
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for \
                 temporary keys), or AWS_PROFILE naming a profile in ~/.aws/credentials"
                    .into()
            }
            StoreError::BadCredentials { code, .. } => credentials_hint(code),
            StoreError::AccessDenied { .. } => {
                "the key needs s3:ListBucket, s3:GetObject, s3:PutObject, s3:DeleteObject, \
                 s3:ListBucketMultipartUploads and s3:AbortMultipartUpload on the bucket and \
                 prefix: fix the bucket or user policy"
                    .into()
            }
            StoreError::NoSuchBucket { bucket, .. } => format!(
                "create the bucket {bucket} first, or correct the bucket name, `endpoint` and \
                 `region` of the store"
            ),
            StoreError::ClockSkew { .. } => {
                "set this machine's clock right (`timedatectl set-ntp true`, or `chronyc \
                 makestep`) and run the command again"
                    .into()
            }
            StoreError::Unreachable { endpoint, .. } => format!(
                "check that the server at {endpoint} is running and reachable from here, and \
                 the store's `endpoint` (a plain-HTTP endpoint needs `allow_http = true`); \
                 then run the command again"
            ),
            StoreError::AlreadyExists { .. } => {
                "backstop never overwrites an object: a backup under this name was already \
                 written; run `backstop reconcile` to adopt it, or back up again for a new id"
                    .into()
            }
            StoreError::NotFound { .. } => {
                "run `backstop reconcile` to bring the catalog in line with the store".into()
            }
            StoreError::Short { .. } => {
                "the object is damaged or was replaced while it was read: run `backstop \
                 verify` on it, and restore from another copy if it fails"
                    .into()
            }
            StoreError::TooLarge { .. } => {
                "raise the store's part size (each part must fit in memory a few times over)".into()
            }
            StoreError::Remote { .. } => {
                "the server failed after retries: run the command again later".into()
            }
        })
    }

    /// The store error an I/O error from a store's reader or writer
    /// carries, if it carries one.
    pub fn from_io(err: &io::Error) -> Option<&StoreError> {
        err.get_ref()?.downcast_ref::<StoreError>()
    }

    /// Wraps this error into an `io::Error`, for `Read` and `Write`;
    /// [`StoreError::from_io`] gets it back.
    pub(crate) fn into_io(self) -> io::Error {
        let kind = match &self {
            StoreError::Unreachable { .. } => io::ErrorKind::ConnectionAborted,
            StoreError::Short { .. } => io::ErrorKind::UnexpectedEof,
            StoreError::AlreadyExists { .. } => io::ErrorKind::AlreadyExists,
            StoreError::NotFound { .. } => io::ErrorKind::NotFound,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }
}

/// The hint for each way the server can refuse credentials.
fn credentials_hint(code: &str) -> String {
    match code {
        "InvalidAccessKeyId" => "the access key id is unknown to this server: check \
             AWS_ACCESS_KEY_ID (or the profile AWS_PROFILE names) and the store's `endpoint`"
            .into(),
        "SignatureDoesNotMatch" => "the secret key does not match the access key id: check \
             AWS_SECRET_ACCESS_KEY (or the profile AWS_PROFILE names); a wrong `region` can \
             also cause this"
            .into(),
        "ExpiredToken" | "TokenRefreshRequired" => "the session token has expired: get new \
             temporary credentials and set AWS_SESSION_TOKEN again"
            .into(),
        _ => "check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN (or the \
              profile AWS_PROFILE names)"
            .into(),
    }
}
