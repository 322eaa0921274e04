//! The `s3://bucket/prefix` backend: presigned SigV4 requests (rusty-s3) sent
//! with a blocking HTTP client (ureq), with bounded retries.
//!
//! Error messages name the operation, the object key and the endpoint host.
//! They are always built here from the error kind and the S3 error code: never
//! from the request URL, which carries the signature and the access key.

mod batch_delete;
mod body;

use super::{Download, Layout, ListedObject, ObjectHead, ObjectMeta, ReadSeek, Storage};
#[cfg(test)]
use super::{META_SHA256, META_TIMESTAMP};
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use rusty_s3::actions::{DeleteObject, GetObject, HeadObject, ListObjectsV2, PutObject};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::fmt;
use std::io::{self, Read, SeekFrom};
use std::time::{Duration, Instant};
use url::Url;

/// Default time allowed to resolve the host and open a TCP (and TLS)
/// connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed between sending a request and the first byte of its
/// response: an endpoint that accepts connections and never answers is
/// given up on this soon.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a body may go without a byte moving either way. A GET
/// body that stalls this long is resumed (see [`body`]).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(20);
/// Default number of retries after a first failed attempt. At 30 % of
/// requests failing, eleven attempts all fail once in 560,000 requests.
pub const DEFAULT_MAX_RETRIES: u32 = 10;
/// An upload may take 30 s plus the time to send its body at this rate;
/// past that it is cut and retried.
const SLOWEST_UPLOAD_RATE: u64 = 256 * 1024;

/// Told about each retry of a request, for a one-shot command to show
/// ("still trying …"); `watch` logs failed uploads its own way.
pub type RetryProgress = std::sync::Arc<dyn Fn(&str) + Send + Sync>;
/// Default region when neither the options nor the environment name one.
pub const DEFAULT_REGION: &str = "us-east-1";

/// While no response comes back (no connection, no DNS answer, or a
/// connection that never answers), no attempt is started that could end
/// after this long: an unreachable or black-hole endpoint fails within it.
const UNREACHABLE_WINDOW: Duration = Duration::from_secs(25);
/// Validity of each presigned request (signed again for every attempt).
const SIGNATURE_TTL: Duration = Duration::from_secs(15 * 60);
/// Most bytes of an error response read to find the S3 error code.
const ERROR_BODY_LIMIT: u64 = 64 * 1024;

/// Connection settings of the S3 backend. Unset fields take defaults; use
/// [`S3Options::from_env`] or [`S3Options::with_env_defaults`] to fill them
/// from the usual `AWS_*` variables first.
#[derive(Clone, Default)]
pub struct S3Options {
    /// Endpoint URL of an S3-compatible service; `None` means AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// `Some(true)` forces path-style URLs, `Some(false)` virtual-hosted ones;
    /// `None`: path style with a custom endpoint, virtual-hosted on AWS.
    pub force_path_style: Option<bool>,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub connect_timeout: Option<Duration>,
    pub read_timeout: Option<Duration>,
    pub max_retries: Option<u32>,
    /// Told about retries (see [`RetryProgress`]); `None`: silent.
    pub progress: Option<RetryProgress>,
}

impl fmt::Debug for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("force_path_style", &self.force_path_style)
            .field("access_key", &self.access_key)
            .field(
                "secret_key",
                &self.secret_key.as_ref().map(|_| "<redacted>"),
            )
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("max_retries", &self.max_retries)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl S3Options {
    /// Options read from the environment only (see [`S3Options::with_env_defaults`]).
    pub fn from_env() -> S3Options {
        S3Options::default().with_env_defaults()
    }

    /// Fills the unset fields from `AWS_ENDPOINT_URL_S3` (else
    /// `AWS_ENDPOINT_URL`), `AWS_REGION` (else `AWS_DEFAULT_REGION`, else
    /// `us-east-1`), `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    /// Fields already set (from flags or a config file) win.
    pub fn with_env_defaults(self) -> S3Options {
        self.with_defaults_from(|name| std::env::var(name).ok())
    }

    /// [`S3Options::with_env_defaults`] with the variables read through
    /// `lookup` (the environment, or a test's table).
    pub fn with_defaults_from(mut self, lookup: impl Fn(&str) -> Option<String>) -> S3Options {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        if self.endpoint.is_none() {
            self.endpoint = var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL"));
        }
        if self.region.is_none() {
            self.region = Some(
                var("AWS_REGION")
                    .or_else(|| var("AWS_DEFAULT_REGION"))
                    .unwrap_or_else(|| DEFAULT_REGION.to_string()),
            );
        }
        if self.access_key.is_none() {
            self.access_key = var("AWS_ACCESS_KEY_ID");
        }
        if self.secret_key.is_none() {
            self.secret_key = var("AWS_SECRET_ACCESS_KEY");
        }
        self
    }
}

