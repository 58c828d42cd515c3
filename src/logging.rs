//! Structured JSON logging to stderr.
//!
//! Level policy: `error` means a request failed or the agent cannot go on.
//! `warning` is abnormal but harmless (a late uevent, a lazy unmount).
//! `info` is a rare state change (listening, a storage mounted or removed).
//! `debug` traces each request and device event.

use slog::{o, Drain, Logger};

/// Number of records the async drain queues; past that it drops records
/// and reports how many.
/// The channel is allocated in full at start, about 100 bytes a slot.
const LOG_CHANNEL_RECORDS: usize = 1024;

/// Creates the root logger writing one JSON object per line to stderr.
/// The returned guard flushes pending records when dropped.
pub fn create_logger(level: slog::Level) -> (Logger, slog_async::AsyncGuard) {
    // Unbuffered stderr would take one write(2) per JSON fragment, dozens
    // per record; the line buffer sends each record in one write.
    let json = slog_json::Json::new(std::io::LineWriter::new(std::io::stderr()))
        .add_default_keys()
        .set_flush(true)
        .build()
        .fuse();
    let (drain, guard) = slog_async::Async::new(json)
        .chan_size(LOG_CHANNEL_RECORDS)
        .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
        .build_with_guard();
    let drain = slog::LevelFilter::new(drain.fuse(), level).fuse();
    let logger = Logger::root(
        drain,
        o!("name" => "volume-agent", "pid" => std::process::id()),
    );
    (logger, guard)
}

/// Creates a logger that discards everything, for unit tests.
pub fn discard() -> Logger {
    Logger::root(slog::Discard, o!())
}
