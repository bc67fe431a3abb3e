//! A simulated accelerator for the examples: `units` parallel units shared by the jobs on it
//! (processor sharing). A job of `work` takes `work` while at most `units` jobs run, and
//! proportionally longer beyond (each job gets `units / running` of a unit), as requests
//! batched onto a saturated GPU do. A job whose future is dropped (the client hung up)
//! leaves the accelerator at once.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

/// The accelerator: cheap to share (`Arc`), driven by one background task.
pub struct Accelerator {
    units: usize,
    jobs: Mutex<Jobs>,
    changed: Arc<Notify>,
}

struct Jobs {
    /// When the work left was last brought up to date.
    at: Instant,
    running: Vec<Job>,
}

struct Job {
    /// Nanoseconds of work left, at a whole unit's speed.
    left: f64,
    done: oneshot::Sender<()>,
}

impl Accelerator {
    /// An accelerator of `units` parallel units (at least 1); its driver runs on the current
    /// Tokio runtime until the accelerator is dropped.
    pub fn new(units: usize) -> Arc<Accelerator> {
        let changed = Arc::new(Notify::new());
        let accelerator = Arc::new(Accelerator {
            units: units.max(1),
            jobs: Mutex::new(Jobs {
                at: Instant::now(),
                running: Vec::new(),
            }),
            changed: Arc::clone(&changed),
        });
        tokio::spawn(drive(Arc::downgrade(&accelerator), changed));
        accelerator
    }

    /// Parallel units.
    pub fn units(&self) -> usize {
        self.units
    }

    /// Jobs running now.
    #[allow(dead_code)] // not every example reads it
    pub fn running(&self) -> usize {
        self.jobs
            .lock()
            .expect("no panic under the lock")
            .running
            .len()
    }

    /// Runs a job of `work` (at one unit's speed): completes when its share of the units has
    /// done it.
    pub async fn run(&self, work: Duration) {
        let (done, finished) = oneshot::channel();
        {
            let mut jobs = self.jobs.lock().expect("no panic under the lock");
            jobs.advance(Instant::now(), self.units);
            jobs.running.push(Job {
                left: work.as_nanos() as f64,
                done,
            });
        }
        self.changed.notify_one();
        // Wakes the driver however this ends: done, or dropped with the caller (then the
        // driver finds the job's receiver gone and gives its share to the others).
        let _left = Left(&self.changed);
        let _ = finished.await;
    }
}

struct Left<'a>(&'a Notify);

impl Drop for Left<'_> {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

impl Jobs {
    /// Brings every job's work up to `now`, and finishes those done or abandoned.
    fn advance(&mut self, now: Instant, units: usize) {
        let elapsed = now.saturating_duration_since(self.at).as_nanos() as f64;
        self.at = now;
        self.running.retain(|job| !job.done.is_closed());
        let n = self.running.len();
        if n == 0 {
            return;
        }
        let speed = (units as f64 / n as f64).min(1.0);
        let mut i = 0;
        while i < self.running.len() {
            self.running[i].left -= elapsed * speed;
            // Within a tenth of a millisecond counts as done (the timer's resolution).
            if self.running[i].left <= 100_000.0 {
                let job = self.running.swap_remove(i);
                let _ = job.done.send(());
            } else {
                i += 1;
            }
        }
    }

    /// How long until the next job is done, at today's speed.
    fn next_done(&self, units: usize) -> Option<Duration> {
        let n = self.running.len();
        let speed = (units as f64 / n.max(1) as f64).min(1.0);
        self.running
            .iter()
            .map(|job| job.left)
            .min_by(f64::total_cmp)
            .map(|left| Duration::from_nanos((left / speed).max(0.0) as u64))
    }
}

/// Finishes jobs as their work is done; woken early when a job comes or goes.
async fn drive(accelerator: Weak<Accelerator>, changed: Arc<Notify>) {
    loop {
        let next = {
            let Some(accelerator) = accelerator.upgrade() else {
                return;
            };
            let mut jobs = accelerator.jobs.lock().expect("no panic under the lock");
            jobs.advance(Instant::now(), accelerator.units);
            jobs.next_done(accelerator.units)
        };
        match next {
            Some(wait) => {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = changed.notified() => {}
                }
            }
            None => {
                // Idle: wake on the next job, or now and then to notice being dropped.
                tokio::select! {
                    _ = changed.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}
