//! Batched deletes: one DeleteObjects request (up to 1,000 keys, with the
//! Content-MD5 several providers require) instead of one DELETE per key,
//! falling back to single DELETEs, for the life of the storage handle,
//! where a provider does not implement it.

use super::{status_failure, Attempt, Failure, S3Storage, ERROR_BODY_LIMIT, SIGNATURE_TTL};
use crate::error::{Error, Result};
use rusty_s3::actions::{DeleteObjects, ObjectIdentifier};
use rusty_s3::S3Action;
use std::io::Read;
use std::sync::atomic::Ordering;

/// S3's limit on the keys of one DeleteObjects request.
pub(super) const MAX_KEYS_PER_REQUEST: usize = 1000;

/// What one DeleteObjects request came to.
enum Batch {
    Deleted,
    /// The provider does not implement DeleteObjects.
    Unsupported,
}

impl S3Storage {
    /// Deletes `keys` (relative to the prefix) in batches.
    pub(super) fn delete_in_batches(&self, keys: &[String]) -> Result<()> {
        for chunk in keys.chunks(MAX_KEYS_PER_REQUEST) {
            if self.single_deletes.load(Ordering::Relaxed) {
                chunk.iter().try_for_each(|k| self.delete_one(k))?;
                continue;
            }
            match self.delete_batch(chunk)? {
                Batch::Deleted => {}
                Batch::Unsupported => {
                    self.single_deletes.store(true, Ordering::Relaxed);
                    chunk.iter().try_for_each(|k| self.delete_one(k))?;
                }
            }
        }
        Ok(())
    }

    /// One DeleteObjects request in quiet mode: the answer names only the
    /// keys that could not be deleted (a missing key counts as deleted).
    fn delete_batch(&self, keys: &[String]) -> Result<Batch> {
        let objects: Vec<ObjectIdentifier> = keys
            .iter()
            .map(|k| self.full_key(k).map(ObjectIdentifier::new))
            .collect::<Result<_>>()?;
        let first = keys.first().map_or("", String::as_str);
        let op = "DeleteObjects";
        self.with_retries(op, first, |_| {
            let mut action = DeleteObjects::new(&self.bucket, self.creds(), objects.iter());
            action.set_quiet(true);
            let url = action.sign(SIGNATURE_TTL);
            let (body, content_md5) = action.body_with_md5();
            let sent = self
                .agent
                .post(url.as_str())
                .header("content-md5", &content_md5)
                .header("content-type", "application/xml")
                .send(body.as_bytes());
            match sent {
                Err(e) => self.failure(op, first, Failure::Transport(e)),
                Ok(resp) if resp.status().is_success() => {
                    let mut answer = String::new();
                    let _ = resp
                        .into_body()
                        .into_with_config()
                        .limit(ERROR_BODY_LIMIT * 16)
                        .reader()
                        .read_to_string(&mut answer);
                    match refused_keys(&answer) {
                        None => Attempt::Done(Batch::Deleted),
                        Some(e) => Attempt::Fail(Error::Storage(format!(
                            "S3 {op} in bucket '{}' at {}: {e}",
                            self.bucket.name(),
                            self.host
                        ))),
                    }
                }
                Ok(resp) if unsupported(resp.status().as_u16()) => {
                    Attempt::Done(Batch::Unsupported)
                }
                Ok(resp) => match status_failure(resp) {
                    Failure::Status { code, .. } if code.as_deref() == Some("NotImplemented") => {
                        Attempt::Done(Batch::Unsupported)
                    }
                    failure => self.failure(op, first, failure),
                },
            }
        })
    }
}

/// Statuses a provider answers a POST ?delete it does not implement with.
fn unsupported(status: u16) -> bool {
    matches!(status, 405 | 501)
}

/// The first key a quiet DeleteObjects answer says it could not delete
/// (with the error code), ignoring keys that were already gone.
fn refused_keys(answer: &str) -> Option<String> {
    let mut rest = answer;
    let mut refused = Vec::new();
    while let Some(start) = rest.find("<Error>") {
        let tail = &rest[start + "<Error>".len()..];
        let end = tail.find("</Error>").unwrap_or(tail.len());
        let entry = &tail[..end];
        let code = super::xml_element(entry, "Code").unwrap_or_default();
        if code != "NoSuchKey" {
            let key = super::xml_element(entry, "Key").unwrap_or_default();
            refused.push(format!("'{key}' ({code})"));
        }
        rest = &tail[end..];
    }
    let first = refused.first()?;
    Some(format!(
        "{} of the keys were not deleted, first {first}",
        refused.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::refused_keys;

    #[test]
    fn a_quiet_answer_names_only_real_refusals() {
        assert_eq!(refused_keys("<DeleteResult></DeleteResult>"), None);
        let gone = "<DeleteResult><Error><Key>a</Key><Code>NoSuchKey</Code></Error></DeleteResult>";
        assert_eq!(refused_keys(gone), None);
        let denied = "<DeleteResult><Error><Key>a</Key><Code>NoSuchKey</Code></Error>\
                      <Error><Key>b/c</Key><Code>AccessDenied</Code><Message>no</Message></Error></DeleteResult>";
        assert_eq!(
            refused_keys(denied).as_deref(),
            Some("1 of the keys were not deleted, first 'b/c' (AccessDenied)")
        );
    }
}
