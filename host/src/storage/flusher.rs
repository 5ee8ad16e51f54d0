//! The flusher thread, for topics with batched durability.
//!
//! The writer answers appends to such topics once their group is applied, without
//! flushing, and asks for a flush within the topic's interval ([`Flusher::schedule`]).
//! Any flush the writer does itself covers everything applied before it
//! ([`Flusher::flushed`]). Stopping (or dropping) the flusher flushes what is still due.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::error;

/// Handle to the flusher thread; stops it when dropped.
pub(super) struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// When the oldest unflushed write must be on disk.
    due: Option<Instant>,
    stopped: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run(&self, mut flush: impl FnMut() -> sled::Result<()>) {
        let mut state = self.lock();
        loop {
            let now = Instant::now();
            match state.due {
                Some(due) if due <= now || state.stopped => {
                    state.due = None;
                    drop(state);
                    if let Err(e) = flush() {
                        error!(cause = %e, "flush failed: records acknowledged on topics with batched durability may be lost");
                    }
                    state = self.lock();
                }
                _ if state.stopped => return,
                Some(due) => {
                    state = self
                        .wake
                        .wait_timeout(state, due - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                None => {
                    state = self
                        .wake
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner)
                }
            }
        }
    }
}

impl Flusher {
    /// Starts the thread, which calls `flush` when a flush is due.
    pub(super) fn start(
        flush: impl FnMut() -> sled::Result<()> + Send + 'static,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name("quiver-flush".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || shared.run(flush)
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Everything applied so far must be on disk within `within`.
    pub(super) fn schedule(&self, within: Duration) {
        let due = Instant::now() + within;
        let mut state = self.shared.lock();
        if state.due.is_none_or(|d| due < d) {
            state.due = Some(due);
            self.shared.wake.notify_one();
        }
    }

    /// Everything applied so far has just been flushed.
    pub(super) fn flushed(&self) {
        self.shared.lock().due = None;
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shared.lock().stopped = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    fn counting() -> (Flusher, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel();
        let flusher = Flusher::start(move || {
            let _ = tx.send(());
            Ok(())
        })
        .unwrap();
        (flusher, rx)
    }

    const PATIENCE: Duration = Duration::from_secs(30);

    #[test]
    fn a_scheduled_flush_happens() {
        let (flusher, flushes) = counting();
        flusher.schedule(Duration::from_millis(1));
        assert_eq!(flushes.recv_timeout(PATIENCE), Ok(()));
    }

    #[test]
    fn the_earliest_deadline_wins() {
        let (flusher, flushes) = counting();
        flusher.schedule(Duration::from_secs(3600));
        flusher.schedule(Duration::from_millis(1));
        assert_eq!(flushes.recv_timeout(PATIENCE), Ok(()));
    }

    #[test]
    fn stopping_flushes_what_is_due_and_nothing_else() {
        let (flusher, flushes) = counting();
        flusher.schedule(Duration::from_secs(3600));
        drop(flusher);
        assert_eq!(
            flushes.try_recv(),
            Ok(()),
            "the due flush ran before the thread ended"
        );
        let (flusher, flushes) = counting();
        flusher.schedule(Duration::from_secs(3600));
        flusher.flushed();
        drop(flusher);
        assert!(
            flushes.try_recv().is_err(),
            "nothing was due after the writer's own flush"
        );
    }
}