/// Objects in one S3 bucket, under an optional key prefix. Cloning is
/// cheap (the HTTP agent's pool is shared), so a download can carry its
/// own handle to resume with.
#[derive(Clone)]
pub struct S3Storage {
    bucket: Bucket,
    credentials: Option<Credentials>,
    /// Key prefix without leading or trailing slash; may be empty.
    prefix: String,
    agent: ureq::Agent,
    /// `host[:port]` of the endpoint, for messages.
    host: String,
    max_retries: u32,
    progress: Option<RetryProgress>,
    /// Set once the provider answered DeleteObjects as not implemented:
    /// deletes go one by one from then on.
    single_deletes: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Storage")
            .field("url", &self.describe())
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// `url` fit for a message: any `user:password@` part is replaced by `***@`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}***{}", &rest[at..]),
        None => url.to_string(),
    }
}

/// Splits `s3://bucket/prefix/parts` into the bucket and the prefix (without
/// leading or trailing slashes).
pub fn parse_url(url: &str) -> Result<(String, String)> {
    let bad = |why: &str| {
        Error::Usage(format!(
            "bad S3 URL '{}': {why}; use s3://bucket/prefix, like s3://my-backups/walsync/app",
            redact_url(url)
        ))
    };
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("it must start with s3://"))?;
    if rest.contains(['?', '#']) {
        return Err(bad("query strings and fragments are not supported"));
    }
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(bad("the bucket name is missing"));
    }
    if bucket.contains('@') {
        return Err(bad(
            "credentials do not belong in the URL (use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)",
        ));
    }
    let valid_bucket = bucket.len() <= 255
        && bucket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !valid_bucket {
        return Err(bad(&format!("'{bucket}' is not a valid bucket name")));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|part| part.is_empty()) && !prefix.is_empty() {
        return Err(bad("the prefix has an empty path segment ('//')"));
    }
    if prefix.chars().any(char::is_control) {
        return Err(bad("the prefix contains control characters"));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

impl S3Storage {
    /// Opens `s3://bucket/prefix` with `options` (no request is sent yet).
    pub fn open(url: &str, options: &S3Options) -> Result<S3Storage> {
        let (bucket_name, prefix) = parse_url(url)?;
        let region = options
            .region
            .clone()
            .filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_REGION.to_string());

        let (endpoint, default_path_style) = match options.endpoint.as_deref() {
            Some(e) if !e.trim().is_empty() => (parse_endpoint(e.trim())?, true),
            _ => {
                let aws = format!("https://s3.{region}.amazonaws.com");
                let url = Url::parse(&aws).map_err(|_| {
                    Error::Usage(format!(
                        "bad region '{region}': it must be a region name like us-east-1"
                    ))
                })?;
                (url, false)
            }
        };
        let path_style = options.force_path_style.unwrap_or(default_path_style);
        let style = if path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let host = match (endpoint.host_str(), endpoint.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => String::new(),
        };
        let bucket = Bucket::new(endpoint, style, bucket_name.clone(), region).map_err(|e| {
            Error::Usage(format!(
                "cannot address bucket '{bucket_name}' at {host} ({e:?}); \
                 virtual-hosted addressing needs a DNS-compatible bucket name and a host name, \
                 try path-style addressing (force_path_style)"
            ))
        })?;

        let credentials = match (&options.access_key, &options.secret_key) {
            (Some(k), Some(s)) => Some(Credentials::new(k.clone(), s.clone())),
            (None, None) => None,
            _ => {
                return Err(Error::Usage(
                    "S3 credentials are incomplete: set both AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY (or neither, for a public bucket)"
                        .to_string(),
                ))
            }
        };

        let read_timeout = options.read_timeout.unwrap_or(DEFAULT_READ_TIMEOUT);
        let connect_timeout = options.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("walsync/", env!("CARGO_PKG_VERSION")))
            .timeout_resolve(Some(connect_timeout))
            .timeout_connect(Some(connect_timeout))
            .timeout_recv_response(Some(FIRST_BYTE_TIMEOUT))
            .timeout_per_read(Some(read_timeout))
            .timeout_per_write(Some(read_timeout))
            .build();

        Ok(S3Storage {
            bucket,
            credentials,
            prefix,
            agent: ureq::Agent::new_with_config(config),
            host,
            max_retries: options.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
            progress: options.progress.clone(),
            single_deletes: std::sync::Arc::default(),
        })
    }

    /// The full object key of a key relative to the prefix.
    fn full_key(&self, key: &str) -> Result<String> {
        if key.is_empty() || key.starts_with('/') {
            return Err(Error::Other(format!(
                "invalid object key '{key}' (empty or absolute)"
            )));
        }
        Ok(self.root_prefix() + key)
    }

    /// `prefix/`, or the empty string for a whole bucket.
    fn root_prefix(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }

    fn creds(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retries are
    /// used up. `attempt` gets the attempt number (0 first). While no
    /// response comes back, no attempt starts that could end past
    /// [`UNREACHABLE_WINDOW`] (judged by the slowest attempt so far).
    fn with_retries<T>(
        &self,
        op: &str,
        key: &str,
        mut attempt: impl FnMut(u32) -> Attempt<T>,
    ) -> Result<T> {
        let started = Instant::now();
        let mut backoff = Backoff::request();
        let mut slowest = Duration::ZERO;
        let mut n = 0u32;
        loop {
            let this_one = Instant::now();
            let (reason, unreachable) = match attempt(n) {
                Attempt::Done(v) => {
                    super::mark_progress();
                    return Ok(v);
                }
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry {
                    reason,
                    unreachable,
                } => (reason, unreachable),
            };
            slowest = slowest.max(this_one.elapsed());
            let delay = backoff.next_delay();
            let out_of_time =
                unreachable && started.elapsed() + delay + slowest > UNREACHABLE_WINDOW;
            if n >= self.max_retries || out_of_time {
                return Err(self.gave_up(op, key, n + 1, &reason, unreachable, started));
            }
            if let Some(progress) = &self.progress {
                progress(&format!(
                    "still trying: S3 {op} of '{key}' at {}: {reason}; attempt {} of {} in {} ms",
                    self.host,
                    n + 2,
                    self.max_retries + 1,
                    delay.as_millis()
                ));
            }
            std::thread::sleep(delay);
            n += 1;
        }
    }

    /// The error once the retries of a request are used up.
    fn gave_up(
        &self,
        op: &str,
        key: &str,
        tries: u32,
        reason: &str,
        unreachable: bool,
        started: Instant,
    ) -> Error {
        let hint = if unreachable {
            " Is the endpoint reachable? (--endpoint / AWS_ENDPOINT_URL_S3)"
        } else {
            ""
        };
        Error::Storage(format!(
            "S3 {op} of '{key}' in bucket '{}' at {} failed after {tries} attempt{} in {} s: {reason}.{hint}",
            self.bucket.name(),
            self.host,
            if tries == 1 { "" } else { "s" },
            started.elapsed().as_secs(),
            reason = reason.trim_end_matches('.'),
        ))
    }

    /// Turns a non-success response (or a transport error) into a retry or a
    /// final error.
    fn failure<T>(&self, op: &str, key: &str, failure: Failure) -> Attempt<T> {
        let (status, code, message) = match failure {
            Failure::Transport(e) => return transport_failure(&e, &self.host),
            Failure::Status {
                status,
                code,
                message,
            } => (status, code, message),
        };
        let bucket = self.bucket.name();
        let host = &self.host;
        let code_str = code.as_deref().unwrap_or("");
        let detail = match (&code, &message) {
            (Some(c), Some(m)) => format!("HTTP {status} {c}: {m}"),
            (Some(c), None) => format!("HTTP {status} {c}"),
            _ => format!("HTTP {status}"),
        };
        let retryable_code = matches!(
            code_str,
            "SlowDown"
                | "Throttling"
                | "ThrottlingException"
                | "RequestTimeout"
                | "InternalError"
                | "ServiceUnavailable"
                | "RequestLimitExceeded"
                | "TooManyRequests"
        );
        if status >= 500 || status == 429 || retryable_code {
            return Attempt::Retry {
                reason: detail,
                unreachable: false,
            };
        }
        let e = match code_str {
            "NoSuchBucket" => Error::Storage(format!(
                "S3 bucket '{bucket}' does not exist at {host}: create it first \
                 (for example `aws s3 mb s3://{bucket}`), or fix the replica URL"
            )),
            "SignatureDoesNotMatch" | "InvalidAccessKeyId" | "AccessDenied" => {
                Error::Credentials(format!(
                    "S3 refused the credentials for bucket '{bucket}' at {host} ({code_str}) \
                     during {op} of '{key}': check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY \
                     and the bucket policy"
                ))
            }
            "RequestTimeTooSkewed" => Error::Storage(format!(
                "S3 at {host} rejected the request time (RequestTimeTooSkewed): \
                 the system clock is off, fix it (NTP)"
            )),
            "AuthorizationHeaderMalformed" | "PermanentRedirect" | "IllegalLocationConstraintException" => {
                Error::Storage(format!(
                    "S3 bucket '{bucket}' is not reachable with region '{}' at {host} ({code_str}): \
                     set the bucket's region (AWS_REGION / --region)",
                    self.bucket.region()
                ))
            }
            "ExpiredToken" | "InvalidToken" => Error::Credentials(format!(
                "S3 at {host} rejected the credentials for bucket '{bucket}' ({code_str}): renew them"
            )),
            _ if status == 403 => Error::Credentials(format!(
                "S3 refused the credentials for bucket '{bucket}' at {host} (HTTP 403) \
                 during {op} of '{key}': check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY \
                 and the bucket policy"
            )),
            _ if (300..400).contains(&status) => Error::Storage(format!(
                "S3 at {host} redirected the {op} of '{key}' (HTTP {status}): \
                 the bucket '{bucket}' is probably in another region (set AWS_REGION / --region)"
            )),
            _ => Error::Storage(format!(
                "S3 {op} of '{key}' in bucket '{bucket}' at {host} failed: {detail}"
            )),
        };
        Attempt::Fail(e)
    }

    /// Sends one GET (whole object or a range). `Ok(None)`: no such key.
    fn get_once(
        &self,
        op: &str,
        key: &str,
        full: &str,
        range: Option<(u64, u64)>,
        if_match: Option<&str>,
    ) -> Attempt<Option<ureq::http::Response<ureq::Body>>> {
        let action = GetObject::new(&self.bucket, self.creds(), full);
        let url = action.sign(SIGNATURE_TTL);
        let mut req = self.agent.get(url.as_str());
        if let Some((offset, len)) = range {
            let last = offset.saturating_add(len - 1);
            req = req.header("range", format!("bytes={offset}-{last}"));
        }
        if let Some(etag) = if_match {
            req = req.header("if-match", etag);
        }
        match req.call() {
            Err(e) => self.failure(op, key, Failure::Transport(e)),
            Ok(resp) => {
                let status = resp.status().as_u16();
                if (200..300).contains(&status) {
                    return Attempt::Done(Some(resp));
                }
                let failure = status_failure(resp);
                match &failure {
                    Failure::Status { code, .. }
                        if status == 404 && code.as_deref() != Some("NoSuchBucket") =>
                    {
                        Attempt::Done(None)
                    }
                    // Range starting at or after the end of the object.
                    Failure::Status { .. } if status == 416 && range.is_some() => {
                        Attempt::Done(None)
                    }
                    _ => self.failure(op, key, failure),
                }
            }
        }
    }

    fn head_from(&self, key: &str, resp: &ureq::http::Response<ureq::Body>) -> Result<ObjectHead> {
        let headers = resp.headers();
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let size = text("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                Error::Storage(format!(
                    "S3 at {} sent no valid Content-Length for '{key}'",
                    self.host
                ))
            })?;
        Ok(ObjectHead {
            size,
            meta: ObjectMeta::from_headers(text),
        })
    }
}

