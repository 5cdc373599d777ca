//! The waiting requests of one model version, by priority level, and the
//! decision a free instance makes: run a batch now, wait to grow it, or sleep.
//!
//! Batching rule: a free instance takes requests in priority order (within a
//! level, first come first served; requests delayed by a DELAY timeout action
//! after the others) while they are compatible and fit in max_batch_size. It
//! runs them at once when they reach max_batch_size or a preferred size, or
//! when nothing suggests more are coming. It waits (at most
//! max_queue_delay_microseconds after the oldest request arrived) only when
//! more are coming: another instance is busy, or recent batches were larger
//! than what is queued. An idle engine with batch-1 traffic never waits.

use super::batch::compatible;
use super::policy::Policy;
use super::Job;
use std::collections::VecDeque;
use std::time::Instant;

/// What a free instance does next.
pub(super) enum Decision {
    Run(Vec<Job>),
    Wait(Instant),
    Idle,
}

#[derive(Default)]
struct Level {
    ready: VecDeque<Job>,
    /// Requests whose timeout passed under the DELAY action: served after `ready`.
    delayed: VecDeque<Job>,
}

/// Waiting requests and the instances' state.
pub(super) struct Queue {
    levels: Vec<Level>,
    /// Requests waiting, all levels.
    pub len: usize,
    /// Instances running a batch.
    pub busy: usize,
    /// Set when the scheduler is dropped: instances finish the queue and exit.
    pub closed: bool,
    /// Next arrival sequence number (for preserve_ordering).
    pub next_seq: u64,
    /// Moving average of rows per executed batch (how much traffic arrives together).
    recent_rows: f64,
}

// === impl Queue ===

impl Queue {
    pub fn new(levels: usize) -> Self {
        Self {
            levels: (0..levels.max(1)).map(|_| Level::default()).collect(),
            len: 0,
            busy: 0,
            closed: false,
            next_seq: 0,
            recent_rows: 1.0,
        }
    }

    /// Requests waiting at `level`.
    pub fn level_len(&self, level: usize) -> usize {
        let l = &self.levels[level];
        l.ready.len() + l.delayed.len()
    }

    pub fn push(&mut self, job: Job) {
        self.len += 1;
        self.levels[job.level].ready.push_back(job);
    }

    /// Decides what a free instance does at `now`. Requests found cancelled or past their
    /// deadline (REJECT action) are moved to `dropped` for the caller to answer.
    pub fn next(&mut self, policy: &Policy, now: Instant, dropped: &mut Vec<Job>) -> Decision {
        let max_rows = policy.max_batch.max(1);
        let mut taken: Vec<Job> = Vec::new();
        let mut rows = 0usize;
        'levels: for li in 0..self.levels.len() {
            for delayed in [false, true] {
                loop {
                    let level = &mut self.levels[li];
                    let queue = if delayed { &mut level.delayed } else { &mut level.ready };
                    let Some(job) = queue.front() else { break };
                    if job.reply.is_closed() || (job.expired(now) && !policy.levels[li].delay_on_timeout) {
                        dropped.extend(queue.pop_front());
                        self.len -= 1;
                        continue;
                    }
                    if !delayed && job.expired(now) {
                        // DELAY action: behind the requests that are still on time.
                        let mut job = queue.pop_front().expect("front exists");
                        job.delayed = true;
                        level.delayed.push_back(job);
                        continue;
                    }
                    let fits = taken.is_empty()
                        || (policy.batching.is_some()
                            && rows + job.rows <= max_rows
                            && compatible(&taken[0].inputs, &job.inputs));
                    if !fits {
                        break 'levels;
                    }
                    rows += job.rows;
                    taken.push(queue.pop_front().expect("front exists"));
                    self.len -= 1;
                    if policy.batching.is_none() || rows >= max_rows {
                        break 'levels;
                    }
                }
            }
        }
        if taken.is_empty() {
            return Decision::Idle;
        }
        let Some(batching) = policy.batching.as_ref().filter(|_| rows < max_rows) else {
            return self.run(taken, rows);
        };
        // The largest prefix of whole requests that makes a preferred size.
        let mut cut = None;
        let mut sum = 0;
        for (i, j) in taken.iter().enumerate() {
            sum += j.rows;
            if batching.preferred.binary_search(&sum).is_ok() {
                cut = Some((i + 1, sum));
            }
        }
        if let Some((n, sum)) = cut {
            let rest = taken.split_off(n);
            self.put_back(rest);
            return self.run(taken, sum);
        }
        let oldest = taken.iter().map(|j| j.enqueued).min().expect("taken is not empty");
        let until = oldest + batching.max_delay;
        let more_coming = self.busy > 0 || (rows as f64) + 0.5 < self.recent_rows;
        if now < until && more_coming {
            self.put_back(taken);
            return Decision::Wait(until);
        }
        self.run(taken, rows)
    }

    fn run(&mut self, taken: Vec<Job>, rows: usize) -> Decision {
        self.recent_rows = self.recent_rows * 0.875 + rows as f64 * 0.125;
        Decision::Run(taken)
    }

    /// Returns taken requests to the front of their queues, in their original order.
    fn put_back(&mut self, taken: Vec<Job>) {
        for job in taken.into_iter().rev() {
            self.len += 1;
            let level = &mut self.levels[job.level];
            if job.delayed {
                level.delayed.push_front(job);
            } else {
                level.ready.push_front(job);
            }
        }
    }

    /// Takes the request with arrival number `seq` out of `level`'s queue, if it is still there.
    pub fn remove(&mut self, level: usize, seq: u64) -> Option<Job> {
        let l = &mut self.levels[level];
        for q in [&mut l.ready, &mut l.delayed] {
            if let Some(i) = q.iter().position(|j| j.seq == seq) {
                self.len -= 1;
                return q.remove(i);
            }
        }
        None
    }

    /// Takes every waiting request after the first `keep` in the order instances would serve
    /// them (priority levels in order; within a level, on-time requests before delayed ones).
    pub fn take_after(&mut self, keep: usize) -> Vec<Job> {
        let mut seen = 0usize;
        let mut taken = Vec::new();
        for level in &mut self.levels {
            for q in [&mut level.ready, &mut level.delayed] {
                let stay = keep.saturating_sub(seen).min(q.len());
                seen += q.len();
                taken.extend(q.drain(stay..));
            }
        }
        self.len -= taken.len();
        taken
    }

    /// Rows of the waiting requests, in the order instances would serve them.
    pub fn rows_in_order(&self) -> Vec<usize> {
        self.levels.iter().flat_map(|l| l.ready.iter().chain(l.delayed.iter()).map(|j| j.rows)).collect()
    }

    /// Removes every waiting request (the scheduler is going away).
    pub fn drain(&mut self) -> Vec<Job> {
        self.len = 0;
        self.levels.iter_mut().flat_map(|l| l.ready.drain(..).chain(l.delayed.drain(..))).collect()
    }
}
