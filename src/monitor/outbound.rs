//! Requests walsync sends to the world about itself (heartbeats, webhooks):
//! one way to build the HTTP agent and one way to describe a failure. The
//! URLs often hold tokens, so a failure is described without the URL, and
//! messages name the host only.

use std::time::Duration;

/// The longest one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An agent for outbound notifications: a 10 s limit per request, a few
/// redirects, walsync's user agent, and any HTTP status returned as an
/// answer rather than an error (the caller decides what a status means).
pub fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .max_redirects(3)
            .http_status_as_error(false)
            .user_agent(concat!("walsync/", env!("CARGO_PKG_VERSION")))
            .build(),
    )
}

/// The host of `url`, for messages.
pub fn host(url: &url::Url) -> String {
    url.host_str().unwrap_or("?").to_string()
}

/// A request failure without the URL (ureq's messages may quote it).
pub fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::StatusCode(code) => format!("HTTP {code}"),
        ureq::Error::Timeout(_) => "no answer in time".into(),
        ureq::Error::Io(io) => format!("{:?}", io.kind()),
        ureq::Error::HostNotFound => "the host does not resolve".into(),
        ureq::Error::ConnectionFailed => "could not connect".into(),
        _ => "the request failed".into(),
    }
}

/// Sends a GET (`body` None) or a JSON POST, and calls anything but 2xx a
/// failure.
pub fn send(
    agent: &ureq::Agent,
    url: &url::Url,
    body: Option<(&str, &[(&str, String)])>,
) -> Result<(), String> {
    let answer = match body {
        None => agent.get(url.as_str()).call(),
        Some((json, headers)) => {
            let mut request = agent
                .post(url.as_str())
                .header("Content-Type", "application/json");
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            request.send(json)
        }
    };
    match answer {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("HTTP {}", response.status().as_u16())),
        Err(e) => Err(describe(&e)),
    }
}
