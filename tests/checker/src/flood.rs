//! `checker flood SOCKET [--malformed N] [--concurrent M] [--hold-ms T] [--after K]` (in L2):
//! floods a running ghvmm's API socket, then checks that well-formed requests are answered.
//!
//! 1. N malformed requests (default 1000), four clients at a time, each on its own connection
//!    and half-closed after it: garbage, bad request lines and methods, unknown paths,
//!    oversized and malformed headers, bad JSON, wrong and conflicting Content-Lengths,
//!    truncated bodies, non-UTF-8, a connection closed inside its head or at once.
//! 2. M connections (default 100) held open at once for T ms (default 1000): the first tenth
//!    sending a whole request and not reading the answer, of the others a third partway
//!    through a request and the rest idle; one well-formed request meanwhile (after T/2);
//!    then all closed.
//! 3. K well-formed `GET /api/v1/vm.info` (default 10), one after another.
//!
//! Prints one `@@FACT` line per figure:
//!   `@@FACT flood_malformed_sent N`         malformed requests sent
//!   `@@FACT flood_malformed_4xx N`          ... answered with a 4xx
//!   `@@FACT flood_malformed_unanswered N`   ... closed without an answer (those closed at once)
//!   `@@FACT flood_malformed_other N`        ... answered with anything else (should be 0)
//!   `@@FACT flood_concurrent_opened N`      held connections that were opened
//!   `@@FACT flood_refused N`                connects refused (both phases)
//!   `@@FACT flood_503 N`                    503 answers (both phases)
//!   `@@FACT flood_during STATUS MS`         the request made while the connections were held
//!   `@@FACT flood_after_ok OK/K`            well-formed requests afterwards answered 200
//!   `@@FACT flood_after_first_ms MS`        latency of the first of them (-1: no answer)
//!   `@@FACT flood_after_max_ms MS`          the slowest of them
//!   `@@FACT flood_result PASS|FAIL`
//! and exits 0 only when every well-formed request afterwards got a 200 (1 otherwise, 2 for a
//! usage error). STATUS 0 means no answer.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const USAGE: &str =
    "usage: checker flood SOCKET [--malformed N] [--concurrent M] [--hold-ms T] [--after K]";

/// Longer than ghvmm's 10 s request deadline: every connection gets its answer or its end.
const IO_TIMEOUT: Duration = Duration::from_secs(15);

