//! The HTTP/1.1 subset the API needs: one request per connection, a body only with
//! Content-Length, the response followed by close. httparse parses the request head; this
//! module adds the limits (head and body size, a deadline for the whole request) and the
//! framing around it.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// The server's limits; `Limits::default()` is what `api::spawn` uses.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Request line plus headers.
    pub max_head_bytes: usize,
    pub max_body_bytes: usize,
    /// The whole request (head and body) must arrive within this time of the connection's
    /// acceptance, so a client sending a byte at a time cannot hold a connection for long.
    pub request_timeout: Duration,
    /// For writing the response to a client that does not read.
    pub write_timeout: Duration,
    /// Connections served at once. Beyond this a new connection takes the place of the
    /// oldest one still waiting for its request (which is answered 503), or is answered 503
    /// itself when all are running a request (see server.rs).
    pub max_connections: usize,
    /// Hot-plug requests (add and remove) running at once: a removal may wait a minute for
    /// the guest, so beyond this they are answered 503 at once, and the other connections
    /// stay free for `vm.info`, `vm.shutdown` and the like.
    pub max_hotplug: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 16 << 10,
            max_body_bytes: 64 << 10,
            request_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_connections: 64,
            max_hotplug: 16,
        }
    }
}

/// More headers than any API client sends; more is a 431.
const MAX_HEADERS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target without its query string.
    pub path: String,
    /// `None` when the request had no Content-Length (so no body).
    pub body: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

impl Response {
    /// An error body as Cloud Hypervisor sends one: a JSON array of strings, the error
    /// first and then its causes (ch-remote prints the array as it came). Control characters
    /// (newlines, and escape sequences a request may have carried into the message) become
    /// spaces, so each string is one printable line.
    pub fn error(status: u16, messages: &[String]) -> Self {
        let clean: Vec<String> = messages
            .iter()
            .map(|m| {
                m.trim_end()
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect()
            })
            .collect();
        Response {
            status,
            content_type: "application/json",
            // A list of strings always serializes.
            body: serde_json::to_vec(&clean).unwrap_or_default(),
            allow: None,
        }
    }

    /// An error without causes.
    pub fn error_line(status: u16, message: &str) -> Self {
        Self::error(status, &[message.to_string()])
    }

    pub fn json<T: serde::Serialize>(status: u16, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Response {
                status,
                content_type: "application/json",
                body,
                allow: None,
            },
            Err(e) => Response::error_line(500, &format!("cannot encode the response: {e}")),
        }
    }

    pub fn no_content() -> Self {
        Response {
            status: 204,
            content_type: "",
            body: Vec::new(),
            allow: None,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nServer: ghvmm\r\nConnection: close\r\n",
            self.status,
            reason(self.status)
        );
        if let Some(allow) = self.allow {
            head.push_str(&format!("Allow: {allow}\r\n"));
        }
        // RFC 9110 forbids a Content-Length on 204. ch-remote looks the header up with this
        // exact spelling, so it is not lower case.
        if self.status != 204 {
            head.push_str(&format!(
                "Content-Type: {}\r\nContent-Length: {}\r\n",
                self.content_type,
                self.body.len()
            ));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ if status < 500 => "Client Error",
        _ => "Server Error",
    }
}

/// Why no request came out of a connection.
#[derive(Debug)]
pub enum ReadError {
    /// Closed before the first byte: nothing to answer.
    Closed,
    /// The connection failed; there is no one to answer.
    Io(io::Error),
    /// Answer this and close.
    Respond(Response),
}

fn respond(status: u16, message: &str) -> ReadError {
    ReadError::Respond(Response::error_line(status, message))
}

