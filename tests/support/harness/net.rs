//! Loopback networking for tests: free ports, waiting for a listener, minimal HTTP GET.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::error::HarnessError;
use super::process::ChildGuard;

/// How long to wait between connection attempts: short, since the wait is for an event.
const POLL: Duration = Duration::from_millis(25);

/// A loopback port that was free a moment ago (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS hands out an ephemeral loopback port")
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_tcp(addr: SocketAddr, timeout: Duration) -> Result<(), HarnessError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if TcpStream::connect_timeout(
            &addr,
            left.clamp(Duration::from_millis(1), Duration::from_secs(1)),
        )
        .is_ok()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(HarnessError::Timeout {
                what: format!("waiting for a listener on {addr}"),
                after: timeout,
            });
        }
        std::thread::sleep(POLL.min(left));
    }
}

/// `GET path` over HTTP/1.1 with `Connection: close`; returns the status code and body.
pub fn http_get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), HarnessError> {
    let what = || format!("GET http://{addr}{path}");
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(HarnessError::io(what()))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(HarnessError::io(what()))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(HarnessError::io(what()))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(HarnessError::io(what()))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(HarnessError::io(what()))?;
    let text = String::from_utf8_lossy(&raw);
    let bad = |reason: &str| HarnessError::Http {
        addr,
        reason: reason.to_string(),
    };
    let status_line = text.lines().next().ok_or_else(|| bad("empty response"))?;
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| bad(&format!("status line {status_line:?}")))?;
    // Chunked bodies keep their chunk framing: fine for the "is it up" checks this is for.
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// Waits until `GET path` answers 200, failing at once if `child` (the server) exits.
pub fn wait_for_http_ok(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    child: &mut ChildGuard,
) -> Result<(), HarnessError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_exit() {
            return Err(HarnessError::Exited {
                name: child.name().to_string(),
                status,
            });
        }
        let last = match http_get(addr, path, Duration::from_secs(2)) {
            Ok((200, _)) => return Ok(()),
            Ok((code, body)) => format!(
                "status {code}: {}",
                body.chars().take(200).collect::<String>()
            ),
            Err(e) => e.to_string(),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HarnessError::Timeout {
                what: format!("waiting for 200 from GET http://{addr}{path} (last: {last})"),
                after: timeout,
            });
        }
        std::thread::sleep(POLL.min(left));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_a_listener_and_times_out_without_one() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        wait_for_tcp(addr, Duration::from_secs(2)).expect("listening");
        drop(listener);
        let err = wait_for_tcp(addr, Duration::from_millis(100)).expect_err("nobody listens");
        assert!(matches!(err, HarnessError::Timeout { .. }), "{err}");
    }

    #[test]
    fn reads_status_and_body() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).expect("read request");
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            s.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
                .expect("write");
            req
        });
        let (code, body) = http_get(addr, "/healthz", Duration::from_secs(5)).expect("response");
        assert_eq!((code, body.as_str()), (503, "busy"));
        let req = server.join().expect("server thread");
        assert!(req.starts_with("GET /healthz HTTP/1.1\r\n"), "{req}");
    }
}
