//! # sessiond-lincheck
//!
//! Checks that a concurrent history is linearizable: that every operation
//! can be given one instant between its call and its return such that the
//! operations, taken in the order of those instants, are a legal sequential
//! run of a [`Model`]. This is how the cluster's fault tests judge what
//! clients saw while nodes were killed, paused and partitioned (Jepsen's
//! method): record each client's calls and returns, then check.
//!
//! The search is Wing & Gong's, with Lowe's memoization (the one
//! porcupine and Knossos use): walk the history in time order; at a call,
//! try to linearize that operation now (if the model accepts it with the
//! result it returned) and go on, backtracking when a return is reached
//! whose operation was not linearized before it. Configurations already
//! seen (the set of linearized operations and the model state) are not
//! searched again.
//!
//! Operations whose outcome the client does not know (a timeout, a
//! connection cut mid-command) have no return ([`Operation::ret`] is
//! `None`): they may take effect at any instant after their call, or never,
//! as in Jepsen's `:info` operations.
//!
//! Linearizability is local (Herlihy & Wing): a history of independent
//! objects is linearizable iff the sub-history of each object is, so
//! [`check_partitioned`] checks each key on its own, which keeps the search
//! small.
//!
//! ```
//! use sessiond_lincheck::{check, Operation, Register, RegisterOp, RegisterRet};
//! // Client 1 writes 1 (0..10); client 2 then reads 0 (20..30): stale.
//! let history = vec![
//!     Operation { client: 1, call: 0, ret: Some(10), op: RegisterOp::Write(1), out: RegisterRet::Ok },
//!     Operation { client: 2, call: 20, ret: Some(30), op: RegisterOp::Read, out: RegisterRet::Value(0) },
//! ];
//! assert!(!check(&Register::default(), &history).is_linearizable());
//! ```
#![warn(missing_docs)]

use std::collections::HashSet;
use std::hash::Hash;

mod models;

pub use models::{Lock, LockOp, LockRet, Register, RegisterOp, RegisterRet};

/// A sequential specification: the states an object may be in and what
/// each operation does.
pub trait Model: Clone + Eq + Hash {
    /// An operation as called.
    type Op;
    /// What it returned.
    type Ret;

    /// The states the object may be in after `op` returned `ret` in state
    /// `self` (none when that return is impossible there). `ret` is `None`
    /// when the caller never learned the outcome: every state the operation
    /// could lead to is possible then.
    fn step(&self, op: &Self::Op, ret: Option<&Self::Ret>) -> Vec<Self>;
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation<O, R> {
    /// Who called it (for reports only).
    pub client: u64,
    /// When it was called (any monotonic clock shared by all clients).
    pub call: u64,
    /// When it returned; `None` when the outcome is unknown.
    pub ret: Option<u64>,
    /// What was called.
    pub op: O,
    /// What it returned (ignored when `ret` is `None`).
    pub out: R,
}

/// The verdict on a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A linearization exists: the operations' indexes in its order
    /// (operations without a return that never took effect are left out).
    Linearizable(Vec<usize>),
    /// None exists. `stuck_at` is the index of a returned operation that no
    /// order could place before its return, in the deepest attempt.
    NotLinearizable {
        /// The operation the search could not get past.
        stuck_at: usize,
    },
    /// The search gave up after this many steps (raise the budget, or check
    /// smaller partitions).
    Unknown(u64),
}

impl Verdict {
    /// Whether the history was shown linearizable.
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable(_))
    }
}

/// Steps a search may take before it answers [`Verdict::Unknown`].
pub const DEFAULT_BUDGET: u64 = 20_000_000;

/// Checks `history` against `init` with the default budget.
pub fn check<M: Model>(init: &M, history: &[Operation<M::Op, M::Ret>]) -> Verdict {
    check_with_budget(init, history, DEFAULT_BUDGET)
}

