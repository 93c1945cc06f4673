//! Just enough HTTP/1.1 to post a report and read the answer, over any byte stream.
//!
//! Hand-written rather than a client library because the generator needs exact control of the
//! connection (one TLS session per appliance certificate, fresh or kept alive) and nothing else:
//! the ingest always answers with a `Content-Length`, which is all this reader supports besides
//! reading to end-of-stream.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest response head we read; the ingest's are a few hundred bytes.
const MAX_HEAD: usize = 16 * 1024;
/// Largest response body we read; the ingest's are small JSON objects.
const MAX_BODY: usize = 1024 * 1024;

/// What the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// The server will close the connection after this response.
    pub closes: bool,
    /// `Retry-After`, as a wait from now (read as the collector reads it).
    pub retry_after: Option<Duration>,
}

/// Writes `POST /v1/reports` with `body` and reads the response. An `Err` is a transport error:
/// no complete HTTP response arrived.
pub async fn post_report<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    host: &str,
    body: &[u8],
    gzip: bool,
    keep_alive: bool,
) -> Result<Answer, String> {
    let mut request = format!(
        "POST /v1/reports HTTP/1.1\r\nHost: {host}\r\nUser-Agent: phonehome-loadgen\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: {}\r\n",
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    )
    .into_bytes();
    if gzip {
        request.extend_from_slice(b"Content-Encoding: gzip\r\n");
    }
    request.extend_from_slice(b"\r\n");
    // One write, so head and body usually travel in one TLS record.
    request.extend_from_slice(body);
    stream
        .write_all(&request)
        .await
        .map_err(|e| format!("write request: {e}"))?;
    stream
        .flush()
        .await
        .map_err(|e| format!("write request: {e}"))?;
    read_response(stream).await
}

async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Answer, String> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(format!("response head larger than {MAX_HEAD} bytes"));
        }
        let mut chunk = [0u8; 4096];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read response: {e}"))?;
        if n == 0 {
            return Err(if buf.is_empty() {
                "connection closed before any response".into()
            } else {
                "connection closed in the middle of the response head".into()
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| "response head is not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    let mut retry_after = None;
    let mut closes = status_line.starts_with("HTTP/1.0");
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("connection") {
            closes = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("retry-after") {
            retry_after = parse_retry_after(value, chrono::Utc::now());
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(format!("unsupported Transfer-Encoding {value:?}"));
        }
    }
    let have = buf.len() - head_end;
    match length {
        Some(len) if len > MAX_BODY => return Err(format!("response body of {len} bytes")),
        Some(len) if have < len => {
            let mut rest = vec![0u8; len - have];
            stream
                .read_exact(&mut rest)
                .await
                .map_err(|e| format!("read response body: {e}"))?;
        }
        Some(_) => {}
        None => {
            // No length: the body runs to the end of the connection.
            let mut sink = Vec::new();
            stream
                .take(MAX_BODY as u64)
                .read_to_end(&mut sink)
                .await
                .map_err(|e| format!("read response body: {e}"))?;
            closes = true;
        }
    }
    Ok(Answer {
        status,
        closes,
        retry_after,
    })
}

/// A `Retry-After` value (seconds, or an HTTP-date) as a wait from `now`, as the collector's
/// `deliver::parse_retry_after` reads it: a date in the past is no wait, anything else unreadable
/// is ignored.
fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some((at.to_utc() - now).to_std().unwrap_or(Duration::ZERO))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads one request (ending with the `{}` body the test sends) from `server`.
    async fn read_request(server: &mut tokio::io::DuplexStream) {
        let mut req = Vec::new();
        while !req.ends_with(b"\r\n\r\n{}") {
            let mut chunk = [0u8; 64];
            let n = server.read(&mut chunk).await.unwrap();
            assert!(n > 0, "client closed early");
            req.extend_from_slice(&chunk[..n]);
        }
    }

    #[tokio::test]
    async fn reads_responses_split_across_reads_on_one_connection() {
        // A 64-byte pipe forces every response to arrive in several reads.
        let (mut client, mut server) = tokio::io::duplex(64);
        let server_task = tokio::spawn(async move {
            read_request(&mut server).await;
            let body = br#"{"status":"stored"}"#;
            let resp = format!(
                "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            server.write_all(resp.as_bytes()).await.unwrap();
            server.write_all(body).await.unwrap();
            read_request(&mut server).await;
            server
                .write_all(
                    b"HTTP/1.1 503 Busy\r\nconnection: close\r\nretry-after: 17\r\n\
                      content-length: 0\r\n\r\n",
                )
                .await
                .unwrap();
        });
        let a = post_report(&mut client, "h", b"{}", false, true)
            .await
            .unwrap();
        assert_eq!(
            a,
            Answer {
                status: 202,
                closes: false,
                retry_after: None,
            }
        );
        let b = post_report(&mut client, "h", b"{}", false, true)
            .await
            .unwrap();
        assert_eq!(
            b,
            Answer {
                status: 503,
                closes: true,
                retry_after: Some(Duration::from_secs(17)),
            }
        );
        server_task.await.unwrap();
        assert!(read_response(&mut client).await.is_err());
    }

    #[test]
    fn retry_after_reads_like_the_collector() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .to_utc();
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(parse_retry_after("45", now), secs(45));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            secs(30)
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            secs(0)
        );
        for junk in ["", "-1", "1.5", "soon"] {
            assert_eq!(parse_retry_after(junk, now), None, "{junk:?}");
        }
    }
}
