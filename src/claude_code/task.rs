//! The one owner of the Claude Code state ([`ClaudeCodeState`]): a task fed through a bounded
//! queue by the OTLP receiver, answering snapshot requests in queue order (so a scrape sees
//! every point accepted before it).
//!
//! Like the pipeline, submitting never waits: the receiver reserves a slot first
//! ([`ClaudeCode::reserve`]) and only sends after the request-record pipeline also took its
//! part, so a refused request leaves nothing half-recorded.
//!
//! It applies inputs and answers snapshots; it does not map OTLP items ([`super::mapping`])
//! or render them ([`super::render`]). What became of each metric point is reported to a
//! [`PointCounter`] (the OTLP receiver's diagnostics), so this module needs nothing from the
//! receiver.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::budget::SeriesBudget;
use crate::claude_code::state::{ClaudeCodeState, Input, Limits, PointOutcome, Snapshot};

/// Counts what became of each metric point the task applied.
pub trait PointCounter: Send + Sync + 'static {
    /// One point had `outcome`.
    fn count(&self, outcome: PointOutcome);
}

enum Msg {
    Inputs(Vec<Input>),
    Snapshot(oneshot::Sender<Arc<Snapshot>>),
}

/// Handle to the Claude Code task; cheap to clone.
#[derive(Clone)]
pub struct ClaudeCode {
    tx: mpsc::Sender<Msg>,
    /// The latest snapshot answered, for a scrape that cannot get a fresh one.
    last: Arc<Mutex<Arc<Snapshot>>>,
}

/// A reserved queue slot: sending cannot fail.
pub struct Reserved<'a>(mpsc::Permit<'a, Msg>);

impl Reserved<'_> {
    /// Sends the inputs into the reserved slot.
    pub fn send(self, inputs: Vec<Input>) {
        self.0.send(Msg::Inputs(inputs));
    }
}

impl ClaudeCode {
    /// Starts the task with a queue of `capacity` batches. It ends when every handle is dropped.
    pub fn spawn<C: PointCounter>(
        limits: Limits,
        capacity: usize,
        budget: Arc<SeriesBudget>,
        counter: Arc<C>,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let last = Arc::new(Mutex::new(Arc::new(
            ClaudeCodeState::new(limits).snapshot(),
        )));
        let state = ClaudeCodeState::with_budget(limits, budget);
        let task = tokio::spawn(run(state, rx, last.clone(), counter));
        (Self { tx, last }, task)
    }

    /// Reserves a queue slot without waiting; `None` when the queue is full or closed.
    pub fn reserve(&self) -> Option<Reserved<'_>> {
        self.tx.try_reserve().ok().map(Reserved)
    }

    /// A snapshot including everything queued before this call (or the latest one, if the
    /// task cannot answer within 5 s).
    pub async fn snapshot(&self) -> Arc<Snapshot> {
        let (reply, rx) = oneshot::channel();
        if self.tx.try_send(Msg::Snapshot(reply)).is_ok()
            && let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(5), rx).await
        {
            return s;
        }
        // Short critical section: one Arc clone.
        match self.last.lock() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(p.get_ref()),
        }
    }
}

async fn run<C: PointCounter>(
    mut state: ClaudeCodeState,
    mut rx: mpsc::Receiver<Msg>,
    last: Arc<Mutex<Arc<Snapshot>>>,
    counter: Arc<C>,
) {
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Inputs(inputs) => {
                for i in inputs {
                    if let Some(outcome) = state.apply(i) {
                        counter.count(outcome);
                    }
                }
            }
            Msg::Snapshot(reply) => {
                let s = Arc::new(state.snapshot());
                // Short critical section: one Arc store.
                if let Ok(mut g) = last.lock() {
                    *g = s.clone();
                }
                let _ = reply.send(s);
            }
        }
    }
}