/// The outcome of one attempt.
enum Attempt<T> {
    Done(T),
    Fail(Error),
    /// Worth another try; `unreachable` when no HTTP response came back.
    Retry {
        reason: String,
        unreachable: bool,
    },
}

enum Failure {
    Transport(ureq::Error),
    Status {
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
}

/// Reads the S3 error code and message of an error response.
fn status_failure(resp: ureq::http::Response<ureq::Body>) -> Failure {
    let status = resp.status().as_u16();
    let mut body = String::new();
    let _ = resp
        .into_body()
        .into_with_config()
        .limit(ERROR_BODY_LIMIT)
        .reader()
        .read_to_string(&mut body);
    let code = xml_element(&body, "Code").filter(|c| {
        !c.is_empty()
            && c.len() <= 64
            && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '.')
    });
    let message = xml_element(&body, "Message").and_then(|m| safe_message(&m));
    Failure::Status {
        status,
        code,
        message,
    }
}

/// The text of the first `<name>…</name>` element.
fn xml_element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(xml[start..end].trim().to_string())
}

/// A server message fit for an error message: short, one line, and free of
/// anything that looks like signing material.
fn safe_message(m: &str) -> Option<String> {
    let lower = m.to_ascii_lowercase();
    if m.is_empty()
        || lower.contains("x-amz-")
        || lower.contains("signature=")
        || lower.contains("credential")
        || lower.contains("aws4")
    {
        return None;
    }
    let one_line: String = m
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    Some(one_line)
}

