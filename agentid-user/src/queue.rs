//! A bounded queue whose memory follows its depth.
//!
//! `std::sync::mpsc::sync_channel(n)` allocates and touches all `n` slots up front: the
//! store's and the audit log's 65,536-deep queues cost ~10 MiB of resident memory each
//! while almost always empty. This wraps the unbounded (block-list) channel, which
//! allocates as it fills and frees as it drains, with a depth count that enforces the
//! bound for producers that must never block.
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    time::Duration,
};

pub use mpsc::{RecvError, RecvTimeoutError};

#[derive(Debug)]
pub struct Sender<T> {
    tx: mpsc::Sender<T>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
}

// Not derived: that would require `T: Clone`.
impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            depth: Arc::clone(&self.depth),
            capacity: self.capacity,
        }
    }
}

#[derive(Debug)]
pub struct Receiver<T> {
    rx: mpsc::Receiver<T>,
    depth: Arc<AtomicUsize>,
}

/// How many items wait in a queue, readable by whoever holds this (`status`, `/metrics`)
/// at no cost to the queue's users: the count the bound is enforced with.
#[derive(Debug, Clone)]
pub struct Depth(Arc<AtomicUsize>);

impl Depth {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// A queue that refuses `try_send` once `capacity` items wait.
pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = mpsc::channel();
    let depth = Arc::new(AtomicUsize::new(0));
    (
        Sender {
            tx,
            depth: Arc::clone(&depth),
            capacity,
        },
        Receiver { rx, depth },
    )
}

impl<T> Sender<T> {
    pub fn depth(&self) -> Depth {
        Depth(Arc::clone(&self.depth))
    }

    /// Queues without blocking; gives the item back when the queue is full or the
    /// receiver is gone.
    pub fn try_send(&self, item: T) -> Result<(), T> {
        if self.depth.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.depth.fetch_sub(1, Ordering::AcqRel);
            return Err(item);
        }
        self.tx.send(item).map_err(|e| {
            self.depth.fetch_sub(1, Ordering::AcqRel);
            e.0
        })
    }

    /// Queues past the bound: for rare control messages (flush requests) that must not be
    /// refused because data filled the queue.
    pub fn send_control(&self, item: T) -> Result<(), T> {
        self.depth.fetch_add(1, Ordering::AcqRel);
        self.tx.send(item).map_err(|e| {
            self.depth.fetch_sub(1, Ordering::AcqRel);
            e.0
        })
    }
}

impl<T> Receiver<T> {
    pub fn recv(&self) -> Result<T, RecvError> {
        let item = self.rx.recv()?;
        self.depth.fetch_sub(1, Ordering::AcqRel);
        Ok(item)
    }

    /// The next item if one is queued, without waiting.
    pub fn try_recv(&self) -> Option<T> {
        let item = self.rx.try_recv().ok()?;
        self.depth.fetch_sub(1, Ordering::AcqRel);
        Some(item)
    }

    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        let item = self.rx.recv_timeout(timeout)?;
        self.depth.fetch_sub(1, Ordering::AcqRel);
        Ok(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_capacity_and_accepts_again_once_drained() {
        let (tx, rx) = bounded(2);
        assert_eq!(tx.try_send(1), Ok(()));
        assert_eq!(tx.clone().try_send(2), Ok(()));
        assert_eq!(tx.try_send(3), Err(3));
        assert_eq!(tx.depth().get(), 2);
        // Control messages pass a full queue.
        assert_eq!(tx.send_control(4), Ok(()));
        assert_eq!(rx.recv(), Ok(1));
        assert_eq!(
            tx.try_send(5),
            Err(5),
            "still 2 queued (2 and the control message)"
        );
        assert_eq!(rx.recv(), Ok(2));
        assert_eq!(tx.try_send(6), Ok(()));
        assert_eq!(rx.recv(), Ok(4));
        assert_eq!(rx.recv_timeout(Duration::from_millis(10)), Ok(6));
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(10)),
            Err(RecvTimeoutError::Timeout)
        );
    }

    #[test]
    fn a_gone_receiver_gives_the_item_back() {
        let (tx, rx) = bounded(4);
        drop(rx);
        assert_eq!(tx.try_send(7), Err(7));
        assert_eq!(tx.send_control(8), Err(8));
    }
}