struct Options {
    socket: String,
    malformed: usize,
    concurrent: usize,
    hold: Duration,
    after: usize,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut it = args.iter();
    let socket = it.next().ok_or("no SOCKET")?.clone();
    let mut o = Options {
        socket,
        malformed: 1000,
        concurrent: 100,
        hold: Duration::from_millis(1000),
        after: 10,
    };
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a number"))?;
        let n: usize = value
            .parse()
            .map_err(|_| format!("{flag} {value}: not a number"))?;
        match flag.as_str() {
            "--malformed" => o.malformed = n,
            "--concurrent" => o.concurrent = n,
            "--hold-ms" => o.hold = Duration::from_millis(n as u64),
            "--after" if n > 0 => o.after = n,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(o)
}

/// The malformed requests, cycled through.
fn malformed_kinds() -> Vec<Vec<u8>> {
    let v = |s: &[u8]| s.to_vec();
    let put = |endpoint: &str, body: &[u8]| {
        let mut r = format!(
            "PUT /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    let many: String = (0..40).map(|i| format!("X-{i}: v\r\n")).collect();
    let mut big_body = format!(
        "PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        100 << 10
    )
    .into_bytes();
    big_body.extend(std::iter::repeat_n(b'b', 100 << 10));
    vec![
        v(b"GARBAGE\r\n\r\n"),
        v(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
        v(b"\x00\x01\x02\xff\xfe\r\n\r\n"),
        v(b"GET\r\n\r\n"),
        v(b"GET /api/v1/vm.info\r\n\r\n"),
        v(b"GET /api/v1/vm.info HTTP/9.9\r\n\r\n"),
        v(b"\r\n\r\n\r\n\r\n"),
        v(b"G@T /api/v1/vm.info HTTP/1.1\r\n\r\n"),
        v(b"BREW /api/v1/vm.info HTTP/1.1\r\n\r\n"),
        v(b"get /api/v1/vm.info HTTP/1.1\r\n\r\n"),
        v(b"PUT /api/v1/vm.info HTTP/1.1\r\n\r\n"),
        v(b"GET /api/v1/nothing HTTP/1.1\r\n\r\n"),
        v(b"GET /../../etc/passwd HTTP/1.1\r\n\r\n"),
        v(b"GET /api/v1/\xc3\x28 HTTP/1.1\r\n\r\n"),
        v(b"GET /api/v1/vm.info HTTP/1.1\r\nNo-Colon\r\n\r\n"),
        format!(
            "GET /api/v1/vm.info HTTP/1.1\r\nX: {}\r\n\r\n",
            "h".repeat(20 << 10)
        )
        .into_bytes(),
        format!("GET /api/v1/vm.info HTTP/1.1\r\n{many}\r\n").into_bytes(),
        vec![b'A'; 40 << 10],
        put("vm.add-device", b"{\"path\":"),
        put("vm.add-device", br#"{"path":["/p"]}"#),
        put("vm.add-device", b"\xff\xfe\xfd\xfc"),
        put("vm.remove-device", b"{}"),
        v(b"PUT /api/v1/vm.remove-device HTTP/1.1\r\nContent-Length: abc\r\n\r\n{}"),
        v(b"PUT /api/v1/vm.remove-device HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n{}"),
        v(b"PUT /api/v1/vm.remove-device HTTP/1.1\r\nContent-Length: 5\r\n\r\n{\"id\":\"gpu0\"}"),
        v(b"PUT /api/v1/vm.remove-device HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"id\":"),
        big_body,
        v(b"PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n"),
        v(b"PUT /api/v1/vm.add-device HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"),
        v(b"PUT /api/v1/vm.add-device HTTP/1.1\r\n\r\n"),
        v(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x"),
        Vec::new(),
    ]
}

/// The status of a raw response; 0 for none.
fn status_of(raw: &[u8]) -> u16 {
    let line = raw.split(|&b| b == b'\n').next().unwrap_or_default();
    std::str::from_utf8(line)
        .ok()
        .filter(|l| l.starts_with("HTTP/"))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Reads until the end of the stream, a reset or the timeout; returns the status (0: none).
fn read_status(s: &mut UnixStream) -> u16 {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = s.read(&mut chunk) {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    status_of(&buf)
}

/// One request on its own connection, half-closed after it: the answer's status (0 for
/// none), or `None` when the connection was refused.
fn exchange(socket: &Path, raw: &[u8]) -> Option<u16> {
    let mut s = UnixStream::connect(socket).ok()?;
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    // The server may answer and close before taking all of a refused request.
    let _ = s.write_all(raw);
    let _ = s.shutdown(Shutdown::Write);
    Some(read_status(&mut s))
}

/// Reads the status of each held connection's answer, if one came.
fn poll(held: &mut [(UnixStream, u16)]) {
    for (s, status) in held.iter_mut() {
        let mut b = [0u8; 512];
        if *status == 0 {
            if let Ok(n @ 1..) = s.read(&mut b) {
                *status = status_of(&b[..n]);
            }
        }
    }
}

const WELL_FORMED: &[u8] = b"GET /api/v1/vm.info HTTP/1.1\r\nHost: localhost\r\n\r\n";

#[derive(Default)]
struct Tally {
    client_error: AtomicUsize,
    unavailable: AtomicUsize,
    unanswered: AtomicUsize,
    other: AtomicUsize,
    refused: AtomicUsize,
}

impl Tally {
    fn count(&self, got: Option<u16>) {
        let which = match got {
            None => &self.refused,
            Some(0) => &self.unanswered,
            Some(503) => &self.unavailable,
            Some(400..=499) => &self.client_error,
            Some(_) => &self.other,
        };
        which.fetch_add(1, Ordering::Relaxed);
    }
}

fn get(n: &AtomicUsize) -> usize {
    n.load(Ordering::Relaxed)
}

fn fact(key: &str, value: impl std::fmt::Display) {
    println!("@@FACT {key} {value}");
    let _ = std::io::stdout().flush();
}

fn malformed_phase(socket: &Path, n: usize, tally: &Arc<Tally>) {
    let kinds = Arc::new(malformed_kinds());
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (socket, kinds, next, tally) = (
                socket.to_path_buf(),
                kinds.clone(),
                next.clone(),
                tally.clone(),
            );
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                tally.count(exchange(&socket, &kinds[i % kinds.len()]));
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
}

/// Opens `m` connections and holds them for `hold`, making one well-formed request
/// meanwhile: (opened, refused, 503s, the request's status and ms).
fn concurrent_phase(socket: &Path, m: usize, hold: Duration) -> (usize, usize, usize, u16, u128) {
    let partial: [&[u8]; 3] = [
        b"GET /api/v1/vm.info HTTP/1.1\r\nHost: loc",
        b"PUT /api/v1/vm.remove-device HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"id\":",
        b"G",
    ];
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..m {
        let Ok(mut s) = UnixStream::connect(socket) else {
            refused += 1;
            continue;
        };
        // The whole requests first: they are answered and leave, and the connections still
        // held afterwards are all idle or partial.
        if i < m / 10 {
            let _ = s.write_all(WELL_FORMED);
        } else if i % 3 == 0 {
            let _ = s.write_all(partial[i % partial.len()]);
        }
        if s.set_nonblocking(true).is_ok() {
            held.push((s, 0u16));
        }
    }
    let opened = held.len();
    let start = Instant::now();
    std::thread::sleep(hold / 2);
    poll(&mut held);
    let t = Instant::now();
    let during = exchange(socket, WELL_FORMED).unwrap_or(0);
    let during_ms = t.elapsed().as_millis();
    while start.elapsed() < hold {
        std::thread::sleep(Duration::from_millis(20));
        poll(&mut held);
    }
    poll(&mut held);
    let unavailable = held.iter().filter(|(_, st)| *st == 503).count() + usize::from(during == 503);
    drop(held);
    (opened, refused, unavailable, during, during_ms)
}

pub fn main(args: &[String]) -> i32 {
    let o = match parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("checker flood: {e}\n{USAGE}");
            return 2;
        }
    };
    let socket = Path::new(&o.socket);
    let tally = Arc::new(Tally::default());
    malformed_phase(socket, o.malformed, &tally);
    fact("flood_malformed_sent", o.malformed);
    fact("flood_malformed_4xx", get(&tally.client_error));
    fact("flood_malformed_unanswered", get(&tally.unanswered));
    fact("flood_malformed_other", get(&tally.other));
    let (opened, refused, unavailable, during, during_ms) =
        concurrent_phase(socket, o.concurrent, o.hold);
    fact("flood_concurrent_opened", opened);
    fact("flood_refused", get(&tally.refused) + refused);
    fact("flood_503", get(&tally.unavailable) + unavailable);
    fact("flood_during", format_args!("{during} {during_ms}"));

    let mut ok = 0;
    let mut first_ms: i128 = -1;
    let mut max_ms = 0;
    for i in 0..o.after {
        let t = Instant::now();
        let status = exchange(socket, WELL_FORMED).unwrap_or(0);
        let ms = t.elapsed().as_millis();
        if i == 0 && status != 0 {
            first_ms = ms as i128;
        }
        max_ms = max_ms.max(ms);
        if status == 200 {
            ok += 1;
        } else {
            eprintln!("checker flood: well-formed request {i} afterwards got {status}");
        }
    }
    fact("flood_after_ok", format_args!("{ok}/{}", o.after));
    fact("flood_after_first_ms", first_ms);
    fact("flood_after_max_ms", max_ms);
    let pass = ok == o.after;
    fact("flood_result", if pass { "PASS" } else { "FAIL" });
    if pass {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options() {
        let o = parse_args(&args(&["/s"])).unwrap();
        assert_eq!(
            (o.socket.as_str(), o.malformed, o.concurrent),
            ("/s", 1000, 100)
        );
        let o = parse_args(&args(&["/s", "--concurrent", "7", "--malformed", "3"])).unwrap();
        assert_eq!((o.malformed, o.concurrent), (3, 7));
        assert!(parse_args(&args(&[])).is_err());
        assert!(parse_args(&args(&["/s", "--malformed"])).is_err());
        assert!(parse_args(&args(&["/s", "--malformed", "x"])).is_err());
        assert!(parse_args(&args(&["/s", "--bogus", "1"])).is_err());
        assert!(parse_args(&args(&["/s", "--after", "0"])).is_err());
    }

    #[test]
    fn statuses() {
        assert_eq!(
            status_of(b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n"),
            431
        );
        assert_eq!(status_of(b""), 0);
        assert_eq!(status_of(b"garbage 200"), 0);
        let t = Tally::default();
        for got in [None, Some(0), Some(503), Some(404), Some(200)] {
            t.count(got);
        }
        assert_eq!(
            [
                &t.refused,
                &t.unanswered,
                &t.unavailable,
                &t.client_error,
                &t.other
            ]
            .map(get),
            [1; 5]
        );
        assert!(malformed_kinds().len() >= 30);
    }
}
