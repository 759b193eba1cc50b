//! One key's events in the key index, in revision order.
//!
//! Most keys have one event (written once, or compacted down to their newest version); it is
//! kept inline. A key with more has them in a vector of its own. Either way a [`History`] takes
//! 16 bytes (the inline event's `is_put` flag has spare values that tell the two forms apart),
//! so an index entry with its boxed key is 32 bytes. With `SmallVec<[KeyEvent; 1]>` (32 bytes:
//! without smallvec's `union` feature its inline and spilled forms are an enum with a tag) it
//! was 48, and a full B-tree leaf of 11 entries needed a 640-byte block where it now needs 384.
//! The price: a key with two events or more takes two allocations (the 24-byte box, then the
//! vector's buffer) where a spilled `SmallVec` took one; against that, every key's entry is 16
//! bytes smaller, about 29 bytes of leaf a key with leaves about half full.

use super::KeyEvent;
use std::ops::{Deref, DerefMut};

pub(super) enum History {
    One(KeyEvent),
    /// Boxed so that this form, too, fits in 16 bytes (a `Vec` itself takes 24).
    #[allow(clippy::box_collection)]
    Many(Box<Vec<KeyEvent>>),
}

impl History {
    /// Appends `event`, which is newer than every event held.
    pub(super) fn push(&mut self, event: KeyEvent) {
        match self {
            History::One(first) => {
                *self = History::Many(Box::new(vec![first.clone(), event]));
            }
            History::Many(events) => events.push(event),
        }
    }

    /// Removes the `n` oldest events (at most all of them), passing each to `removed`. Returns
    /// whether none is left: the caller must then take the key out of the index, since what
    /// this history still holds is unspecified. A key left with one event holds it inline again.
    pub(super) fn remove_oldest(&mut self, n: usize, mut removed: impl FnMut(&KeyEvent)) -> bool {
        debug_assert!(n <= self.len(), "removing {n} of {} events", self.len());
        if n == 0 {
            return false;
        }
        match self {
            History::One(only) => {
                removed(only);
                true
            }
            History::Many(events) => {
                events.drain(..n).for_each(|e| removed(&e));
                match events.len() {
                    0 => true,
                    1 => {
                        let last = events.pop().expect("one event");
                        *self = History::One(last);
                        false
                    }
                    _ => false,
                }
            }
        }
    }
}

impl Deref for History {
    type Target = [KeyEvent];

    fn deref(&self) -> &[KeyEvent] {
        match self {
            History::One(only) => std::slice::from_ref(only),
            History::Many(events) => events,
        }
    }
}

impl DerefMut for History {
    fn deref_mut(&mut self) -> &mut [KeyEvent] {
        match self {
            History::One(only) => std::slice::from_mut(only),
            History::Many(events) => events,
        }
    }
}

impl<'a> IntoIterator for &'a History {
    type Item = &'a KeyEvent;
    type IntoIter = std::slice::Iter<'a, KeyEvent>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stored_kv::StoredKv;

    fn event(main: i64) -> KeyEvent {
        KeyEvent {
            kv: StoredKv::new(b"k", b"v", 1, main, 1, 0),
            sub: 0,
            is_put: main % 2 == 0,
        }
    }

    fn mains(h: &History) -> Vec<i64> {
        h.iter().map(KeyEvent::main).collect()
    }

    #[test]
    fn a_history_is_as_small_as_one_event() {
        assert_eq!(std::mem::size_of::<KeyEvent>(), 16);
        assert_eq!(std::mem::size_of::<History>(), 16);
    }

    #[test]
    fn events_are_kept_in_order_and_a_lone_survivor_goes_back_inline() {
        let mut h = History::One(event(2));
        assert_eq!(mains(&h), [2]);
        for main in 3..=6 {
            h.push(event(main));
        }
        assert_eq!(mains(&h), [2, 3, 4, 5, 6]);
        assert!(h
            .iter()
            .map(|e| e.is_put)
            .eq([true, false, true, false, true]));

        let mut gone = Vec::new();
        assert!(!h.remove_oldest(0, |e| gone.push(e.main())));
        assert!(!h.remove_oldest(2, |e| gone.push(e.main())));
        assert_eq!((mains(&h), gone.clone()), (vec![4, 5, 6], vec![2, 3]));
        assert!(matches!(h, History::Many(_)));

        assert!(!h.remove_oldest(2, |e| gone.push(e.main())));
        assert_eq!(mains(&h), [6]);
        assert!(matches!(h, History::One(_)));

        assert!(h.remove_oldest(1, |e| gone.push(e.main())));
        assert_eq!(gone, [2, 3, 4, 5, 6]);

        let mut h = History::One(event(8));
        h.push(event(9));
        assert!(h.remove_oldest(2, |_| {}));
    }
}
