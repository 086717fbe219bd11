//! Exclusive leases on named resources.
//!
//! A [`LeaseTable`] holds, for each resource, at most one current [`Lease`] and a FIFO queue of
//! waiters. It is a plain state machine: the caller (the runtime's actor) passes the time in as
//! `now_ms` and delivers the [`Grant`]s that `release`, `release_holder` and `expire` return.
//!
//! A lease is expired at `now_ms` when `now_ms >= expires_ms`. An expired lease stays in the table
//! until [`LeaseTable::expire`] (or a release) ends it, so that its grant to the next waiter is
//! returned to the caller rather than lost; in the meantime [`LeaseTable::holder`] reports no
//! holder.
//!
//! ```
//! use agentos_sync::lease::{Acquire, LeaseTable};
//!
//! let mut table = LeaseTable::new();
//! let Acquire::Granted(lease) = table.acquire("repo/main", "alice", 1_000, 1, 0).unwrap() else {
//!     panic!("the resource was free");
//! };
//! assert!(matches!(
//!     table.acquire("repo/main", "bob", 1_000, 2, 10).unwrap(),
//!     Acquire::Queued { position: 1, .. }
//! ));
//! let grant = table.release("repo/main", lease.id, "alice", 20).unwrap().unwrap();
//! assert_eq!((grant.lease.holder.as_str(), grant.ticket), ("bob", 2));
//! ```

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::error::{Result, SyncError};

/// The identity of one lease; ids are unique within a table and increase with each grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LeaseId(pub u64);

/// An exclusive hold of `holder` on `resource` from `granted_ms` until `expires_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: LeaseId,
    pub resource: String,
    pub holder: String,
    pub granted_ms: u64,
    pub expires_ms: u64,
}

/// What `acquire` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Acquire {
    /// The caller holds the lease (new, or renewed when it already held it).
    Granted(Lease),
    /// The caller waits; `position` 1 is the next in line, `holder` holds the lease now.
    Queued { position: usize, holder: String },
}

/// A waiter that `release`/`expire`/`release_holder` granted the lease to: the caller (the actor)
/// tells it, using the `ticket` it queued with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub lease: Lease,
    pub ticket: u64,
}

/// Resource name -> current lease and FIFO queue of waiters.
#[derive(Debug, Clone, Default)]
pub struct LeaseTable {
    resources: BTreeMap<String, ResourceState>,
    next_id: u64,
}

impl LeaseTable {
    /// The longest term a lease may be asked for: one day.
    pub const MAX_TERM_MS: u64 = 24 * 3600 * 1000;
    /// The longest resource name, in bytes.
    pub const MAX_NAME_BYTES: usize = 256;

    /// An empty table.
    pub fn new() -> Self {
        Self {
            resources: BTreeMap::new(),
            next_id: 1,
        }
    }

