//! The three tiers, each an actor under the runtime's memory supervisor:
//! [`l1`] (one per agent, the active window), [`l2`] (one per system, the page table and the
//! index) and [`l3`] (one per system, the durable store). Start them in the order L3, L2, L1 and
//! restart them rest-for-one: L2 loads its table from L3, and an L1 reloads its window from L2.

pub mod l1;
pub mod l2;
pub mod l3;
#[cfg(test)]
pub(crate) mod test_tiers;

use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorRef, Message, RpcReplyPort};

use crate::error::{MemoryError, Result};

/// Asks tier actor `actor` (named `tier` in errors) and waits up to `timeout` for the answer: a
/// tier that is gone or drops the request is `Unavailable`, one that does not answer in time is
/// `Timeout`.
pub(crate) async fn ask<M: Message, T: Send + 'static>(
    actor: &ActorRef<M>,
    tier: &'static str,
    timeout: Duration,
    msg: impl FnOnce(RpcReplyPort<T>) -> M,
) -> Result<T> {
    match actor.call(msg, Some(timeout)).await {
        Ok(CallResult::Success(answer)) => Ok(answer),
        Ok(CallResult::Timeout) => Err(MemoryError::Timeout { tier, after: timeout }),
        Ok(CallResult::SenderError) | Err(_) => Err(MemoryError::Unavailable(tier)),
    }
}

#[cfg(test)]
mod tests {
    use ractor::{Actor, ActorProcessingErr};

    use super::*;

    /// Keeps every reply port it is given and never answers.
    struct Silent;

    #[ractor::async_trait]
    impl Actor for Silent {
        type Msg = RpcReplyPort<u32>;
        type State = Vec<RpcReplyPort<u32>>;
        type Arguments = ();

        async fn pre_start(
            &self,
            _: ActorRef<Self::Msg>,
            _: (),
        ) -> std::result::Result<Self::State, ActorProcessingErr> {
            Ok(Vec::new())
        }

        async fn handle(
            &self,
            _: ActorRef<Self::Msg>,
            reply: RpcReplyPort<u32>,
            held: &mut Self::State,
        ) -> std::result::Result<(), ActorProcessingErr> {
            held.push(reply);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_tier_that_does_not_answer_is_a_timeout_and_one_that_is_gone_is_unavailable() {
        let (silent, join) = Actor::spawn(None, Silent, ()).await.unwrap();
        let after = Duration::from_millis(50);
        let err = ask(&silent, "L2", after, |reply| reply).await.unwrap_err();
        assert_eq!(err, MemoryError::Timeout { tier: "L2", after });
        silent.stop(None);
        join.await.unwrap();
        let err = ask(&silent, "L2", after, |reply| reply).await.unwrap_err();
        assert_eq!(err, MemoryError::Unavailable("L2"));
    }
}