/// Reads one request, enforcing `limits` (but not the deadline: that is the reader's job,
/// see `DeadlineReader`).
pub fn read_request<R: Read>(r: &mut R, limits: &Limits) -> Result<Request, ReadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let (head_len, method, path, content_length) = loop {
        if let Some(head) = parse_head(&buf, limits)? {
            break head;
        }
        if buf.len() >= limits.max_head_bytes {
            return Err(respond(
                431,
                &format!(
                    "request line and headers exceed {} bytes",
                    limits.max_head_bytes
                ),
            ));
        }
        // Never read further than the head limit: the body is read once its length is known.
        let want = chunk.len().min(limits.max_head_bytes - buf.len());
        match read_some(r, &mut chunk[..want], limits)? {
            0 if buf.is_empty() => return Err(ReadError::Closed),
            0 => return Err(respond(400, "the request ended inside its headers")),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let body = match content_length {
        None => None,
        Some(len) => {
            let mut body = buf.split_off(head_len);
            body.truncate(len);
            while body.len() < len {
                let want = chunk.len().min(len - body.len());
                match read_some(r, &mut chunk[..want], limits)? {
                    0 => {
                        return Err(respond(
                            400,
                            &format!(
                                "the body ended after {} of {len} bytes (Content-Length)",
                                body.len()
                            ),
                        ))
                    }
                    n => body.extend_from_slice(&chunk[..n]),
                }
            }
            Some(body)
        }
    };
    Ok(Request { method, path, body })
}

/// One read, with a timeout turned into a 408 and interrupted reads retried.
fn read_some<R: Read>(r: &mut R, buf: &mut [u8], limits: &Limits) -> Result<usize, ReadError> {
    loop {
        match r.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(respond(
                    408,
                    &format!(
                        "the request did not arrive within {} s",
                        limits.request_timeout.as_secs_f32()
                    ),
                ))
            }
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

type Head = (usize, String, String, Option<usize>);

/// The parsed head once `buf` holds all of it: its length, method, path (without a query)
/// and Content-Length.
fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<Head>, ReadError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(respond(431, &format!("more than {MAX_HEADERS} headers")))
        }
        Err(e) => return Err(respond(400, &format!("malformed HTTP request: {e}"))),
    };
    // httparse fills all three on Complete.
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(respond(400, "malformed HTTP request"));
    };
    let mut content_length: Option<usize> = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked bodies are not worth supporting for bodies this small.
            return Err(respond(
                411,
                "Transfer-Encoding is not accepted: send the body with a Content-Length",
            ));
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let len = parse_content_length(h.value)?;
            if content_length.is_some_and(|l| l != len) {
                return Err(respond(400, "conflicting Content-Length headers"));
            }
            content_length = Some(len);
        }
    }
    if let Some(len) = content_length {
        if len > limits.max_body_bytes {
            return Err(respond(
                413,
                &format!(
                    "the body ({len} bytes) exceeds {} bytes",
                    limits.max_body_bytes
                ),
            ));
        }
    }
    let path = target.split('?').next().unwrap_or_default();
    Ok(Some((
        head_len,
        method.to_string(),
        path.to_string(),
        content_length,
    )))
}

/// Digits only: `str::parse` would also take a sign.
fn parse_content_length(v: &[u8]) -> Result<usize, ReadError> {
    let bad = || respond(400, "Content-Length is not a number");
    let v = v.trim_ascii();
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    // Digits are ASCII, so this is valid UTF-8; too many digits is past any limit.
    let s = std::str::from_utf8(v).map_err(|_| bad())?;
    Ok(s.parse::<usize>().unwrap_or(usize::MAX))
}

/// Reads from a Unix stream with one deadline for the whole request: each read may only wait
/// for what is left of it.
pub struct DeadlineReader<'a> {
    stream: &'a UnixStream,
    deadline: Instant,
}

impl<'a> DeadlineReader<'a> {
    pub fn new(stream: &'a UnixStream, timeout: Duration) -> Self {
        DeadlineReader {
            stream,
            deadline: Instant::now() + timeout,
        }
    }
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        (&mut &*self.stream).read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(raw: &[u8]) -> Result<Request, ReadError> {
        read_request(&mut &raw[..], &Limits::default())
    }