    /// Takes `resource` for `holder` for `term_ms` when it is free, or when the current lease has
    /// expired at `now_ms` and nobody waits; otherwise queues the caller, identified by `ticket`
    /// (chosen by the caller), in FIFO order.
    ///
    /// The holder of a live lease asking again renews it: same id, `expires_ms = now_ms + term_ms`.
    /// A holder already queued is not queued twice: it keeps its place, its wait now carries this
    /// call's `ticket` and `term_ms`, and its position is returned.
    ///
    /// Errors: [`SyncError::InvalidName`] for a resource name that is empty, over 256 bytes or has
    /// control characters; [`SyncError::BadTerm`] for a term of 0 or over [`Self::MAX_TERM_MS`].
    pub fn acquire(&mut self, resource: &str, holder: &str, term_ms: u64, ticket: u64, now_ms: u64) -> Result<Acquire> {
        validate_resource(resource)?;
        validate_term(term_ms)?;
        let next_id = &mut self.next_id;
        let state = self.resources.entry(resource.to_owned()).or_default();

        if let Some(lease) = state.lease.as_mut() {
            let live = now_ms < lease.expires_ms;
            if live && lease.holder == holder {
                lease.expires_ms = now_ms.saturating_add(term_ms);
                tracing::debug!(resource, holder, id = lease.id.0, "lease renewed");
                return Ok(Acquire::Granted(lease.clone()));
            }
        }

        // An expired lease with waiters is theirs to take over (in `expire`), not the caller's:
        // taking it here would jump the queue and lose the grant the first waiter is owed.
        let free = match &state.lease {
            None => true,
            Some(lease) => now_ms >= lease.expires_ms && state.waiters.is_empty(),
        };
        if free {
            let lease = new_lease(next_id, resource, holder, term_ms, now_ms);
            tracing::debug!(resource, holder, id = lease.id.0, "lease granted");
            state.lease = Some(lease.clone());
            return Ok(Acquire::Granted(lease));
        }

        let current_holder = state
            .lease
            .as_ref()
            .map(|lease| lease.holder.clone())
            .unwrap_or_default();
        // The latest call is the one whose caller is still waiting for an answer, so the place
        // in line is kept but the ticket and term become this call's.
        if let Some(index) = state.waiters.iter().position(|w| w.holder == holder) {
            if let Some(waiter) = state.waiters.get_mut(index) {
                waiter.ticket = ticket;
                waiter.term_ms = term_ms;
            }
            return Ok(Acquire::Queued {
                position: index + 1,
                holder: current_holder,
            });
        }
        state.waiters.push_back(Waiter {
            holder: holder.to_owned(),
            ticket,
            term_ms,
            queued_ms: now_ms,
        });
        tracing::debug!(resource, holder, ticket, "lease waiter queued");
        Ok(Acquire::Queued {
            position: state.waiters.len(),
            holder: current_holder,
        })
    }

    /// Ends the lease `id` on `resource` held by `holder` (also when it has already expired but
    /// `expire` has not run); returns the grant to the next waiter, if any.
    ///
    /// Errors: [`SyncError::NotHolder`] when `resource` has no lease with that id and holder; the
    /// table is then unchanged.
    pub fn release(&mut self, resource: &str, id: LeaseId, holder: &str, now_ms: u64) -> Result<Option<Grant>> {
        let held = self
            .resources
            .get(resource)
            .and_then(|state| state.lease.as_ref())
            .is_some_and(|lease| lease.id == id && lease.holder == holder);
        if !held {
            return Err(SyncError::NotHolder {
                resource: resource.to_owned(),
                holder: holder.to_owned(),
            });
        }
        tracing::debug!(resource, holder, id = id.0, "lease released");
        Ok(self.hand_over(resource, now_ms))
    }

    /// Drops every lease `holder` holds and every place it waits in (an agent that died or
    /// stopped); returns the grants made to the next waiters, in resource order.
    pub fn release_holder(&mut self, holder: &str, now_ms: u64) -> Vec<Grant> {
        let mut held = Vec::new();
        for (resource, state) in &mut self.resources {
            // Its waits go first, so a lease it holds is never handed back to itself.
            state.waiters.retain(|w| w.holder != holder);
            if state.lease.as_ref().is_some_and(|l| l.holder == holder) {
                held.push(resource.clone());
            }
        }
        self.resources.retain(|_, state| !state.is_empty());
        held.iter()
            .filter_map(|resource| self.hand_over(resource, now_ms))
            .collect()
    }

