//! A small TCP echo server on loopback, and the client side of one exchange with it.
//!
//! The protocol is one line each way: the client sends `ECHO <payload>\n` or `SLOW <payload>\n`,
//! the server sends the same line back (after [`SLOW_REPLY_DELAY`] for `SLOW`) and closes the
//! connection. Replies are byte-for-byte echoes, so the bytes a call sends and receives match.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How long the server waits before answering a `SLOW` request: longer than the demo's default
/// slow threshold of 100 ms, so these calls show up as slow network operations.
pub const SLOW_REPLY_DELAY: Duration = Duration::from_millis(120);

/// Longest a connect, read or write may take before the call is recorded as failed, so that a
/// stuck peer cannot hang the demo.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest request line the server reads; anything past it is not echoed.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// How long the accept loop pauses after a failed accept (for example when out of file
/// descriptors) so it does not spin.
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(10);

const ECHO_VERB: &[u8] = b"ECHO ";
const SLOW_VERB: &[u8] = b"SLOW ";

/// An echo server listening on an ephemeral port of 127.0.0.1, stopped when dropped.
#[derive(Debug)]
pub struct EchoServer {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Binds 127.0.0.1 on a port the system picks and starts answering in the background.
    ///
    /// # Errors
    /// If the port cannot be bound or the accept thread cannot be started.
    pub fn start() -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let acceptor = thread::Builder::new().name("echo-server".into()).spawn({
            let stopping = Arc::clone(&stopping);
            move || accept_until_stopped(&listener, &stopping)
        })?;
        Ok(EchoServer {
            addr,
            stopping,
            acceptor: Some(acceptor),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // The accept loop is blocked in `accept`; a connection wakes it to see the flag. If
        // that connection cannot be made, joining could wait forever, so the thread is left to
        // end with the process instead.
        let woken = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT).is_ok();
        if let (true, Some(acceptor)) = (woken, self.acceptor.take()) {
            let _ = acceptor.join();
        }
    }
}

/// Accepts connections and answers each on its own thread, so that a slow reply does not hold
/// up the calls behind it.
fn accept_until_stopped(listener: &TcpListener, stopping: &AtomicBool) {
    for connection in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = connection else {
            thread::sleep(ACCEPT_RETRY_PAUSE);
            continue;
        };
        // Nobody can be told about a server-side failure except the client, which sees its
        // connection close early and records that as the call's error.
        let _ = thread::Builder::new()
            .name("echo-connection".into())
            .spawn(move || {
                let _ = answer(&stream);
            });
    }
}

/// Reads one request line and sends it back, after a pause if it asks to be slow.
fn answer(stream: &TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut line = Vec::new();
    BufReader::new(stream)
        .take(MAX_REQUEST_BYTES)
        .read_until(b'\n', &mut line)?;
    if line.starts_with(SLOW_VERB) {
        thread::sleep(SLOW_REPLY_DELAY);
    }
    let mut writer = stream;
    writer.write_all(&line)?;
    writer.flush()
}

/// An address on 127.0.0.1 where nothing listens: a port the system handed out and that was
/// released at once, so connecting to it is refused.
///
/// # Errors
/// If no port can be bound.
pub fn closed_address() -> io::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    listener.local_addr()
    // `listener` is dropped here, closing the port.
}

/// The request line for a call: the verb, the call's id, then filler up to `payload_bytes`.
pub fn request_line(slow: bool, call_id: &str, payload_bytes: usize) -> Vec<u8> {
    let mut line = Vec::with_capacity(ECHO_VERB.len() + payload_bytes + 1);
    line.extend_from_slice(if slow { SLOW_VERB } else { ECHO_VERB });
    line.extend_from_slice(call_id.as_bytes());
    line.push(b' ');
    let filler = payload_bytes.saturating_sub(call_id.len() + 1);
    line.extend(b"0123456789abcdef".iter().cycle().take(filler));
    line.push(b'\n');
    line
}

/// What one exchange with the echo server did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Exchange {
    /// Bytes known to have been written.
    pub bytes_sent: u64,
    /// Bytes read back.
    pub bytes_received: u64,
    /// Why the exchange failed, with the operating system's reason.
    pub error: Option<String>,
}

/// Connects to `addr`, sends `request`, and reads the reply until the server closes.
pub fn exchange(addr: SocketAddr, request: &[u8]) -> Exchange {
    let mut exchange = Exchange::default();
    if let Err(error) = send_and_receive(addr, request, &mut exchange) {
        exchange.error = Some(error);
    }
    exchange
}

fn send_and_receive(
    addr: SocketAddr,
    request: &[u8],
    exchange: &mut Exchange,
) -> Result<(), String> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| format!("set timeouts on connection to {addr}: {e}"))?;
    let mut writer = &stream;
    // A failed `write_all` does not say how much got out, so only a complete write counts.
    writer
        .write_all(request)
        .map_err(|e| format!("send to {addr}: {e}"))?;
    exchange.bytes_sent = request.len() as u64;
    let mut reply = Vec::with_capacity(request.len());
    // One byte more than an echo needs, so a longer reply is noticed rather than cut.
    let read = (&stream)
        .take(request.len() as u64 + 1)
        .read_to_end(&mut reply);
    exchange.bytes_received = reply.len() as u64;
    read.map_err(|e| format!("receive from {addr}: {e}"))?;
    if reply != request {
        return Err(format!(
            "reply from {addr} is not an echo: sent {} bytes, received {}",
            request.len(),
            reply.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_the_request_and_refuses_on_a_closed_port() {
        let server = EchoServer::start().unwrap();
        let request = request_line(false, "evt-00001/net-0", 64);
        assert_eq!(request.len(), ECHO_VERB.len() + 64 + 1);
        let ok = exchange(server.addr(), &request);
        assert_eq!(ok.error, None);
        assert_eq!((ok.bytes_sent, ok.bytes_received), (65 + 5, 65 + 5));

        let refused = exchange(closed_address().unwrap(), &request);
        let error = refused.error.unwrap();
        assert!(error.starts_with("connect to 127.0.0.1:"), "{error}");
        assert_eq!((refused.bytes_sent, refused.bytes_received), (0, 0));
    }
}