/// Checks each partition of `history` (by `key`) on its own; the history is
/// linearizable iff every partition is. Returns the first partition's key
/// that is not, with its verdict.
pub fn check_partitioned<M, K, F>(
    init: &M,
    history: &[Operation<M::Op, M::Ret>],
    key: F,
) -> Result<(), (K, Verdict)>
where
    M: Model,
    M::Op: Clone,
    M::Ret: Clone,
    K: Ord + Clone,
    F: Fn(&M::Op) -> K,
{
    type Part<M> = Vec<Operation<<M as Model>::Op, <M as Model>::Ret>>;
    let mut parts: std::collections::BTreeMap<K, Part<M>> = std::collections::BTreeMap::new();
    for op in history {
        parts.entry(key(&op.op)).or_default().push(op.clone());
    }
    for (k, part) in parts {
        let verdict = check(init, &part);
        if !verdict.is_linearizable() {
            return Err((k, verdict));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Event {
    Call(usize),
    Return(usize),
}

/// Checks with an explicit step budget.
pub fn check_with_budget<M: Model>(
    init: &M,
    history: &[Operation<M::Op, M::Ret>],
    budget: u64,
) -> Verdict {
    // Events in time order; at equal times calls come first, so two
    // operations meeting at one instant count as concurrent (a clock tick
    // cannot tell which came first, and assuming an order could only
    // invent violations).
    let mut events: Vec<(u64, u8, usize, Event)> = Vec::with_capacity(history.len() * 2);
    for (i, op) in history.iter().enumerate() {
        events.push((op.call, 0, i, Event::Call(i)));
        if let Some(r) = op.ret {
            events.push((r.max(op.call), 1, i, Event::Return(i)));
        }
    }
    events.sort_by_key(|(t, kind, i, _)| (*t, *kind, *i));
    let events: Vec<Event> = events.into_iter().map(|(_, _, _, e)| e).collect();

    // A doubly linked list over `events`, so linearized operations can be
    // lifted out and put back in O(1).
    let n = events.len();
    let mut next: Vec<usize> = (1..=n).collect();
    let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
    let head = usize::MAX; // sentinel index for "before the first"
    let mut first = if n == 0 { n } else { 0 };
    let mut call_pos = vec![usize::MAX; history.len()];
    let mut ret_pos = vec![usize::MAX; history.len()];
    for (p, e) in events.iter().enumerate() {
        match e {
            Event::Call(i) => call_pos[*i] = p,
            Event::Return(i) => ret_pos[*i] = p,
        }
    }
    let returned_total = history.iter().filter(|o| o.ret.is_some()).count();

    let unlink = |p: usize, first: &mut usize, next: &mut Vec<usize>, prev: &mut Vec<usize>| {
        let (a, b) = (prev[p], next[p]);
        if a == head {
            *first = b;
        } else {
            next[a] = b;
        }
        if b < n {
            prev[b] = a;
        }
    };
    let relink = |p: usize, first: &mut usize, next: &mut [usize], prev: &mut [usize]| {
        let (a, b) = (prev[p], next[p]);
        if a == head {
            *first = p;
        } else {
            next[a] = p;
        }
        if b < n {
            prev[b] = p;
        }
    };

    struct Frame<M> {
        op: usize,
        state: M,
        // Alternatives not tried yet for this operation at this point.
        others: Vec<M>,
    }
    let mut bits = Bits::new(history.len());
    let mut stack: Vec<Frame<M>> = Vec::new();
    let mut seen: HashSet<(Bits, M)> = HashSet::new();
    let mut state = init.clone();
    let mut returned_done = 0usize;
    let mut cursor = first;
    let mut steps = 0u64;
    let mut deepest = (0usize, 0usize);

    loop {
        steps += 1;
        if steps > budget {
            return Verdict::Unknown(steps);
        }
        if returned_done == returned_total {
            let order = stack.iter().map(|f| f.op).collect();
            return Verdict::Linearizable(order);
        }
        let mut advanced = false;
        if cursor < n {
            match events[cursor] {
                Event::Call(i) => {
                    let op = &history[i];
                    let mut outcomes = state.step(&op.op, op.ret.map(|_| &op.out));
                    let mut placed = false;
                    while let Some(candidate) = outcomes.pop() {
                        let mut b = bits.clone();
                        b.set(i);
                        if seen.insert((b.clone(), candidate.clone())) {
                            stack.push(Frame {
                                op: i,
                                state: std::mem::replace(&mut state, candidate),
                                others: outcomes,
                            });
                            bits = b;
                            if op.ret.is_some() {
                                returned_done += 1;
                            }
                            unlink(call_pos[i], &mut first, &mut next, &mut prev);
                            if ret_pos[i] != usize::MAX {
                                unlink(ret_pos[i], &mut first, &mut next, &mut prev);
                            }
                            cursor = first;
                            placed = true;
                            break;
                        }
                    }
                    if !placed {
                        cursor = next[cursor];
                    }
                    advanced = true;
                }
                Event::Return(i) => {
                    // `i` returned before it could be linearized: this
                    // branch is dead.
                    if stack.len() >= deepest.0 {
                        deepest = (stack.len(), i);
                    }
                }
            }
        }
        if advanced {
            continue;
        }
        // Backtrack: undo the last linearized operation and try its next
        // alternative outcome, or leave it unlinearized and go on after its
        // call.
        let Some(mut frame) = stack.pop() else {
            return Verdict::NotLinearizable {
                stuck_at: deepest.1,
            };
        };
        let i = frame.op;
        if ret_pos[i] != usize::MAX {
            relink(ret_pos[i], &mut first, &mut next, &mut prev);
        }
        relink(call_pos[i], &mut first, &mut next, &mut prev);
        bits.clear(i);
        if history[i].ret.is_some() {
            returned_done -= 1;
        }
        state = frame.state.clone();
        cursor = next[call_pos[i]];
        while let Some(candidate) = frame.others.pop() {
            let mut b = bits.clone();
            b.set(i);
            if seen.insert((b.clone(), candidate.clone())) {
                let prior = std::mem::replace(&mut state, candidate);
                bits = b;
                if history[i].ret.is_some() {
                    returned_done += 1;
                }
                unlink(call_pos[i], &mut first, &mut next, &mut prev);
                if ret_pos[i] != usize::MAX {
                    unlink(ret_pos[i], &mut first, &mut next, &mut prev);
                }
                stack.push(Frame {
                    op: i,
                    state: prior,
                    others: frame.others,
                });
                cursor = first;
                break;
            }
        }
    }
}

/// A set of operation indexes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}
