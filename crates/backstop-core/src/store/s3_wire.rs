//! The few S3 requests `object_store` does not make for us, signed with
//! its own SigV4 signer and sent with its own HTTP client: listing
//! multipart uploads (to find abandoned ones), and completing a multipart
//! upload with `If-None-Match: *` (its own completion always overwrites).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::client::{HttpClient, HttpRequestBody};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use super::s3_classify::Failure;

/// Everything but the unreserved characters is escaped, as SigV4 wants.
const ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A signer and client for raw requests to one bucket.
#[derive(Clone, Debug)]
pub(crate) struct Wire {
    pub client: HttpClient,
    pub credential: Arc<AwsCredential>,
    pub region: String,
    /// The bucket's URL: `https://host/bucket` or `https://bucket.host`.
    pub base: String,
    pub max_retries: usize,
    pub retry_timeout: Duration,
}

/// A request that failed, and whether it was sent more than once (so an
/// earlier attempt may have taken effect).
#[derive(Debug)]
pub(crate) struct WireError {
    pub failure: Failure,
    pub retried: bool,
}

impl Wire {
    /// The URL of `path` (an object's full key, `/`-separated, or empty for
    /// the bucket) with `query`.
    pub(crate) fn url(&self, path: &str, query: &[(&str, &str)]) -> String {
        let mut url = self.base.clone();
        if !path.is_empty() {
            url.push('/');
            let parts: Vec<String> = path
                .split('/')
                .map(|p| utf8_percent_encode(p, ESCAPE).to_string())
                .collect();
            url.push_str(&parts.join("/"));
        }
        for (i, (k, v)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&utf8_percent_encode(k, ESCAPE).to_string());
            url.push('=');
            url.push_str(&utf8_percent_encode(v, ESCAPE).to_string());
        }
        url
    }

    /// Sends a signed request, retrying with backoff what may succeed on
    /// another try (no response, 5xx, throttling, S3's 200-with-an-error),
    /// and returns the body of the successful response.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Bytes, WireError> {
        let start = Instant::now();
        let mut attempt = 0;
        loop {
            let failure = match self
                .attempt(method.clone(), url, headers, body.clone())
                .await
            {
                Ok(body) => return Ok(body),
                Err(failure) => failure,
            };
            let again = attempt < self.max_retries
                && start.elapsed() < self.retry_timeout
                && retryable(&failure);
            if !again {
                return Err(WireError {
                    failure,
                    retried: attempt > 0,
                });
            }
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
        }
    }

    async fn attempt(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Bytes, Failure> {
        let mut builder = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let mut request = builder
            .body(HttpRequestBody::from(body))
            .map_err(|e| local_failure(e.to_string()))?;
        AwsAuthorizer::new(&self.credential, "s3", &self.region)
            .try_authorize(&mut request, None)
            .map_err(|e| local_failure(e.to_string()))?;
        let response = self
            .client
            .execute(request)
            .await
            .map_err(|e| Failure::transport(&e))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .bytes()
            .await
            .map_err(|e| Failure::transport(&e))?;
        let text = String::from_utf8_lossy(&body);
        // S3 may answer 200 and still report an error in the body.
        if !(200..300).contains(&status) || text.contains("<Error>") {
            return Err(Failure::response(status, &text));
        }
        Ok(body)
    }
}

/// A failure before anything was sent: nothing to retry.
fn local_failure(message: String) -> Failure {
    Failure {
        message,
        ..Failure::default()
    }
}

/// Whether another attempt may succeed.
fn retryable(failure: &Failure) -> bool {
    if failure.transport {
        return true;
    }
    match failure.status {
        Some(status) if status >= 500 || status == 429 || status == 408 => true,
        Some(200) => matches!(failure.code.as_deref(), Some("InternalError" | "SlowDown")),
        _ => false,
    }
}

/// 100 ms, doubling, at most 5 s.
fn backoff(attempt: usize) -> Duration {
    Duration::from_millis(100u64 << attempt.min(6)).min(Duration::from_secs(5))
}

/// One page of `ListMultipartUploads`.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct UploadsPage {
    #[serde(default)]
    pub upload: Vec<Upload>,
    #[serde(default)]
    pub is_truncated: bool,
    pub next_key_marker: Option<String>,
    pub next_upload_id_marker: Option<String>,
}

/// A multipart upload in progress.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Upload {
    pub key: String,
    pub upload_id: String,
}

impl UploadsPage {
    /// Parses a `ListMultipartUploadsResult` document.
    pub(crate) fn parse(body: &[u8]) -> Result<UploadsPage, String> {
        let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
        quick_xml::de::from_str(text).map_err(|e| format!("unreadable upload list: {e}"))
    }
}

/// The body of `CompleteMultipartUpload` for parts with these ETags, in
/// order.
pub(crate) fn complete_body(etags: &[String]) -> String {
    let mut xml = String::from("<CompleteMultipartUpload>");
    for (i, etag) in etags.iter().enumerate() {
        xml.push_str(&format!(
            "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
            i + 1,
            quick_xml::escape::escape(etag.as_str())
        ));
    }
    xml.push_str("</CompleteMultipartUpload>");
    xml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_lists_parse_with_their_markers() {
        let page = UploadsPage::parse(
            br#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>p/b.tar</NextKeyMarker><NextUploadIdMarker>id2</NextUploadIdMarker>
  <MaxUploads>2</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload><Key>p/a.tar</Key><UploadId>id1</UploadId><Initiated>2026-01-01T00:00:00Z</Initiated></Upload>
  <Upload><Key>p/b.tar</Key><UploadId>id2</UploadId></Upload>
</ListMultipartUploadsResult>"#,
        )
        .unwrap();
        assert!(page.is_truncated);
        assert_eq!(page.upload.len(), 2);
        assert_eq!(page.upload[1].upload_id, "id2");
        assert_eq!(page.next_key_marker.as_deref(), Some("p/b.tar"));
        let empty = UploadsPage::parse(
            b"<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>",
        )
        .unwrap();
        assert!(empty.upload.is_empty() && !empty.is_truncated);
    }

    #[test]
    fn completion_lists_parts_in_order() {
        let xml = complete_body(&["\"e1\"".into(), "\"e2\"".into()]);
        assert_eq!(
            xml,
            "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&quot;e1&quot;</ETag>\
             </Part><Part><PartNumber>2</PartNumber><ETag>&quot;e2&quot;</ETag></Part>\
             </CompleteMultipartUpload>"
        );
    }

    #[test]
    fn retries_are_for_what_may_pass_next_time() {
        assert!(retryable(&Failure::response(
            503,
            "<Error><Code>SlowDown</Code></Error>"
        )));
        assert!(retryable(&Failure::response(
            200,
            "<Error><Code>InternalError</Code></Error>"
        )));
        assert!(!retryable(&Failure::response(
            403,
            "<Error><Code>AccessDenied</Code></Error>"
        )));
        assert!(!retryable(&Failure::response(412, "")));
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(20), Duration::from_secs(5));
    }
}