    /// Ends the leases whose term has passed at `now_ms`; returns the grants to the next waiters,
    /// in resource order.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Grant> {
        let expired: Vec<String> = self
            .resources
            .iter()
            .filter(|(_, state)| state.lease.as_ref().is_some_and(|lease| now_ms >= lease.expires_ms))
            .map(|(resource, _)| resource.clone())
            .collect();
        expired
            .iter()
            .filter_map(|resource| {
                tracing::debug!(resource = resource.as_str(), "lease expired");
                self.hand_over(resource, now_ms)
            })
            .collect()
    }

    /// Removes the waiter with `ticket` from the queue of `resource` (its caller gave up);
    /// returns whether there was one.
    pub fn cancel_wait(&mut self, resource: &str, ticket: u64) -> bool {
        let Some(state) = self.resources.get_mut(resource) else {
            return false;
        };
        let Some(index) = state.waiters.iter().position(|w| w.ticket == ticket) else {
            return false;
        };
        state.waiters.remove(index);
        true
    }

    /// The live lease on `resource` at `now_ms`; `None` when there is none or it has expired.
    pub fn holder(&self, resource: &str, now_ms: u64) -> Option<&Lease> {
        self.resources
            .get(resource)
            .and_then(|state| state.lease.as_ref())
            .filter(|lease| now_ms < lease.expires_ms)
    }

    /// The earliest expiry among current leases (so the actor can set a timer for `expire`).
    pub fn next_expiry(&self) -> Option<u64> {
        self.resources
            .values()
            .filter_map(|state| state.lease.as_ref())
            .map(|lease| lease.expires_ms)
            .min()
    }

    /// The current leases (including expired ones `expire` has not ended yet), in resource order.
    /// This is the durable form: waiters are not kept, as their callers are gone after a restart.
    pub fn leases(&self) -> Vec<Lease> {
        self.resources
            .values()
            .filter_map(|state| state.lease.clone())
            .collect()
    }

    /// Rebuilds a table from [`Self::leases`]; new ids continue above the largest. Of two leases
    /// on one resource, the one with the larger id is kept.
    pub fn from_leases(leases: Vec<Lease>) -> Self {
        let mut table = Self::new();
        for lease in leases {
            table.next_id = table.next_id.max(lease.id.0.saturating_add(1));
            let state = table.resources.entry(lease.resource.clone()).or_default();
            if state.lease.as_ref().is_none_or(|kept| kept.id < lease.id) {
                state.lease = Some(lease);
            }
        }
        table
    }

    /// Ends the lease on `resource` and grants it to the first waiter, if any; drops the
    /// resource's entry when nothing is left in it.
    fn hand_over(&mut self, resource: &str, now_ms: u64) -> Option<Grant> {
        let next_id = &mut self.next_id;
        let state = self.resources.get_mut(resource)?;
        state.lease = None;
        let grant = state.waiters.pop_front().map(|waiter| {
            let lease = new_lease(next_id, resource, &waiter.holder, waiter.term_ms, now_ms);
            tracing::debug!(
                resource,
                holder = waiter.holder.as_str(),
                id = lease.id.0,
                waited_ms = now_ms.saturating_sub(waiter.queued_ms),
                "lease granted to waiter"
            );
            Grant {
                lease,
                ticket: waiter.ticket,
            }
        });
        state.lease = grant.as_ref().map(|g| g.lease.clone());
        if state.is_empty() {
            self.resources.remove(resource);
        }
        grant
    }
}

/// One resource: its lease and who waits for it. Whenever `waiters` is non-empty, `lease` is
/// `Some`: every path that ends a lease grants it to the first waiter.
#[derive(Debug, Clone, Default)]
struct ResourceState {
    lease: Option<Lease>,
    waiters: VecDeque<Waiter>,
}

impl ResourceState {
    fn is_empty(&self) -> bool {
        self.lease.is_none() && self.waiters.is_empty()
    }
}

#[derive(Debug, Clone)]
struct Waiter {
    holder: String,
    ticket: u64,
    term_ms: u64,
    queued_ms: u64,
}

fn new_lease(next_id: &mut u64, resource: &str, holder: &str, term_ms: u64, now_ms: u64) -> Lease {
    let id = LeaseId(*next_id);
    // 2^64 grants cannot happen; only a forged id of u64::MAX in `from_leases` gets here.
    *next_id = next_id.saturating_add(1);
    Lease {
        id,
        resource: resource.to_owned(),
        holder: holder.to_owned(),
        granted_ms: now_ms,
        expires_ms: now_ms.saturating_add(term_ms),
    }
}

