//! `checker http SOCKET METHOD PATH [BODY]` (in L2): one raw HTTP/1.1 request on a Unix
//! socket, for the rig's API error checks (ghvmm-remote only sends well-formed requests).
//! Prints `<status> <body on one line>` and exits 0 when any response arrived, 2 otherwise.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// The request bytes: a body gets a Content-Length.
pub fn request(method: &str, path: &str, body: Option<&str>) -> String {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(b) = body {
        r.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    r.push_str("\r\n");
    r.push_str(body.unwrap_or(""));
    r
}

/// (status, body) from a raw response.
pub fn parse_response(raw: &str) -> Option<(u16, String)> {
    let status = raw.split_whitespace().nth(1)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((
        status,
        body.split_whitespace().collect::<Vec<_>>().join(" "),
    ))
}

pub fn main(args: &[String]) -> i32 {
    let [socket, method, path, rest @ ..] = args else {
        eprintln!("usage: checker http SOCKET METHOD PATH [BODY]");
        return 2;
    };
    let run = || -> std::io::Result<String> {
        let mut s = UnixStream::connect(socket)?;
        s.set_read_timeout(Some(Duration::from_secs(90)))?;
        s.write_all(request(method, path, rest.first().map(String::as_str)).as_bytes())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    };
    match run().ok().as_deref().and_then(parse_response) {
        Some((status, body)) => {
            println!("{status} {body}");
            0
        }
        None => {
            println!("000 no response");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_requests_and_reads_responses() {
        let r = request("PUT", "/api/v1/vm.add-device", Some("{}"));
        assert!(r.starts_with("PUT /api/v1/vm.add-device HTTP/1.1\r\n"));
        assert!(r.contains("Content-Length: 2\r\n") && r.ends_with("\r\n\r\n{}"));
        assert!(!request("GET", "/x", None).contains("Content-Length"));
        assert_eq!(
            parse_response("HTTP/1.1 400 Bad Request\r\nA: b\r\n\r\nbad\njson\n"),
            Some((400, "bad json".into()))
        );
        assert_eq!(parse_response("garbage"), None);
    }
}