/// Classifies a transport-level error, without its `Display` (which may
/// contain the presigned URL). `host` is the endpoint's, for messages.
fn transport_failure<T>(e: &ureq::Error, host: &str) -> Attempt<T> {
    use ureq::Error as E;
    let (reason, unreachable, retry): (String, bool, bool) = match e {
        E::Timeout(ureq::Timeout::RecvResponse) => (
            format!(
                "the endpoint accepted the connection and never answered (nothing within {} s)",
                FIRST_BYTE_TIMEOUT.as_secs()
            ),
            true,
            true,
        ),
        E::Timeout(ureq::Timeout::Resolve) => (dns_failure(host), true, true),
        E::Timeout(ureq::Timeout::Connect) => ("could not connect in time".into(), true, true),
        E::Timeout(t) => (format!("timed out ({t:?})"), false, true),
        E::HostNotFound => (dns_failure(host), true, false),
        E::ConnectionFailed => ("connection failed".into(), true, true),
        // A name that does not exist stays so; a resolver that could not
        // answer may answer next time.
        E::Io(io) if is_dns_error(io) => (dns_failure(host), true, is_temporary_dns(io)),
        E::Io(io) => {
            let unreachable = matches!(
                io.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::HostUnreachable
                    | io::ErrorKind::NetworkUnreachable
                    | io::ErrorKind::AddrNotAvailable
            );
            (format!("I/O error ({:?})", io.kind()), unreachable, true)
        }
        E::Protocol(_) => ("HTTP protocol error".into(), false, true),
        E::BodyStalled => ("the transfer stalled".into(), false, true),
        E::Tls(what) => (format!("TLS error ({what})"), false, false),
        E::Rustls(_) => ("TLS error".into(), false, false),
        E::BadUri(_) => ("invalid request URL".into(), false, false),
        E::LargeResponseHeader(..) => ("response headers too large".into(), false, true),
        _ => ("HTTP client error".into(), false, false),
    };
    if retry {
        Attempt::Retry {
            reason,
            unreachable,
        }
    } else {
        Attempt::Fail(Error::Storage(format!(
            "S3 request to {host} failed: {reason}"
        )))
    }
}

