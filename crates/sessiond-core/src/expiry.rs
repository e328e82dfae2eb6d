//! An index of deadlines, so expiring costs in proportion to what expires.

use std::collections::BTreeSet;

use crate::Millis;

/// Deadlines ordered by time. The store keeps exactly one entry per live
/// session (its current deadline), so finding what is due is a walk from
/// the front that stops at the first entry in the future: its cost is the
/// number of entries due, never the number stored.
#[derive(Debug)]
pub struct ExpiryIndex<K: Ord + Clone> {
    entries: BTreeSet<(Millis, K)>,
}

impl<K: Ord + Clone> Default for ExpiryIndex<K> {
    fn default() -> Self {
        Self {
            entries: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Clone> ExpiryIndex<K> {
    /// Records that `key` is due at `deadline`.
    pub fn insert(&mut self, deadline: Millis, key: K) {
        self.entries.insert((deadline, key));
    }

    /// Records many entries at once. Into an empty index (a startup load)
    /// this sorts them and builds the tree in one pass, far cheaper than
    /// a million single inserts that each walk the tree.
    pub fn extend(&mut self, entries: Vec<(Millis, K)>) {
        if self.entries.is_empty() {
            self.entries = entries.into_iter().collect();
        } else {
            self.entries.extend(entries);
        }
    }

    /// Forgets the entry `(deadline, key)`.
    pub fn remove(&mut self, deadline: Millis, key: &K) {
        self.entries.remove(&(deadline, key.clone()));
    }

    /// Moves `key` from `old` to `new`.
    pub fn reschedule(&mut self, old: Millis, new: Millis, key: &K) {
        if old != new {
            self.remove(old, key);
            self.insert(new, key.clone());
        }
    }

    /// Removes and returns up to `max` entries due at or before `now`, oldest
    /// first.
    pub fn pop_due(&mut self, now: Millis, max: usize) -> Vec<(Millis, K)> {
        let mut due = Vec::new();
        while due.len() < max {
            match self.entries.first() {
                Some((deadline, _)) if *deadline <= now => {
                    if let Some(entry) = self.entries.pop_first() {
                        due.push(entry);
                    }
                }
                _ => break,
            }
        }
        due
    }

    /// Every entry, earliest first.
    pub fn iter(&self) -> impl Iterator<Item = &(Millis, K)> {
        self.entries.iter()
    }

    /// The earliest deadline, if any.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.entries.first().map(|(d, _)| *d)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_only_what_is_due_in_deadline_order() {
        let mut idx = ExpiryIndex::default();
        idx.insert(30, "c");
        idx.insert(10, "a");
        idx.insert(20, "b");
        assert_eq!(idx.pop_due(9, 10), vec![]);
        assert_eq!(idx.pop_due(20, 10), vec![(10, "a"), (20, "b")]);
        assert_eq!(idx.next_deadline(), Some(30));
    }

    #[test]
    fn extend_builds_the_same_index_as_inserts() {
        let entries: Vec<(Millis, u64)> = (0..1000u64).map(|i| ((i * 7919) % 101, i)).collect();
        let mut bulk = ExpiryIndex::default();
        bulk.extend(entries.clone());
        bulk.extend(vec![(5, 5000)]);
        let mut one_by_one = ExpiryIndex::default();
        for (d, k) in entries.into_iter().chain([(5, 5000)]) {
            one_by_one.insert(d, k);
        }
        assert_eq!(bulk.len(), 1001);
        assert_eq!(
            bulk.pop_due(u64::MAX, 2000),
            one_by_one.pop_due(u64::MAX, 2000)
        );
    }

    #[test]
    fn pop_due_respects_the_batch_size() {
        let mut idx = ExpiryIndex::default();
        for i in 0..10u64 {
            idx.insert(i, i);
        }
        assert_eq!(idx.pop_due(100, 3).len(), 3);
        assert_eq!(idx.len(), 7);
    }

    #[test]
    fn reschedule_moves_the_entry() {
        let mut idx = ExpiryIndex::default();
        idx.insert(10, "a");
        idx.reschedule(10, 50, &"a");
        assert!(idx.pop_due(49, 10).is_empty());
        assert_eq!(idx.pop_due(50, 10), vec![(50, "a")]);
        assert!(idx.is_empty());
    }
}