fn validate_resource(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > LeaseTable::MAX_NAME_BYTES {
        Some("over 256 bytes")
    } else if name.chars().any(char::is_control) {
        Some("contains a control character")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(SyncError::InvalidName {
            what: "resource",
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn validate_term(term_ms: u64) -> Result<()> {
    if term_ms == 0 || term_ms > LeaseTable::MAX_TERM_MS {
        return Err(SyncError::BadTerm {
            term_ms,
            max_ms: LeaseTable::MAX_TERM_MS,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(outcome: Acquire) -> Lease {
        match outcome {
            Acquire::Granted(lease) => lease,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    fn position(outcome: Acquire) -> usize {
        match outcome {
            Acquire::Queued { position, .. } => position,
            other => panic!("expected a wait, got {other:?}"),
        }
    }

    #[test]
    fn free_resource_is_granted_for_the_term() {
        let mut table = LeaseTable::new();
        let lease = granted(table.acquire("db", "alice", 500, 1, 100).unwrap());
        assert_eq!(lease.resource, "db");
        assert_eq!(lease.holder, "alice");
        assert_eq!((lease.granted_ms, lease.expires_ms), (100, 600));
        assert_eq!(table.holder("db", 599), Some(&lease));
        assert_eq!(table.holder("db", 600), None);
    }

    #[test]
    fn three_waiters_are_granted_in_fifo_order() {
        let mut table = LeaseTable::new();
        let first = granted(table.acquire("db", "alice", 100, 1, 0).unwrap());
        for (i, name) in ["bob", "carol", "dave"].iter().enumerate() {
            let outcome = table.acquire("db", name, 100, 10 + i as u64, 1).unwrap();
            assert_eq!(
                outcome,
                Acquire::Queued {
                    position: i + 1,
                    holder: "alice".into()
                }
            );
        }
        let mut lease = first;
        let mut order = Vec::new();
        for now in [10, 20, 30] {
            let grant = table.release("db", lease.id, &lease.holder, now).unwrap().unwrap();
            assert_eq!(grant.lease.granted_ms, now);
            order.push((grant.lease.holder.clone(), grant.ticket));
            lease = grant.lease;
        }
        assert_eq!(order, [("bob".into(), 10), ("carol".into(), 11), ("dave".into(), 12)]);
        assert_eq!(table.release("db", lease.id, "dave", 40).unwrap(), None);
        assert!(table.leases().is_empty());
    }

    #[test]
    fn expiry_hands_over_to_the_next_waiter_with_its_own_term() {
        let mut table = LeaseTable::new();
        let first = granted(table.acquire("db", "alice", 100, 1, 0).unwrap());
        position(table.acquire("db", "bob", 700, 2, 50).unwrap());
        assert_eq!(table.next_expiry(), Some(100));
        assert!(table.expire(99).is_empty());
        assert_eq!(table.holder("db", 99), Some(&first));

        let grants = table.expire(130);
        assert_eq!(grants.len(), 1);
        let lease = &grants[0].lease;
        assert_eq!(grants[0].ticket, 2);
        assert_eq!(lease.holder, "bob");
        assert_eq!((lease.granted_ms, lease.expires_ms), (130, 830));
        assert!(lease.id > first.id);
        assert_eq!(table.next_expiry(), Some(830));
    }

    #[test]
    fn expired_lease_without_waiters_goes_to_a_new_caller() {
        let mut table = LeaseTable::new();
        let first = granted(table.acquire("db", "alice", 100, 1, 0).unwrap());
        let second = granted(table.acquire("db", "bob", 100, 2, 100).unwrap());
        assert_eq!(second.holder, "bob");
        assert!(second.id > first.id);
    }

    #[test]
    fn expired_lease_with_waiters_does_not_let_a_newcomer_jump_the_queue() {
        let mut table = LeaseTable::new();
        granted(table.acquire("db", "alice", 100, 1, 0).unwrap());
        position(table.acquire("db", "bob", 100, 2, 10).unwrap());
        assert_eq!(position(table.acquire("db", "carol", 100, 3, 200).unwrap()), 2);
        let grants = table.expire(200);
        assert_eq!(grants[0].lease.holder, "bob");
    }

    #[test]
    fn release_by_a_non_holder_is_refused_and_changes_nothing() {
        let mut table = LeaseTable::new();
        let lease = granted(table.acquire("db", "alice", 100, 1, 0).unwrap());
        position(table.acquire("db", "bob", 100, 2, 0).unwrap());
        let refused = table.release("db", lease.id, "bob", 10);
        assert_eq!(
            refused,
            Err(SyncError::NotHolder {
                resource: "db".into(),
                holder: "bob".into()
            })
        );
        assert!(table.release("db", LeaseId(lease.id.0 + 1), "alice", 10).is_err());
        assert!(table.release("other", lease.id, "alice", 10).is_err());
        assert_eq!(table.holder("db", 10), Some(&lease));
        assert_eq!(table.leases(), vec![lease.clone()]);
        // Bob still waits in first place.
        let grant = table.release("db", lease.id, "alice", 20).unwrap().unwrap();
        assert_eq!(grant.lease.holder, "bob");
    }

    #[test]
    fn release_holder_frees_leases_and_queue_places() {
        let mut table = LeaseTable::new();
        granted(table.acquire("a", "alice", 100, 1, 0).unwrap());
        granted(table.acquire("b", "bob", 100, 2, 0).unwrap());
        position(table.acquire("a", "carol", 100, 3, 0).unwrap());
        position(table.acquire("b", "alice", 100, 4, 0).unwrap());
        position(table.acquire("b", "carol", 100, 5, 0).unwrap());

        let grants = table.release_holder("alice", 10);
        assert_eq!(grants.len(), 1);
        assert_eq!((grants[0].lease.holder.as_str(), grants[0].ticket), ("carol", 3));
        assert_eq!(table.holder("a", 10).unwrap().holder, "carol");
        // Alice's place on "b" is gone: carol is now first in line there.
        let grant = table
            .release("b", table.holder("b", 10).unwrap().id, "bob", 20)
            .unwrap()
            .unwrap();
        assert_eq!((grant.lease.holder.as_str(), grant.ticket), ("carol", 5));
        assert!(table.release_holder("nobody", 30).is_empty());
    }

    #[test]
    fn release_holder_does_not_hand_a_lease_back_to_itself() {
        let mut table = LeaseTable::new();
        granted(table.acquire("a", "alice", 100, 1, 0).unwrap());
        // Alice's lease expires and she asks again behind bob.
        position(table.acquire("a", "bob", 100, 2, 50).unwrap());
        position(table.acquire("a", "alice", 100, 3, 150).unwrap());
        let grants = table.release_holder("alice", 150);
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].lease.holder, "bob");
        assert!(table.release_holder("bob", 160).is_empty());
        assert!(table.leases().is_empty());
    }

    #[test]
    fn holder_asking_again_renews_with_the_same_id() {
        let mut table = LeaseTable::new();
        let first = granted(table.acquire("db", "alice", 100, 1, 0).unwrap());
        let renewed = granted(table.acquire("db", "alice", 300, 2, 90).unwrap());
        assert_eq!(renewed.id, first.id);
        assert_eq!(renewed.granted_ms, 0);
        assert_eq!(renewed.expires_ms, 390);
        assert_eq!(table.holder("db", 200), Some(&renewed));
        assert!(table.expire(200).is_empty());
    }

    #[test]
    fn queued_holder_keeps_its_place_and_takes_the_latest_ticket() {
        let mut table = LeaseTable::new();
        let lease = granted(table.acquire("db", "alice", 100, 1, 0).unwrap());
        assert_eq!(position(table.acquire("db", "bob", 100, 2, 0).unwrap()), 1);
        assert_eq!(position(table.acquire("db", "carol", 100, 3, 0).unwrap()), 2);
        assert_eq!(position(table.acquire("db", "bob", 400, 4, 5).unwrap()), 1);
        let grant = table.release("db", lease.id, "alice", 10).unwrap().unwrap();
        assert_eq!(grant.ticket, 4);
        assert_eq!(grant.lease.expires_ms, 410);
    }

    #[test]
    fn cancel_wait_removes_only_that_waiter() {
        let mut table = LeaseTable::new();
        let lease = granted(table.acquire("db", "alice", 100, 1, 0).unwrap());
        position(table.acquire("db", "bob", 100, 2, 0).unwrap());
        position(table.acquire("db", "carol", 100, 3, 0).unwrap());
        assert!(table.cancel_wait("db", 2));
        assert!(!table.cancel_wait("db", 2));
        assert!(!table.cancel_wait("other", 3));
        assert!(!table.cancel_wait("db", 1), "the holder's ticket is not a wait");
        assert_eq!(position(table.acquire("db", "dave", 100, 4, 0).unwrap()), 2);
        let grant = table.release("db", lease.id, "alice", 10).unwrap().unwrap();
        assert_eq!(grant.lease.holder, "carol");
    }

    #[test]
    fn invalid_resource_names_are_refused() {
        let mut table = LeaseTable::new();
        let long = "r".repeat(257);
        for name in ["", "a\nb", "tab\there", "nul\0", long.as_str()] {
            match table.acquire(name, "alice", 100, 1, 0) {
                Err(SyncError::InvalidName { what, .. }) => assert_eq!(what, "resource"),
                other => panic!("{name:?} gave {other:?}"),
            }
        }
        assert!(table.acquire(&"r".repeat(256), "alice", 100, 1, 0).is_ok());
        assert!(table.acquire("repo/main: ünïcode ok", "alice", 100, 1, 0).is_ok());
        assert_eq!(table.leases().len(), 2);
    }

    #[test]
    fn terms_of_zero_or_over_the_maximum_are_refused() {
        let mut table = LeaseTable::new();
        for term_ms in [0, LeaseTable::MAX_TERM_MS + 1, u64::MAX] {
            assert_eq!(
                table.acquire("db", "alice", term_ms, 1, 0),
                Err(SyncError::BadTerm {
                    term_ms,
                    max_ms: LeaseTable::MAX_TERM_MS
                })
            );
        }
        assert!(table.leases().is_empty());
        let lease = granted(table.acquire("db", "alice", LeaseTable::MAX_TERM_MS, 1, 1).unwrap());
        assert_eq!(lease.expires_ms, 1 + LeaseTable::MAX_TERM_MS);
    }

    #[test]
    fn time_near_the_end_of_u64_does_not_overflow() {
        let mut table = LeaseTable::new();
        let lease = granted(table.acquire("db", "alice", 100, 1, u64::MAX - 10).unwrap());
        assert_eq!(lease.expires_ms, u64::MAX);
    }

    #[test]
    fn from_leases_keeps_leases_and_continues_ids_above_the_largest() {
        let mut table = LeaseTable::new();
        granted(table.acquire("b", "bob", 100, 1, 0).unwrap());
        granted(table.acquire("a", "alice", 200, 2, 0).unwrap());
        position(table.acquire("a", "carol", 200, 3, 0).unwrap());
        let saved = table.leases();
        assert_eq!(
            saved.iter().map(|l| l.resource.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let json = serde_json::to_string(&saved).unwrap();

        let mut restored = LeaseTable::from_leases(serde_json::from_str(&json).unwrap());
        assert_eq!(restored.leases(), saved);
        assert_eq!(restored.next_expiry(), Some(100));
        // Carol's wait is not kept: releasing alice's lease grants nobody.
        let a = restored.holder("a", 0).unwrap().clone();
        assert_eq!(restored.release("a", a.id, "alice", 10).unwrap(), None);
        let max = saved.iter().map(|l| l.id).max().unwrap();
        let fresh = granted(restored.acquire("c", "dave", 100, 4, 10).unwrap());
        assert!(fresh.id > max);
    }

    #[test]
    fn from_leases_keeps_the_newer_of_two_leases_on_one_resource() {
        let lease = |id, holder: &str| Lease {
            id: LeaseId(id),
            resource: "db".into(),
            holder: holder.into(),
            granted_ms: 0,
            expires_ms: 100,
        };
        let table = LeaseTable::from_leases(vec![lease(7, "new"), lease(3, "old")]);
        assert_eq!(table.leases(), vec![lease(7, "new")]);
        let table = LeaseTable::from_leases(vec![lease(u64::MAX, "max")]);
        assert_eq!(table.leases().len(), 1);
    }

    mod model {
        use super::*;
        use proptest::prelude::*;
        use std::collections::HashMap;

        const RESOURCES: [&str; 2] = ["r0", "r1"];
        const HOLDERS: [&str; 3] = ["h0", "h1", "h2"];

        #[derive(Debug, Clone)]
        enum Op {
            Acquire { r: usize, h: usize, term: u64 },
            ReleaseCurrent { r: usize },
            ReleaseAsOther { r: usize, h: usize },
            ReleaseHolder { h: usize },
            Expire,
            Cancel { r: usize, ticket_back: u64 },
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0..2usize, 0..3usize, 1..50u64).prop_map(|(r, h, term)| Op::Acquire { r, h, term }),
                2 => (0..2usize).prop_map(|r| Op::ReleaseCurrent { r }),
                1 => (0..2usize, 0..3usize).prop_map(|(r, h)| Op::ReleaseAsOther { r, h }),
                1 => (0..3usize).prop_map(|h| Op::ReleaseHolder { h }),
                2 => Just(Op::Expire),
                1 => (0..2usize, 0..5u64).prop_map(|(r, ticket_back)| Op::Cancel { r, ticket_back }),
            ]
        }

        /// The queue each resource should have, as (holder, ticket), kept beside the table.
        struct Model {
            queues: HashMap<&'static str, Vec<(String, u64)>>,
            last_id: u64,
        }

        impl Model {
            /// A grant must go to the first in line, with the ticket it queued with.
            fn check_grant(&mut self, grant: &Grant) {
                let queue = self.queues.get_mut(grant.lease.resource.as_str()).unwrap();
                assert!(!queue.is_empty(), "grant {grant:?} to nobody waiting");
                let first = queue.remove(0);
                assert_eq!((first.0.as_str(), first.1), (grant.lease.holder.as_str(), grant.ticket));
                self.check_new_id(grant.lease.id);
            }

            fn check_new_id(&mut self, id: LeaseId) {
                assert!(id.0 > self.last_id, "ids must increase");
                self.last_id = id.0;
            }
        }

        proptest! {
            #[test]
            fn one_live_lease_per_resource_and_waiters_served_in_queue_order(
                ops in proptest::collection::vec((op(), 0..30u64), 1..80)
            ) {
                let mut table = LeaseTable::new();
                let mut model = Model {
                    queues: RESOURCES.iter().map(|r| (*r, Vec::new())).collect(),
                    last_id: 0,
                };
                let mut now = 0u64;
                let mut next_ticket = 1u64;
                for (op, step) in ops {
                    now += step;
                    match op {
                        Op::Acquire { r, h, term } => {
                            let (resource, holder) = (RESOURCES[r], HOLDERS[h]);
                            let ticket = next_ticket;
                            next_ticket += 1;
                            let renewing = table.holder(resource, now).is_some_and(|l| l.holder == holder);
                            match table.acquire(resource, holder, term, ticket, now).unwrap() {
                                Acquire::Granted(lease) => {
                                    prop_assert_eq!(&lease.holder, holder);
                                    prop_assert_eq!(lease.expires_ms, now + term);
                                    if !renewing {
                                        prop_assert!(model.queues[resource].is_empty());
                                        model.check_new_id(lease.id);
                                    }
                                }
                                Acquire::Queued { position, holder: current } => {
                                    prop_assert!(!renewing);
                                    prop_assert_ne!(current.as_str(), "");
                                    let queue = model.queues.get_mut(resource).unwrap();
                                    match queue.iter().position(|(h, _)| h == holder) {
                                        Some(i) => {
                                            queue[i].1 = ticket;
                                            prop_assert_eq!(position, i + 1);
                                        }
                                        None => {
                                            queue.push((holder.to_owned(), ticket));
                                            prop_assert_eq!(position, queue.len());
                                        }
                                    }
                                }
                            }
                        }
                        Op::ReleaseCurrent { r } => {
                            let resource = RESOURCES[r];
                            let current = table.leases().into_iter().find(|l| l.resource == resource);
                            match current {
                                Some(lease) => match table.release(resource, lease.id, &lease.holder, now).unwrap() {
                                    Some(grant) => model.check_grant(&grant),
                                    None => prop_assert!(model.queues[resource].is_empty()),
                                },
                                None => prop_assert!(model.queues[resource].is_empty()),
                            }
                        }
                        Op::ReleaseAsOther { r, h } => {
                            let resource = RESOURCES[r];
                            let before = table.leases();
                            let current = before.iter().find(|l| l.resource == resource);
                            if let Some(lease) = current
                                && lease.holder != HOLDERS[h]
                            {
                                let refused = table.release(resource, lease.id, HOLDERS[h], now);
                                prop_assert!(refused.is_err());
                                prop_assert_eq!(table.leases(), before);
                            }
                        }
                        Op::ReleaseHolder { h } => {
                            let holder = HOLDERS[h];
                            for queue in model.queues.values_mut() {
                                queue.retain(|(w, _)| w != holder);
                            }
                            for grant in table.release_holder(holder, now) {
                                prop_assert_ne!(grant.lease.holder.as_str(), holder);
                                model.check_grant(&grant);
                            }
                            prop_assert!(table.leases().iter().all(|l| l.holder != holder));
                        }
                        Op::Expire => {
                            for grant in table.expire(now) {
                                model.check_grant(&grant);
                            }
                            prop_assert!(table.next_expiry().is_none_or(|t| t > now));
                        }
                        Op::Cancel { r, ticket_back } => {
                            let resource = RESOURCES[r];
                            let ticket = next_ticket.saturating_sub(ticket_back + 1);
                            let queue = model.queues.get_mut(resource).unwrap();
                            let expected = queue.iter().position(|(_, t)| *t == ticket);
                            if let Some(i) = expected {
                                queue.remove(i);
                            }
                            prop_assert_eq!(table.cancel_wait(resource, ticket), expected.is_some());
                        }
                    }

                    // At most one lease per resource, and a queue only behind a lease.
                    let leases = table.leases();
                    for resource in RESOURCES {
                        prop_assert!(leases.iter().filter(|l| l.resource == resource).count() <= 1);
                        let state = table.resources.get(resource);
                        let waiting: Vec<(String, u64)> = state
                            .map(|s| s.waiters.iter().map(|w| (w.holder.clone(), w.ticket)).collect())
                            .unwrap_or_default();
                        prop_assert_eq!(&waiting, &model.queues[resource]);
                        if !waiting.is_empty() {
                            prop_assert!(state.is_some_and(|s| s.lease.is_some()));
                        }
                    }
                }
            }
        }
    }
}