/// The name of the host part of `host[:port]` did not resolve.
fn dns_failure(host: &str) -> String {
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
    format!("the host name '{name}' does not resolve (DNS); check the endpoint, and with virtual-hosted addressing that '<bucket>.{name}' exists, or use path-style addressing (force_path_style)")
}

fn is_temporary_dns(io: &io::Error) -> bool {
    io.to_string().contains("Temporary failure")
}

/// Whether an I/O error is the system resolver's (std reports a failed
/// lookup as an uncategorized error with this text).
fn is_dns_error(io: &io::Error) -> bool {
    let text = io.to_string();
    text.contains("failed to lookup address")
        || text.contains("Name or service not known")
        || text.contains("nodename nor servname")
        || text.contains("Temporary failure in name resolution")
}

/// Parses an endpoint, adding `https://` when no scheme is given.
fn parse_endpoint(endpoint: &str) -> Result<Url> {
    let shown = redact_url(endpoint);
    if !endpoint.contains("://") {
        // Guessing https for `localhost:9000` talks TLS to a plain-HTTP
        // server, which fails after every retry with an unhelpful error.
        return Err(Error::Usage(format!(
            "S3 endpoint '{shown}' has no scheme: write http://{shown} (plain HTTP, as a local MinIO or Garage serves) or https://{shown}"
        )));
    }
    let with_scheme = endpoint.to_string();
    let url = Url::parse(&with_scheme).map_err(|e| {
        Error::Usage(format!(
            "bad S3 endpoint '{shown}' ({e}): use a URL like http://127.0.0.1:9000 or https://s3.example.com"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(Error::Usage(format!(
            "bad S3 endpoint '{shown}': use an http:// or https:// URL with a host, like http://127.0.0.1:9000"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::Usage(
            "the S3 endpoint URL must not contain credentials (use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
                .to_string(),
        ));
    }
    Ok(url)
}

fn check_header_value(key: &str, name: &str, value: &str) -> Result<()> {
    if value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        Ok(())
    } else {
        Err(Error::Other(format!(
            "metadata {name} of '{key}' is not printable ASCII"
        )))
    }
}

impl Storage for S3Storage {
    fn put(&self, key: &str, body: &mut dyn ReadSeek, len: u64, meta: &ObjectMeta) -> Result<()> {
        let full = self.full_key(key)?;
        for (name, value) in meta.headers() {
            check_header_value(key, name, value)?;
        }
        let start = body.stream_position().map_err(|e| {
            Error::Other(format!(
                "upload of '{key}': cannot tell the body position: {e}"
            ))
        })?;
        self.with_retries("PUT", key, |n| {
            if n > 0 {
                if let Err(e) = body.seek(SeekFrom::Start(start)) {
                    return Attempt::Fail(Error::Other(format!(
                        "upload of '{key}': cannot rewind the body to retry: {e}"
                    )));
                }
            }
            let mut action = PutObject::new(&self.bucket, self.creds(), &full);
            for (name, value) in meta.headers() {
                action.headers_mut().insert(name, value.to_string());
            }
            let url = action.sign(SIGNATURE_TTL);
            let deadline = Duration::from_secs(30 + len / SLOWEST_UPLOAD_RATE);
            let mut req = self
                .agent
                .put(url.as_str())
                .config()
                .timeout_global(Some(deadline))
                .build()
                .header("content-length", len.to_string())
                .header("content-type", "application/octet-stream");
            for (name, value) in meta.headers() {
                req = req.header(name, value);
            }
            let mut limited = (&mut *body).take(len);
            match req.send(ureq::SendBody::from_reader(&mut limited)) {
                Err(e) => self.failure("PUT", key, Failure::Transport(e)),
                Ok(resp) if resp.status().is_success() => {
                    // Drain the (empty) body so the connection can be reused.
                    let mut sink = Vec::new();
                    let _ = resp
                        .into_body()
                        .into_with_config()
                        .limit(ERROR_BODY_LIMIT)
                        .reader()
                        .read_to_end(&mut sink);
                    Attempt::Done(())
                }
                Ok(resp) => self.failure("PUT", key, status_failure(resp)),
            }
        })
    }

    fn get(&self, key: &str) -> Result<Option<Download>> {
        let full = self.full_key(key)?;
        let Some(resp) =
            self.with_retries("GET", key, |_| self.get_once("GET", key, &full, None, None))?
        else {
            return Ok(None);
        };
        let head = self.head_from(key, &resp)?;
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let first = resp.into_body().into_with_config().limit(u64::MAX).reader();
        let body = body::ResumingBody::new(self.clone(), key, full, etag, head.size, first);
        Ok(Some(Download {
            head,
            body: Box::new(body),
        }))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Option<Vec<u8>>> {
        if len == 0 {
            return Ok(self.head(key)?.map(|_| Vec::new()));
        }
        let full = self.full_key(key)?;
        self.with_retries("ranged GET", key, |_| {
            let resp = match self.get_once("ranged GET", key, &full, Some((offset, len)), None) {
                Attempt::Done(Some(r)) => r,
                Attempt::Done(None) => {
                    return Attempt::Done(None);
                }
                Attempt::Fail(e) => return Attempt::Fail(e),
                Attempt::Retry {
                    reason,
                    unreachable,
                } => {
                    return Attempt::Retry {
                        reason,
                        unreachable,
                    }
                }
            };
            let full_body = resp.status().as_u16() == 200;
            let mut buf = Vec::new();
            let read = resp
                .into_body()
                .into_with_config()
                .limit(u64::MAX)
                .reader()
                .read_to_end(&mut buf);
            if let Err(e) = read {
                return Attempt::Retry {
                    reason: format!("reading the body failed ({:?})", e.kind()),
                    unreachable: false,
                };
            }
            if full_body {
                // A server that ignores Range sends the whole object.
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(buf.len());
                buf.drain(..start);
            }
            buf.truncate(usize::try_from(len).unwrap_or(usize::MAX));
            Attempt::Done(Some(buf))
        })
        // `None` is a 404 or a 416 (the object ends before `offset`): ask
        // whether the object exists at all.
        .and_then(|found| match found {
            Some(buf) => Ok(Some(buf)),
            None => Ok(self.head(key)?.map(|_| Vec::new())),
        })
    }

    fn list_after(&self, prefix: &str, start_after: &str) -> Result<Vec<ListedObject>> {
        let root = self.root_prefix();
        let full_prefix = format!("{root}{prefix}");
        let full_start_after = (!start_after.is_empty()).then(|| format!("{root}{start_after}"));
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.with_retries("LIST", &full_prefix, |_| {
                let mut action = ListObjectsV2::new(&self.bucket, self.creds());
                if !full_prefix.is_empty() {
                    action.with_prefix(full_prefix.as_str());
                }
                if let Some(t) = &token {
                    action.with_continuation_token(t.as_str());
                } else if let Some(after) = &full_start_after {
                    action.with_start_after(after.as_str());
                }
                let url = action.sign(SIGNATURE_TTL);
                let resp = match self.agent.get(url.as_str()).call() {
                    Err(e) => return self.failure("LIST", &full_prefix, Failure::Transport(e)),
                    Ok(r) => r,
                };
                if !resp.status().is_success() {
                    return self.failure("LIST", &full_prefix, status_failure(resp));
                }
                let mut text = String::new();
                if let Err(e) = resp
                    .into_body()
                    .into_with_config()
                    .limit(64 * 1024 * 1024)
                    .reader()
                    .read_to_string(&mut text)
                {
                    return Attempt::Retry {
                        reason: format!("reading the listing failed ({:?})", e.kind()),
                        unreachable: false,
                    };
                }
                match ListObjectsV2::parse_response(&text) {
                    Ok(page) => Attempt::Done(page),
                    Err(_) => Attempt::Fail(Error::Storage(format!(
                        "S3 at {} sent a malformed listing for '{full_prefix}' in bucket '{}'",
                        self.host,
                        self.bucket.name()
                    ))),
                }
            })?;
            for obj in page.contents {
                if let Some(rel) = obj.key.strip_prefix(&root) {
                    if rel.starts_with(prefix) && !rel.is_empty() && rel > start_after {
                        out.push(ListedObject {
                            key: rel.to_string(),
                            size: obj.size.unwrap_or(0),
                        });
                    }
                }
            }
            match page.next_continuation_token {
                Some(t) if token.as_deref() != Some(t.as_str()) => token = Some(t),
                Some(_) => {
                    return Err(Error::Storage(format!(
                        "S3 at {} repeated a continuation token while listing '{full_prefix}'",
                        self.host
                    )))
                }
                None => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.dedup_by(|a, b| a.key == b.key);
        Ok(out)
    }

    fn head(&self, key: &str) -> Result<Option<ObjectHead>> {
        let full = self.full_key(key)?;
        self.with_retries("HEAD", key, |_| {
            let action = HeadObject::new(&self.bucket, self.creds(), &full);
            let url = action.sign(SIGNATURE_TTL);
            match self.agent.head(url.as_str()).call() {
                Err(e) => self.failure("HEAD", key, Failure::Transport(e)),
                Ok(resp) if resp.status().is_success() => match self.head_from(key, &resp) {
                    Ok(h) => Attempt::Done(Some(h)),
                    Err(e) => Attempt::Fail(e),
                },
                Ok(resp) if resp.status().as_u16() == 404 => Attempt::Done(None),
                Ok(resp) => self.failure("HEAD", key, status_failure(resp)),
            }
        })
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.delete_one(key)
    }

    fn delete_many(&self, keys: &[String]) -> Result<()> {
        self.delete_in_batches(keys)
    }

    fn layout(&self) -> Layout {
        Layout::S3
    }

    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket.name())
        } else {
            format!("s3://{}/{}", self.bucket.name(), self.prefix)
        }
    }
}

impl S3Storage {
    /// One DELETE request (with retries).
    fn delete_one(&self, key: &str) -> Result<()> {
        let full = self.full_key(key)?;
        self.with_retries("DELETE", key, |_| {
            let action = DeleteObject::new(&self.bucket, self.creds(), &full);
            let url = action.sign(SIGNATURE_TTL);
            match self.agent.delete(url.as_str()).call() {
                Err(e) => self.failure("DELETE", key, Failure::Transport(e)),
                Ok(resp) if resp.status().is_success() => Attempt::Done(()),
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let failure = status_failure(resp);
                    match &failure {
                        Failure::Status { code, .. }
                            if status == 404 && code.as_deref() != Some("NoSuchBucket") =>
                        {
                            Attempt::Done(())
                        }
                        _ => self.failure("DELETE", key, failure),
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            parse_url("s3://b/p/q/").unwrap(),
            ("b".to_string(), "p/q".to_string())
        );
        assert_eq!(
            parse_url("s3://b").unwrap(),
            ("b".to_string(), String::new())
        );
        assert_eq!(
            parse_url("s3://b/").unwrap(),
            ("b".to_string(), String::new())
        );
        assert_eq!(redact_url("s3://k:s@b/x@y"), "s3://***@b/x@y");
        assert_eq!(redact_url("s3://b/x@y"), "s3://b/x@y");
        for bad in [
            "s3://",
            "s3:///x",
            "s3://a b/x",
            "s3://k:s@b/x",
            "s3://b/x?y",
            "s3://b/a//c",
        ] {
            let e = parse_url(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn debug_hides_secret() {
        let o = S3Options {
            secret_key: Some("very-secret".into()),
            ..Default::default()
        };
        assert!(!format!("{o:?}").contains("very-secret"));
    }

    #[test]
    fn addressing() {
        let o = S3Options::default();
        let s = S3Storage::open("s3://bkt/pre", &o).unwrap();
        assert_eq!(
            s.bucket.base_url().as_str(),
            "https://bkt.s3.us-east-1.amazonaws.com/"
        );
        let o = S3Options {
            endpoint: Some("http://127.0.0.1:9000".into()),
            ..Default::default()
        };
        let s = S3Storage::open("s3://bkt/pre", &o).unwrap();
        assert_eq!(s.bucket.base_url().as_str(), "http://127.0.0.1:9000/bkt/");
        assert_eq!(s.describe(), "s3://bkt/pre");
        assert_eq!(s.full_key("a/b").unwrap(), "pre/a/b");
    }

    #[test]
    fn metadata_headers_are_signed() {
        let o = S3Options {
            endpoint: Some("http://127.0.0.1:9000".into()),
            access_key: Some("AKID".into()),
            secret_key: Some("secret".into()),
            ..Default::default()
        };
        let s = S3Storage::open("s3://bkt/pre", &o).unwrap();
        let mut action = PutObject::new(&s.bucket, s.creds(), "pre/k");
        action.headers_mut().insert(META_SHA256, "ab");
        action
            .headers_mut()
            .insert(META_TIMESTAMP, "2025-01-01T00:00:00Z");
        let url = action.sign(SIGNATURE_TTL);
        assert!(
            url.as_str().contains(
                "X-Amz-SignedHeaders=host%3Bx-amz-meta-litestream-timestamp%3Bx-amz-meta-sha256"
            ),
            "{url}"
        );
    }

    #[test]
    fn env_fills_only_unset_fields() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let all = env(&[
            ("AWS_ENDPOINT_URL", "http://fallback:1"),
            ("AWS_ENDPOINT_URL_S3", "http://s3-specific:2"),
            ("AWS_DEFAULT_REGION", "eu-west-3"),
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
            ("AWS_SECRET_ACCESS_KEY", "secretenv"),
        ]);
        let o = S3Options::default().with_defaults_from(all);
        assert_eq!(o.endpoint.as_deref(), Some("http://s3-specific:2"));
        assert_eq!(o.region.as_deref(), Some("eu-west-3"));
        assert_eq!(o.access_key.as_deref(), Some("AKIDENV"));
        assert_eq!(o.secret_key.as_deref(), Some("secretenv"));
        let o = S3Options {
            endpoint: Some("http://flag:3".into()),
            access_key: Some("AKIDFLAG".into()),
            ..Default::default()
        }
        .with_defaults_from(all);
        assert_eq!(o.endpoint.as_deref(), Some("http://flag:3"));
        assert_eq!(o.access_key.as_deref(), Some("AKIDFLAG"));
        let fallback = env(&[
            ("AWS_ENDPOINT_URL", "http://fallback:1"),
            ("AWS_REGION", " "),
        ]);
        let o = S3Options::default().with_defaults_from(fallback);
        assert_eq!(o.endpoint.as_deref(), Some("http://fallback:1"));
        assert_eq!(o.region.as_deref(), Some(DEFAULT_REGION));
        assert_eq!(o.access_key, None);
    }
}
