//! Captured stdout and stderr with a byte cap.
//!
//! A guest may write as much as it likes; the host keeps the first `cap`
//! bytes and counts the rest. Writes never fail, so a chatty guest is not
//! turned into a trapping one by its own logging. With a redactor, granted
//! secret values are replaced before anything is kept or streamed.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use serde::Serialize;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

use crate::secrets::{RedactStream, Redactor};

/// How much a single `check-write` lets the guest write at once.
const WRITE_PERMIT: usize = 64 * 1024;

/// What a guest wrote to one stream, up to the cap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Captured {
    /// The first bytes written, at most the cap.
    #[serde(serialize_with = "lossy_utf8")]
    pub bytes: Vec<u8>,
    /// Bytes written past the cap and dropped.
    pub dropped: u64,
}

fn lossy_utf8<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(bytes))
}

#[derive(Debug)]
struct Buffer {
    cap: usize,
    captured: Captured,
    /// Replaces secret values, holding back a possible start of one.
    redact: Option<RedactStream>,
}

/// Something a running guest produced, streamed live to a watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapEvent {
    /// Bytes kept from stdout.
    Stdout(Vec<u8>),
    /// Bytes kept from stderr.
    Stderr(Vec<u8>),
    /// A log record kept.
    Log(super::LogRecord),
}

/// Where live output goes; only what is kept under the caps is sent.
pub type Tap = tokio::sync::mpsc::UnboundedSender<TapEvent>;

/// Turns kept bytes into the event for their stream.
type WrapBytes = fn(Vec<u8>) -> TapEvent;

/// A stdout/stderr sink shared between the guest's WASI context and the host.
#[derive(Debug, Clone)]
pub struct CappedPipe {
    buffer: Arc<Mutex<Buffer>>,
    tap: Option<(Tap, WrapBytes)>,
}

impl CappedPipe {
    /// A pipe that keeps at most `cap` bytes.
    pub fn new(cap: u64) -> Self {
        let cap = usize::try_from(cap).unwrap_or(usize::MAX);
        Self {
            buffer: Arc::new(Mutex::new(Buffer {
                cap,
                captured: Captured::default(),
                redact: None,
            })),
            tap: None,
        }
    }

    /// Also sends what is kept to `tap`, wrapped by `wrap`.
    pub fn with_tap(mut self, tap: Option<Tap>, wrap: WrapBytes) -> Self {
        self.tap = tap.map(|t| (t, wrap));
        self
    }

    /// Replaces `redactor`'s values in everything written from now on.
    pub fn with_redactor(self, redactor: &Arc<Redactor>) -> Self {
        if !redactor.is_empty() {
            let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
            buffer.redact = Some(redactor.stream());
        }
        self
    }

    fn push(&self, bytes: &[u8]) {
        let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        match buffer.redact.as_mut() {
            Some(redact) => {
                let clean = redact.write(bytes);
                self.keep(&mut buffer, &clean);
            }
            None => self.keep(&mut buffer, bytes),
        }
    }

    fn keep(&self, buffer: &mut Buffer, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let room = buffer.cap.saturating_sub(buffer.captured.bytes.len());
        let keep = room.min(bytes.len());
        buffer.captured.bytes.extend_from_slice(&bytes[..keep]);
        buffer.captured.dropped += (bytes.len() - keep) as u64;
        if keep > 0
            && let Some((tap, wrap)) = &self.tap
        {
            // A watcher that hung up just stops receiving.
            let _ = tap.send(wrap(bytes[..keep].to_vec()));
        }
    }

    /// Takes what was captured so far, leaving the pipe empty. Bytes held
    /// back by the redactor are released first: the stream has ended.
    pub fn take(&self) -> Captured {
        let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tail) = buffer.redact.as_mut().map(RedactStream::finish) {
            self.keep(&mut buffer, &tail);
        }
        std::mem::take(&mut buffer.captured)
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_PERMIT)
    }
}

impl AsyncWrite for CappedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_cap_and_counts_the_rest() {
        let pipe = CappedPipe::new(4);
        pipe.push(b"abc");
        pipe.push(b"defgh");
        let captured = pipe.take();
        assert_eq!(captured.bytes, b"abcd");
        assert_eq!(captured.dropped, 4);
        assert_eq!(pipe.take(), Captured::default());
    }

    #[test]
    fn secret_values_are_redacted_before_capture_and_tap_even_split_across_writes() {
        let value = crate::secrets::SecretValue::new("s3cr3t".into());
        let redactor = Arc::new(Redactor::new([("db", &value)]));
        let (tap, mut events) = tokio::sync::mpsc::unbounded_channel();
        let pipe = CappedPipe::new(1024)
            .with_tap(Some(tap), TapEvent::Stdout)
            .with_redactor(&redactor);
        pipe.push(b"pw=s3c");
        pipe.push(b"r3t; tail s3");
        let captured = pipe.take();
        assert_eq!(
            String::from_utf8(captured.bytes).unwrap(),
            "pw=[REDACTED:db]; tail s3"
        );
        let mut streamed = Vec::new();
        while let Ok(TapEvent::Stdout(bytes)) = events.try_recv() {
            streamed.extend(bytes);
        }
        assert_eq!(
            String::from_utf8(streamed).unwrap(),
            "pw=[REDACTED:db]; tail s3"
        );
    }
}
