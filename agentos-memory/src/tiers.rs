//! The three tiers, each an actor under the runtime's memory supervisor:
//! [`l1`] (one per agent, the active window), [`l2`] (one per system, the page table and the
//! index) and [`l3`] (one per system, the durable store). Start them in the order L3, L2, L1 and
//! restart them rest-for-one: L2 loads its table from L3, and an L1 reloads its window from L2.

pub mod l1;
pub mod l2;
pub mod l3;
#[cfg(test)]
pub(crate) mod test_tiers;
