//! `s3://bucket/prefix` URLs.

use super::{Key, S3Config, StoreError};

impl S3Config {
    /// The settings a store URL `s3://BUCKET[/PREFIX]` gives; everything
    /// else at its default (AWS, path-style, HTTPS).
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidUrl`] when it is not such a URL: another
    /// scheme, a bucket name S3 does not allow, credentials, a query, or a
    /// prefix that is not a [`Key`].
    pub fn from_url(url: &str) -> Result<S3Config, StoreError> {
        let bad = |reason: &str| StoreError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("it does not start with s3://"))?;
        if rest.contains(['?', '#']) {
            return Err(bad("it has a query or fragment"));
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.contains('@') {
            return Err(bad(
                "it holds credentials: give them in the environment instead",
            ));
        }
        check_bucket(bucket).map_err(bad)?;
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty() {
            Key::new(prefix).map_err(|e| bad(&format!("the prefix: {e}")))?;
        }
        Ok(S3Config::new(bucket, prefix))
    }
}

/// Why `name` is not a bucket name S3 allows (the rules of new AWS
/// buckets, which every S3-compatible server accepts).
fn check_bucket(name: &str) -> Result<(), &'static str> {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = name.as_bytes();
    if !(3..=63).contains(&bytes.len()) {
        return Err("a bucket name has 3 to 63 characters");
    }
    if !bytes.iter().all(|&b| alnum(b) || b == b'.' || b == b'-') {
        return Err("a bucket name holds only lower-case letters, digits, `.` and `-`");
    }
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) || name.contains("..") {
        return Err("a bucket name starts and ends with a letter or digit, without `..`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_bucket_and_prefix() {
        let c = S3Config::from_url("s3://my-bucket/backstop/host1/").unwrap();
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str()),
            ("my-bucket", "backstop/host1")
        );
        assert!(!c.virtual_hosted && !c.allow_http);
        assert_eq!((c.endpoint.clone(), c.region.clone()), (None, None));
        let c = S3Config::from_url("s3://b.example.org").unwrap();
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str()),
            ("b.example.org", "")
        );
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        for (url, why) in [
            ("http://bucket/x", "s3://"),
            ("s3://", "3 to 63"),
            ("s3://ab", "3 to 63"),
            ("s3://My_Bucket", "lower-case"),
            ("s3://-bucket", "starts and ends"),
            ("s3://key:secret@bucket/x", "credentials"),
            ("s3://bucket/x?versionId=1", "query"),
            ("s3://bucket/a/../b", "prefix"),
        ] {
            let err = S3Config::from_url(url).unwrap_err().to_string();
            assert!(err.contains(why), "{url}: {err}");
        }
    }
}
