//! Small helpers every part of the broker uses and none owns: the process clock, hex
//! encoding, a mutex lock that outlives a panicking holder, work that outlives its
//! caller, and where to start reading (`parse_start`, for the CLI and the config
//! file). (Storage, plugins and auth import them from here, not from each
//! other.)

use quiver_protocol::StartAt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// Locks `mutex`, taking the data as it is if a holder panicked: the broker's mutexes
/// guard state that stays consistent between statements, and one panicking task must
/// not take the others down with it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `work` on a task of its own and waits for it, so that the work goes on to its
/// end if the caller's future is dropped (as an HTTP request's is when its client goes
/// away): a change that storage commits must also reach the broker's memory. A panic
/// in `work` is the caller's.
pub async fn to_the_end<T: Send + 'static>(work: impl Future<Output = T> + Send + 'static) -> T {
    match tokio::spawn(work).await {
        Ok(done) => done,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled: only by the runtime shutting down, which drops the caller as well.
        Err(_) => std::future::pending().await,
    }
}

/// Milliseconds since the Unix epoch, by the system clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Lower-case hex of some bytes (a digest, a token).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Parses where to start reading: `earliest`, `latest`, an offset, an RFC 3339 time or
/// `-DURATION` (a time ago).
pub fn parse_start(s: &str) -> Result<StartAt, String> {
    match s {
        "earliest" => return Ok(StartAt::Earliest),
        "latest" => return Ok(StartAt::Latest),
        _ => {}
    }
    if let Ok(offset) = s.parse::<u64>() {
        return Ok(StartAt::Offset(offset));
    }
    let time = if let Some(ago) = s.strip_prefix('-') {
        let ago = humantime::parse_duration(ago).map_err(|e| format!("`{s}`: {e}"))?;
        std::time::SystemTime::now()
            .checked_sub(ago)
            .ok_or_else(|| format!("`{s}` is before the Unix epoch"))?
    } else {
        humantime::parse_rfc3339_weak(s).map_err(|_| {
            format!("`{s}` is not earliest, latest, an offset, an RFC 3339 time or -DURATION")
        })?
    };
    let ms = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("`{s}` is before the Unix epoch"))?
        .as_millis();
    Ok(StartAt::Timestamp(u64::try_from(ms).unwrap_or(u64::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_two_lower_case_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
        assert_eq!(hex(&[]), "");
    }
}
