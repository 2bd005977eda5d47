//! Group commit for backends: appends that callers make while earlier ones are on their way
//! are queued, and a background task sends each queue as one call to the backend, which runs
//! every append in it on its own (its own version check, its own result). An append never
//! waits for a batch to fill: with nothing on its way, it goes at once.
//!
//! What it buys depends on what a call costs: on Redis the round trip and a script's start
//! (es-redis), on PostgreSQL the commit's flush to disk (es-postgres). A backend implements
//! [`BatchSend`] (how to send many items in one call) and keeps a [`GroupCommit`].

use std::future::Future;
use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

/// The outcome of one call: one outcome per item, or a failure of the whole call.
pub type CallOutcome<S> =
    Result<Vec<Result<<S as BatchSend>::Reply, <S as BatchSend>::Error>>, <S as BatchSend>::Error>;

/// How a backend sends many items in one call.
pub trait BatchSend: Send + Sync + 'static {
    /// What is queued (one append).
    type Item: Send + 'static;
    /// Each item's own outcome.
    type Reply: Send + 'static;
    /// A failure; a failure of the whole call is given to every item of it.
    type Error: Clone + Send + 'static;

    /// How much of a call's budget `item` takes (its events).
    fn weight(item: &Self::Item) -> usize;

    /// Sends `items` as one call; one outcome per item, in order.
    fn send(&self, items: Vec<Self::Item>) -> impl Future<Output = CallOutcome<Self>> + Send;

    /// The error of an item whose queue stopped before its reply came (its runtime shut
    /// down): its outcome is unknown.
    fn stopped() -> Self::Error;
}

/// Limits of a [`GroupCommit`].
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// At most this many items per call (1: no batching, each item is sent alone).
    pub max_items: usize,
    /// A call closes once its items weigh this much.
    pub max_weight: usize,
    /// Calls on their way at once: one being sent while the next fills.
    pub in_flight: usize,
}

/// A queue of items of one backend and the task that sends it in batches (see the module).
pub struct GroupCommit<S: BatchSend> {
    sender: Arc<S>,
    limits: BatchLimits,
    /// Started by the first item, on its runtime; the task ends when the queue is dropped.
    queue: OnceLock<mpsc::UnboundedSender<Queued<S>>>,
}

struct Queued<S: BatchSend> {
    item: S::Item,
    reply: oneshot::Sender<Result<S::Reply, S::Error>>,
}

impl<S: BatchSend> GroupCommit<S> {
    /// A queue sending through `sender` within `limits`.
    pub fn new(sender: S, limits: BatchLimits) -> Self {
        GroupCommit {
            sender: Arc::new(sender),
            limits,
            queue: OnceLock::new(),
        }
    }

    /// The sender.
    pub fn sender(&self) -> &S {
        &self.sender
    }

    /// Sends `item`, batched with whatever else is queued; returns its own outcome.
    pub async fn submit(&self, item: S::Item) -> Result<S::Reply, S::Error> {
        if self.limits.max_items <= 1 {
            return self.alone(item).await;
        }
        let queue = self.queue.get_or_init(|| {
            let (queue, receiver) = mpsc::unbounded_channel();
            tokio::spawn(send_queued(receiver, self.sender.clone(), self.limits));
            queue
        });
        let (reply, replied) = oneshot::channel();
        if let Err(unsent) = queue.send(Queued { item, reply }) {
            // The task is gone (its runtime shut down): send this one directly.
            return self.alone(unsent.0.item).await;
        }
        replied.await.unwrap_or_else(|_| Err(S::stopped()))
    }

    /// Sends `item` in a call of its own.
    pub async fn alone(&self, item: S::Item) -> Result<S::Reply, S::Error> {
        let mut replies = self.sender.send(vec![item]).await?;
        replies.pop().unwrap_or_else(|| Err(S::stopped()))
    }
}

/// Takes whatever is queued (within the limits) and sends it as one call, with at most
/// `in_flight` calls on their way.
async fn send_queued<S: BatchSend>(
    mut receiver: mpsc::UnboundedReceiver<Queued<S>>,
    sender: Arc<S>,
    limits: BatchLimits,
) {
    let mut in_flight = JoinSet::new();
    let mut held: Option<Queued<S>> = None;
    loop {
        if in_flight.len() >= limits.in_flight.max(1) {
            in_flight.join_next().await;
            continue;
        }
        let first = match held.take() {
            Some(queued) => queued,
            None => tokio::select! {
                biased;
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => continue,
                queued = receiver.recv() => match queued {
                    Some(queued) => queued,
                    None => break,
                },
            },
        };
        let mut weight = S::weight(&first.item);
        let mut batch = vec![first];
        while batch.len() < limits.max_items && weight < limits.max_weight {
            match receiver.try_recv() {
                Ok(queued) if weight + S::weight(&queued.item) > limits.max_weight => {
                    held = Some(queued);
                    break;
                }
                Ok(queued) => {
                    weight += S::weight(&queued.item);
                    batch.push(queued);
                }
                Err(_) => break,
            }
        }
        in_flight.spawn(send_batch(sender.clone(), batch));
    }
    while in_flight.join_next().await.is_some() {}
}

async fn send_batch<S: BatchSend>(sender: Arc<S>, batch: Vec<Queued<S>>) {
    let (items, replies): (Vec<S::Item>, Vec<_>) =
        batch.into_iter().map(|q| (q.item, q.reply)).unzip();
    match sender.send(items).await {
        Ok(outcomes) => {
            for (outcome, reply) in outcomes.into_iter().zip(replies) {
                let _ = reply.send(outcome);
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}