    fn status(raw: &[u8]) -> u16 {
        match read(raw) {
            Err(ReadError::Respond(r)) => r.status,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(raw)),
        }
    }

    /// Hands out its data a few bytes at a time, like a slow client.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(self.1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn requests() {
        let r = read(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("GET", "/api/v1/vmm.ping")
        );
        assert_eq!(r.body, None);
        let raw = b"PUT /api/v1/vm.remove-device?x=1 HTTP/1.0\r\ncontent-length: 11\r\n\r\n{\"id\":\"a\"}\nEXTRA";
        let r = read(raw).unwrap();
        assert_eq!(r.path, "/api/v1/vm.remove-device");
        assert_eq!(r.body.as_deref(), Some(&b"{\"id\":\"a\"}\n"[..]));
        // ch-remote's way: the Content-Length header written separately after the rest.
        let raw = b"PUT /api/v1/vm.add-device HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\nContent-Length: 2\r\n\r\n{}";
        for step in [1, 3, 7, 4096] {
            let r = read_request(&mut Trickle(raw, step), &Limits::default()).unwrap();
            assert_eq!(r.body.as_deref(), Some(&b"{}"[..]), "{step}");
        }
        assert!(matches!(read(b""), Err(ReadError::Closed)));
    }

    #[test]
    fn malformed() {
        assert_eq!(status(b"GARBAGE\r\n\r\n"), 400);
        assert_eq!(status(b"\x00\x01\x02\x03\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/2.0\r\n\r\n"), 400);
        assert_eq!(status(b"GET /\xff\xfe HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost"), 400);
        assert_eq!(status(b"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), 400);
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx"),
            400
        );
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nContent-Length: \xff\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx"),
            400
        );
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort"),
            400
        );
        // Header values may carry non-UTF-8 bytes; they are simply not looked at.
        let r = read(b"GET /api/v1/vmm.ping HTTP/1.1\r\nX-Junk: \xff\xfe\r\n\r\n").unwrap();
        assert_eq!(r.path, "/api/v1/vmm.ping");
    }

    #[test]
    fn limits() {
        let long = format!("GET / HTTP/1.1\r\nX-Long: {}\r\n\r\n", "a".repeat(20 << 10));
        assert_eq!(status(long.as_bytes()), 431);
        // An endless request line without a newline hits the same limit.
        assert_eq!(status(&[b'A'; 40 << 10]), 431);
        let many: String = (0..40).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            status(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            431
        );
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n"),
            413
        );
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            413
        );
        let body = vec![b' '; 64 << 10];
        let mut raw = b"PUT / HTTP/1.1\r\nContent-Length: 65536\r\n\r\n".to_vec();
        raw.extend_from_slice(&body);
        assert_eq!(read(&raw).unwrap().body.unwrap().len(), 64 << 10);
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"),
            411
        );
    }

    #[test]
    fn responses() {
        let r = Response::error_line(404, "no such\ndevice\r");
        assert_eq!(
            Response::error_line(400, "a\x1b[31mb\t").body,
            br#"["a [31mb"]"#
        );
        assert_eq!(
            String::from_utf8(r.to_bytes()).unwrap(),
            "HTTP/1.1 404 Not Found\r\nServer: ghvmm\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 18\r\n\r\n[\"no such device\"]"
        );
        // The error, then its causes; quotes and backslashes are JSON-escaped.
        let r = Response::error(500, &["vm.pause: failed".into(), "a \"b\" \\c".into()]);
        let parsed: Vec<String> = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(parsed, ["vm.pause: failed", "a \"b\" \\c"]);
        let r = Response::no_content().to_bytes();
        assert_eq!(
            String::from_utf8(r).unwrap(),
            "HTTP/1.1 204 No Content\r\nServer: ghvmm\r\nConnection: close\r\n\r\n"
        );
        let mut r = Response::error_line(405, "x");
        r.allow = Some("PUT");
        assert!(String::from_utf8(r.to_bytes())
            .unwrap()
            .contains("\r\nAllow: PUT\r\n"));
        assert_eq!(reason(418), "Client Error");
        assert_eq!(reason(599), "Server Error");
    }
}
