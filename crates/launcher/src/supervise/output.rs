//! Workers' output: each line read from a worker's pipes, cut to a bounded length, prefixed with
//! its name and handed to one writer thread that owns the [`Sink`], with the last lines kept for
//! the summary of a failure. It decides nothing about the processes themselves.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, BufReader};

/// Lines of each worker's output kept for the summary of a failure.
const LAST_LINES: usize = 40;

/// Where prefixed output goes.
pub type Sink = Arc<Mutex<dyn Write + Send>>;

/// The last lines of one worker's output (both pipes), kept for the summary of a failure.
pub(super) type LastLines = Arc<Mutex<VecDeque<String>>>;

/// Longest line forwarded as one; a longer one (a progress bar that never ends its line, a
/// binary dump) is cut into pieces of this size, so memory stays bounded whatever a worker prints.
pub(super) const MAX_LINE: usize = 16 << 10;
/// Bytes of workers' output waiting for the writer at most; beyond that a worker's forwarding
/// waits, and so, through its pipe, does the worker.
const IN_FLIGHT: usize = 1 << 20;

/// How long the output may make no progress at all before the launcher stops waiting for it.
const OUTPUT_STUCK: Duration = Duration::from_secs(5);

/// Where supervision's output goes: one writer thread owns the sink, so a reader that does not
/// read (a full pipe, a stopped terminal) holds up the workers whose output waits, never the
/// supervision loop that handles signals and exits.
#[derive(Clone)]
pub(super) struct Output {
    tx: tokio::sync::mpsc::UnboundedSender<(Vec<u8>, Option<tokio::sync::OwnedSemaphorePermit>)>,
    room: Arc<tokio::sync::Semaphore>,
    /// Bytes the writer has written: its progress.
    written: Arc<std::sync::atomic::AtomicU64>,
}

impl Output {
    pub(super) fn start(sink: Sink) -> (Self, std::thread::JoinHandle<()>) {
        let (tx, mut rx) =
            tokio::sync::mpsc::unbounded_channel::<(Vec<u8>, Option<tokio::sync::OwnedSemaphorePermit>)>();
        let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let progress = written.clone();
        let writer = std::thread::spawn(move || {
            while let Some((bytes, permit)) = rx.blocking_recv() {
                if let Ok(mut out) = sink.lock() {
                    let _ = out.write_all(&bytes);
                    let _ = out.flush();
                }
                progress.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                drop(permit);
            }
        });
        (Self { tx, room: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT)), written }, writer)
    }

    /// A line of the supervisor's own: never waits.
    pub(super) fn say(&self, text: std::fmt::Arguments<'_>) {
        let _ = self.tx.send((format!("{text}\n").into_bytes(), None));
    }

    /// A line of a worker's: waits while too many bytes are in flight.
    async fn line(&self, bytes: Vec<u8>) {
        let weight = u32::try_from(bytes.len().clamp(1, IN_FLIGHT)).unwrap_or(u32::MAX);
        let permit = self.room.clone().acquire_many_owned(weight).await.ok();
        let _ = self.tx.send((bytes, permit));
    }
}

/// Splits what a worker prints into lines at `\n` or `\r` (a progress bar redraws with `\r`),
/// at most [`MAX_LINE`] bytes each, whatever the bytes are (they need not be UTF-8).
async fn next_line<R: AsyncRead + Unpin>(reader: &mut BufReader<R>, line: &mut Vec<u8>) -> std::io::Result<bool> {
    use tokio::io::AsyncBufReadExt as _;
    line.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(!line.is_empty());
        }
        let room = MAX_LINE - line.len();
        match available.iter().take(room).position(|&b| b == b'\n' || b == b'\r') {
            Some(end) => {
                line.extend_from_slice(&available[..end]);
                reader.consume(end + 1);
                return Ok(true);
            }
            None => {
                let take = available.len().min(room);
                line.extend_from_slice(&available[..take]);
                reader.consume(take);
                if line.len() == MAX_LINE {
                    return Ok(true);
                }
            }
        }
    }
}

pub(super) fn forward<R: AsyncRead + Unpin + Send + 'static>(
    reader: R,
    name: String,
    output: Output,
    last: LastLines,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::with_capacity(MAX_LINE, reader);
        let mut line = Vec::new();
        while let Ok(true) = next_line(&mut reader, &mut line).await {
            if line.is_empty() {
                // The `\n` of a `\r\n`, or a blank line.
                continue;
            }
            let text = String::from_utf8_lossy(&line);
            // One write per line, so lines of different workers never interleave.
            output.line(format!("[{name}] {text}\n").into_bytes()).await;
            if let Ok(mut last) = last.lock() {
                if last.len() == LAST_LINES {
                    last.pop_front();
                }
                last.push_back(text.into_owned());
            }
        }
    })
}

/// Once every process is gone, their pipes close and forwarding ends; then the writer drains.
/// Nothing is dropped while the reader of our output takes it, however slowly; a reader that
/// takes nothing for `OUTPUT_STUCK` does not keep the job open.
pub(super) async fn drain_output(
    forwarding: Vec<tokio::task::JoinHandle<()>>,
    output: Output,
    writer: std::thread::JoinHandle<()>,
) {
    let written = output.written.clone();
    let drained = async move {
        for task in forwarding {
            let _ = task.await;
        }
        drop(output);
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    };
    tokio::pin!(drained);
    let (mut seen, mut since) = (written.load(std::sync::atomic::Ordering::Relaxed), Instant::now());
    while tokio::time::timeout(Duration::from_millis(100), &mut drained).await.is_err() {
        let now = written.load(std::sync::atomic::Ordering::Relaxed);
        if now != seen {
            (seen, since) = (now, Instant::now());
        } else if since.elapsed() > OUTPUT_STUCK {
            break;
        }
    }
}
