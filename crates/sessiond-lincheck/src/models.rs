//! Sequential specifications of what sessiond offers: a register per
//! session key, and a lock with fencing tokens.

use crate::Model;

/// A register holding an integer (a session key; 0 stands for "absent").
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Register(pub i64);

/// A register operation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegisterOp {
    /// Read the value.
    Read,
    /// Write a value.
    Write(i64),
    /// Write `new` if the value is `expected`.
    Cas {
        /// The value expected.
        expected: i64,
        /// The value to write.
        new: i64,
    },
    /// Add to the value (INCR); returns the new value.
    Add(i64),
}

/// What a register operation returned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegisterRet {
    /// A write completed.
    Ok,
    /// A read's value, or an add's new value.
    Value(i64),
    /// Whether a CAS swapped.
    Swapped(bool),
}

impl Model for Register {
    type Op = RegisterOp;
    type Ret = RegisterRet;

    fn step(&self, op: &RegisterOp, ret: Option<&RegisterRet>) -> Vec<Self> {
        match (op, ret) {
            (RegisterOp::Read, None) => vec![self.clone()],
            (RegisterOp::Read, Some(RegisterRet::Value(v))) if *v == self.0 => vec![self.clone()],
            (RegisterOp::Write(v), None | Some(RegisterRet::Ok)) => vec![Register(*v)],
            (RegisterOp::Cas { expected, new }, None) => {
                if *expected == self.0 {
                    vec![Register(*new)]
                } else {
                    vec![self.clone()]
                }
            }
            (RegisterOp::Cas { expected, new }, Some(RegisterRet::Swapped(true)))
                if *expected == self.0 =>
            {
                vec![Register(*new)]
            }
            (RegisterOp::Cas { expected, .. }, Some(RegisterRet::Swapped(false)))
                if *expected != self.0 =>
            {
                vec![self.clone()]
            }
            (RegisterOp::Add(d), None) => vec![Register(self.0.wrapping_add(*d))],
            (RegisterOp::Add(d), Some(RegisterRet::Value(v))) if *v == self.0.wrapping_add(*d) => {
                vec![Register(*v)]
            }
            _ => Vec::new(),
        }
    }
}

/// A lock with fencing tokens: at most one holder; every grant's token is
/// above every earlier grant's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Lock {
    /// The token of the holder, if held.
    pub holder: Option<u64>,
    /// The highest token granted so far.
    pub max_token: u64,
}

/// A lock operation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LockOp {
    /// Take the lock.
    Acquire,
    /// Release the lock held under a token.
    Release(u64),
    /// A write fenced by a token (a commit with FENCE).
    FencedWrite(u64),
}

/// What a lock operation returned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LockRet {
    /// Granted with this token.
    Granted(u64),
    /// Released, or a fenced write accepted.
    Ok,
    /// A fenced write refused (the token is not the holder's).
    Fenced,
}

impl Model for Lock {
    type Op = LockOp;
    type Ret = LockRet;

    fn step(&self, op: &LockOp, ret: Option<&LockRet>) -> Vec<Self> {
        match (op, ret) {
            (LockOp::Acquire, Some(LockRet::Granted(t)))
                if self.holder.is_none() && *t > self.max_token =>
            {
                vec![Lock {
                    holder: Some(*t),
                    max_token: *t,
                }]
            }
            // An acquire whose reply was lost may have been granted (with a
            // token nobody learned, so nobody can use it but the server may
            // still count it as held until it is released or expires:
            // model it as not changing the holder the clients see) or not.
            (LockOp::Acquire, None) => vec![self.clone()],
            (LockOp::Release(t), Some(LockRet::Ok)) if self.holder == Some(*t) => vec![Lock {
                holder: None,
                max_token: self.max_token,
            }],
            (LockOp::Release(t), None) => {
                if self.holder == Some(*t) {
                    vec![
                        Lock {
                            holder: None,
                            max_token: self.max_token,
                        },
                        self.clone(),
                    ]
                } else {
                    vec![self.clone()]
                }
            }
            (LockOp::FencedWrite(t), Some(LockRet::Ok)) if self.holder == Some(*t) => {
                vec![self.clone()]
            }
            (LockOp::FencedWrite(t), Some(LockRet::Fenced)) if self.holder != Some(*t) => {
                vec![self.clone()]
            }
            (LockOp::FencedWrite(_), None) => vec![self.clone()],
            _ => Vec::new(),
        }
    }
}
