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
