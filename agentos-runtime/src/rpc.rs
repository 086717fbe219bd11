//! Calls between actors: every request waits a bounded time and fails with a typed error.
//!
//! A call can end three ways besides its answer: the actor is gone before it takes the
//! request, it drops the request unanswered (it died while handling it), or it does not answer
//! in time. The first two are the caller's `gone` error (each caller knows what a missing actor
//! means for it: a system restarting, a lost kernel); the last is [`RuntimeError::Timeout`].

use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorRef, Message, RpcReplyPort};

use crate::error::{Result, RuntimeError};

/// Sends `msg` to `actor` and waits up to `timeout` for the reply. `what` names the request in
/// the timeout error ("the scheduler's statistics").
pub(crate) async fn call<M, T>(
    actor: &ActorRef<M>,
    what: &str,
    timeout: Duration,
    msg: impl FnOnce(RpcReplyPort<T>) -> M,
    gone: impl FnOnce() -> RuntimeError,
) -> Result<T>
where
    M: Message,
    T: Send + 'static,
{
    match actor.call(msg, Some(timeout)).await {
        Ok(CallResult::Success(reply)) => Ok(reply),
        Ok(CallResult::Timeout) => Err(RuntimeError::Timeout {
            what: what.to_string(),
            after: timeout,
        }),
        Ok(CallResult::SenderError) | Err(_) => Err(gone()),
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

        async fn pre_start(&self, _: ActorRef<Self::Msg>, _: ()) -> Result<Self::State, ActorProcessingErr> {
            Ok(Vec::new())
        }

        async fn handle(
            &self,
            _: ActorRef<Self::Msg>,
            reply: RpcReplyPort<u32>,
            held: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            held.push(reply);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_call_that_gets_no_answer_times_out_and_one_to_a_stopped_actor_is_gone() {
        let (silent, join) = Actor::spawn(None, Silent, ()).await.unwrap();
        let after = Duration::from_millis(50);
        let gone = || RuntimeError::KernelLost;
        let err = call(&silent, "the silent actor", after, |reply| reply, gone)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, RuntimeError::Timeout { what, after: a } if what == "the silent actor" && *a == after),
            "{err}"
        );
        silent.stop(None);
        join.await.unwrap();
        let err = call(&silent, "the silent actor", after, |reply| reply, gone)
            .await
            .unwrap_err();
        assert!(matches!(err, RuntimeError::KernelLost), "{err}");
    }
}
