//! The threads plugin calls run on. A call is CPU work bounded by its deadline, so it
//! runs off the async workers; a few long-lived threads fed from one queue cost far
//! less per call than a blocking-pool task each (measured: see docs/performance.md),
//! and a burst of calls cannot grow hundreds of threads that fight over the same
//! plugin instances.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads running plugin calls, first come first served.
#[derive(Debug)]
pub(super) struct Executor {
    jobs: Mutex<mpsc::Sender<Job>>,
}

/// The executor is gone (the broker is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the plugin executor has stopped")]
pub(super) struct Stopped;

impl Executor {
    /// Starts `threads` threads; they end when the executor is dropped.
    pub(super) fn new(threads: usize) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..threads.max(1) {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("quiver-plugin-{n}"))
                .spawn(move || {
                    loop {
                        // One thread waits on the queue at a time; the others wait for it.
                        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(Self {
            jobs: Mutex::new(jobs),
        })
    }

    /// Queues `work` behind every job queued before it, at once; the receiver gets its
    /// result (or is dropped with the job, if the executor stops first).
    pub(super) fn submit<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<oneshot::Receiver<T>, Stopped> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(work());
        });
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(job)
            .map_err(|_| Stopped)?;
        Ok(result)
    }
}
