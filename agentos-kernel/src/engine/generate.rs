//! Continuous batching: every step advances all running generations in one forward.
//!
//! Each step feeds every decoding sequence its last sampled token and fills the rest of the
//! step's token budget with prefill chunks of waiting prompts, so a long prompt never stalls
//! the decodes of others. Finished sequences leave and waiting ones join between steps.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::sampling::{Sampler, SamplingParams};
use super::{Engine, ForwardItem, LogitsWanted, SequenceId};
use crate::chat::{ChatMessage, ChatTemplate};
use crate::error::{KernelError, Result};
use crate::model::ModelConfig;
use crate::tokenizer::{StreamDecoder, TokenId, Tokenizer};

/// What to generate from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Prompt {
    /// Raw text (special tokens written inline are parsed).
    Text(String),
    /// Messages rendered with the model's chat template, ending with an open assistant turn.
    Chat(Vec<ChatMessage>),
    /// Token ids as they are.
    Tokens(Vec<TokenId>),
}

/// A generation request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    /// Most tokens to generate.
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops before any of these strings; the string itself is not returned.
    pub stop: Vec<String>,
    /// Keep going past the model's end-of-generation tokens.
    pub ignore_eos: bool,
    /// Scheduling class: 0 is the most urgent. A waiting request preempts a running one of a
    /// larger class when every slot is taken (default [`GenerateRequest::DEFAULT_PRIORITY`]).
    #[serde(default = "default_priority")]
    pub priority: u8,
}

fn default_priority() -> u8 {
    GenerateRequest::DEFAULT_PRIORITY
}

impl GenerateRequest {
    /// The class of requests that do not say (the runtime's `Priority::Normal`).
    pub const DEFAULT_PRIORITY: u8 = 2;

    pub fn new(prompt: Prompt) -> Self {
        GenerateRequest {
            prompt,
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
            priority: Self::DEFAULT_PRIORITY,
        }
    }

    pub fn chat(messages: Vec<ChatMessage>) -> Self {
        Self::new(Prompt::Chat(messages))
    }

    pub fn max_tokens(mut self, n: usize) -> Self {
        self.max_tokens = n;
        self
    }

    pub fn sampling(mut self, s: SamplingParams) -> Self {
        self.sampling = s;
        self
    }

    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }
}

/// Identifies a generation inside one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// The model produced an end-of-generation token.
    Eos,
    /// A stop string appeared.
    StopString,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The model's context length was reached.
    ContextFull,
    /// The receiver went away or the request was cancelled.
    Cancelled,
}

/// The outcome of one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationSummary {
    pub text: String,
    pub tokens: Vec<TokenId>,
    pub prompt_tokens: usize,
    pub finish_reason: FinishReason,
    /// From submission to the first generated token.
    pub time_to_first_token: Duration,
    pub total_time: Duration,
    /// Prompt tokens whose KV came from the prefix cache (not computed).
    #[serde(default)]
    pub cached_prompt_tokens: usize,
    /// Times it was paused for another request (its KV kept).
    #[serde(default)]
    pub preemptions: u32,
}

/// What a generation streams back.
#[derive(Debug)]
pub enum GenerationEvent {
    /// A generated token and the text that became final with it (empty while a UTF-8
    /// character or a possible stop string is still pending).
    Token { id: TokenId, text: String },
    /// The end: `tail` is the text held back until now; all `Token` texts plus `tail` equal
    /// `summary.text`.
    Finished { tail: String, summary: GenerationSummary },
    /// The generation failed; nothing more follows.
    Failed(KernelError),
}

/// Where a generation's events go. Returning `false` means nobody listens: the request is
/// cancelled and its KV blocks freed.
pub trait EventSink: Send {
    fn send(&mut self, event: GenerationEvent) -> bool;
}

impl EventSink for tokio::sync::mpsc::UnboundedSender<GenerationEvent> {
    fn send(&mut self, event: GenerationEvent) -> bool {
        tokio::sync::mpsc::UnboundedSender::send(self, event).is_ok()
    }
}

impl EventSink for std::sync::mpsc::Sender<GenerationEvent> {
    fn send(&mut self, event: GenerationEvent) -> bool {
        std::sync::mpsc::Sender::send(self, event).is_ok()
    }
}

/// A request checked and tokenized, ready for the batcher.
#[derive(Debug, Clone)]
pub struct PreparedRequest {
    pub prompt: Vec<TokenId>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    pub priority: u8,
}

/// Validates and tokenizes a request. Every problem is an `InvalidRequest` saying what is wrong.
pub fn prepare(
    request: GenerateRequest,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    model: &ModelConfig,
) -> Result<PreparedRequest> {
    request.sampling.validate()?;
    if request.max_tokens == 0 {
        return Err(KernelError::InvalidRequest("max_tokens must be at least 1".into()));
    }
    if request.stop.iter().any(String::is_empty) {
        return Err(KernelError::InvalidRequest("stop strings must not be empty".into()));
    }
    let prompt = match request.prompt {
        Prompt::Text(t) => tokenizer.encode(&t)?,
        Prompt::Chat(messages) => {
            if messages.is_empty() {
                return Err(KernelError::InvalidRequest(
                    "a chat prompt needs at least one message".into(),
                ));
            }
            tokenizer.encode(&template.render(&messages, true)?)?
        }
        Prompt::Tokens(t) => t,
    };
    if prompt.is_empty() {
        return Err(KernelError::InvalidRequest("the prompt is empty".into()));
    }
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= model.vocab_size) {
        return Err(KernelError::InvalidRequest(format!(
            "token id {bad} is outside the vocabulary of {} tokens",
            model.vocab_size
        )));
    }
    if prompt.len() >= model.context_length {
        return Err(KernelError::InvalidRequest(format!(
            "the prompt has {} tokens; the model's context length is {}",
            prompt.len(),
            model.context_length
        )));
    }
    Ok(PreparedRequest {
        prompt,
        max_tokens: request.max_tokens,
        sampling: request.sampling,
        stop: request.stop,
        ignore_eos: request.ignore_eos,
        priority: request.priority,
    })
}

struct Running {
    id: RequestId,
    sequence: SequenceId,
    request: PreparedRequest,
    prefilled: usize,
    generated: Vec<TokenId>,
    /// The sampled token not yet fed to the model.
    next: Option<TokenId>,
    sampler: Sampler,
    decoder: StreamDecoder,
    text: String,
    emitted: usize,
    sink: Box<dyn EventSink>,
    submitted: Instant,
    first_token: Option<Instant>,
    /// Tokens generated since it was last (re)admitted, for round-robin within a class.
    slice_used: usize,
    /// Its place in line while paused (see `Batcher::next_ticket`).
    ticket: u64,
    /// Prompt tokens taken from the prefix cache.
    cached: usize,
    preemptions: u32,
}

struct Waiting {
    id: RequestId,
    ticket: u64,
    request: PreparedRequest,
    sink: Box<dyn EventSink>,
    submitted: Instant,
}

/// What the batcher did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatcherStats {
    /// Running sequences paused (KV kept) for a more urgent request or a same-class turn.
    pub preemptions: u64,
    /// Paused sequences that continued, without recomputing their context.
    pub resumptions: u64,
    /// Prompt tokens run through the model (a resumed sequence adds none).
    pub prefill_tokens: u64,
    /// Prompt tokens whose KV blocks came from the prefix cache instead.
    pub prefix_cached_tokens: u64,
    /// Tokens generated.
    pub generated_tokens: u64,
}

/// The continuous-batching loop over one [`Engine`].
///
/// Scheduling, between steps: free slots (up to `max_running`) go to the most urgent candidate
/// (lowest `priority`), first in line among equals (a preempted sequence rejoins the back of its
/// class); paused and waiting requests compete alike. When all slots are taken, a candidate of a more urgent class preempts the least urgent
/// running sequence, and a candidate of the same class takes the slot of one that has used its
/// time slice. A preempted sequence keeps its KV blocks, so resuming it costs nothing but the
/// slot: its generation continues exactly as if it had never stopped.
pub struct Batcher {
    waiting: VecDeque<Waiting>,
    running: Vec<Running>,
    /// Preempted sequences, KV kept.
    paused: Vec<Running>,
    next_id: u64,
    /// Candidates of one class are served in ticket order: a request gets one when it arrives,
    /// a preempted sequence a new one when it is paused (so it goes to the back of its class).
    next_ticket: u64,
    max_running: Option<usize>,
    time_slice: Option<usize>,
    /// Waiting requests gain one priority class per this much waiting (None: no aging).
    aging: Option<Duration>,
    /// Where the next step's decodes start among the running sequences, when a step cannot
    /// take all of them (see `EngineConfig::step_decodes`).
    decode_cursor: usize,
    /// Overrides the engine's decodes per step.
    step_decodes: Option<usize>,
    /// Overrides the engine's prompt tokens per step that also decodes.
    step_prefill_with_decodes: Option<usize>,
    stats: BatcherStats,
}

impl Default for Batcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Batcher {
    pub fn new() -> Self {
        Batcher {
            waiting: VecDeque::new(),
            running: Vec::new(),
            paused: Vec::new(),
            next_id: 0,
            next_ticket: 0,
            max_running: None,
            time_slice: None,
            aging: Some(Self::DEFAULT_AGING),
            decode_cursor: 0,
            step_decodes: None,
            step_prefill_with_decodes: None,
            stats: BatcherStats::default(),
        }
    }

    /// How long a waiting request waits per priority class it gains (aging).
    pub const DEFAULT_AGING: Duration = Duration::from_secs(2);

    /// Sets the aging step (None turns aging off: strict priorities, starvation possible).
    pub fn with_aging(mut self, step: Option<Duration>) -> Self {
        self.aging = step;
        self
    }

    /// Overrides the engine's decodes per step (`EngineConfig::max_step_decodes`).
    pub fn with_step_decodes(mut self, n: usize) -> Self {
        self.step_decodes = Some(n.max(1));
        self
    }

    /// Overrides the engine's prompt tokens per step that also decodes
    /// (`EngineConfig::max_step_prefill_with_decodes`).
    pub fn with_step_prefill_with_decodes(mut self, n: usize) -> Self {
        self.step_prefill_with_decodes = Some(n.max(1));
        self
    }

    /// Overrides the engine's `max_running` for this batcher.
    pub fn with_max_running(mut self, n: usize) -> Self {
        self.max_running = Some(n.max(1));
        self
    }

    /// Overrides the engine's `time_slice_tokens` for this batcher (0: no rotation).
    pub fn with_time_slice(mut self, tokens: usize) -> Self {
        self.time_slice = Some(tokens);
        self
    }

    pub fn stats(&self) -> BatcherStats {
        self.stats
    }

    pub fn paused(&self) -> usize {
        self.paused.len()
    }

    /// Queues a prepared request; its events go to `sink`.
    pub fn submit(&mut self, request: PreparedRequest, sink: Box<dyn EventSink>) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.waiting.push_back(Waiting {
            id,
            ticket,
            request,
            sink,
            submitted: Instant::now(),
        });
        id
    }

    /// Whether nothing is queued or running.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty() && self.paused.is_empty()
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Cancels a request wherever it is.
    pub fn cancel(&mut self, engine: &mut Engine, id: RequestId) {
        if let Some(pos) = self.waiting.iter().position(|w| w.id == id) {
            let mut w = self.waiting.remove(pos).expect("position is valid");
            w.sink
                .send(GenerationEvent::Failed(KernelError::InvalidRequest("cancelled".into())));
        }
        if let Some(pos) = self.running.iter().position(|r| r.id == id) {
            let r = self.running.swap_remove(pos);
            self.finish(engine, r, FinishReason::Cancelled);
        }
        if let Some(pos) = self.paused.iter().position(|r| r.id == id) {
            let r = self.paused.swap_remove(pos);
            self.finish(engine, r, FinishReason::Cancelled);
        }
    }

    /// Runs one batched forward over all running generations. Returns the number of
    /// sequences advanced (0 when idle).
    pub fn step(&mut self, engine: &mut Engine) -> usize {
        self.admit(engine);
        let budget_total = engine.config().max_batch_tokens.max(1);
        let mut budget = budget_total;
        let mut items = Vec::new();
        // (index into running, tokens fed, finishes prefill or is a decode)
        let mut plan: Vec<(usize, usize, bool)> = Vec::new();
        // A reasoning interrupt: while a sequence more urgent than every decoding one is still
        // prefilling, the step serves only its class, so its first token is not held up by a
        // full batch of less urgent work (those decodes wait one step, their KV untouched).
        let urgent_prefill = self
            .running
            .iter()
            .filter(|r| r.next.is_none())
            .map(|r| r.request.priority)
            .min();
        let most_urgent_decode = self
            .running
            .iter()
            .filter(|r| r.next.is_some())
            .map(|r| r.request.priority)
            .min();
        let only_class = match (urgent_prefill, most_urgent_decode) {
            (Some(p), Some(d)) if p < d => Some(p),
            _ => None,
        };
        // Decodes, at most `step_decodes` per step, taken in rotation so all advance alike.
        let decodes: Vec<usize> = (0..self.running.len())
            .filter(|&i| {
                let r = &self.running[i];
                r.next.is_some() && only_class.is_none_or(|c| r.request.priority == c)
            })
            .collect();
        let cap = self
            .step_decodes
            .unwrap_or_else(|| engine.config().step_decodes(engine.uses_host_matmul()))
            .max(1);
        let start = if decodes.len() > cap {
            self.decode_cursor % decodes.len()
        } else {
            0
        };
        let mut taken = 0;
        for k in 0..decodes.len() {
            if taken == cap {
                break;
            }
            let i = decodes[(start + k) % decodes.len()];
            let r = &self.running[i];
            if budget == 0 || !engine.can_extend(r.sequence, 1) {
                continue;
            }
            items.push(ForwardItem::new(r.sequence, vec![r.next.expect("a decode")]));
            plan.push((i, 1, true));
            budget -= 1;
            taken += 1;
        }
        if decodes.len() > cap {
            self.decode_cursor = (start + taken) % decodes.len();
        }
        // A step that decodes keeps its prefill short, so neither those decodes nor an urgent
        // request arriving meanwhile wait behind a long prompt; the prompt goes on next step.
        if taken > 0 {
            let prefill_cap = self
                .step_prefill_with_decodes
                .unwrap_or_else(|| engine.config().step_prefill_with_decodes(engine.uses_host_matmul()))
                .max(1);
            budget = budget.min(prefill_cap);
        }
        // Prefill chunks share what the decodes left of the budget, most urgent first.
        let mut prefilling: Vec<usize> = (0..self.running.len())
            .filter(|&i| {
                self.running[i].next.is_none() && self.running[i].prefilled < self.running[i].request.prompt.len()
            })
            .collect();
        prefilling.sort_by_key(|&i| (self.running[i].request.priority, self.running[i].ticket));
        let block = engine.kv_block_size();
        let mut heads_started: Vec<Vec<TokenId>> = Vec::new();
        for i in prefilling {
            if budget == 0 {
                break;
            }
            if only_class.is_some_and(|c| self.running[i].request.priority != c) {
                continue;
            }
            let r = &mut self.running[i];
            // Blocks another sequence finished computing since this one was admitted (the
            // same system prompt arriving in one burst) are taken now instead of recomputed.
            let adopted = engine.adopt_cached_prefix(r.sequence, &r.request.prompt);
            if adopted > r.prefilled {
                let gained = adopted - r.prefilled;
                r.cached += gained;
                self.stats.prefix_cached_tokens += gained as u64;
                r.prefilled = adopted;
            }
            let prompt = &r.request.prompt;
            // A sequence that has computed nothing and starts like one whose prefill starts in
            // this step waits one step, then adopts that prefix instead of computing it twice.
            let fresh = r.prefilled == 0 && prompt.len() > block;
            if fresh && heads_started.iter().any(|h| h[..] == prompt[..block]) {
                continue;
            }
            let chunk = (prompt.len() - r.prefilled).min(budget);
            if !engine.can_extend(r.sequence, chunk) {
                continue;
            }
            if fresh {
                heads_started.push(prompt[..block].to_vec());
            }
            let completes = r.prefilled + chunk == prompt.len();
            let mut item = ForwardItem::new(r.sequence, prompt[r.prefilled..r.prefilled + chunk].to_vec());
            item.logits = if completes {
                LogitsWanted::Last
            } else {
                LogitsWanted::None
            };
            items.push(item);
            plan.push((i, chunk, completes));
            budget -= chunk;
        }
        if items.is_empty() {
            if !self.running.is_empty() {
                // Nothing fits in the KV cache: fail the newest so the others can progress.
                let r = self.running.pop().expect("not empty");
                let mut r = r;
                r.sink.send(GenerationEvent::Failed(KernelError::CacheFull(
                    "no room in the KV cache to continue this generation".into(),
                )));
                engine.release_sequence(r.sequence);
            }
            return 0;
        }
        let outputs = match engine.forward(&items) {
            Ok(o) => o,
            Err(e) => {
                let message = e.to_string();
                tracing::error!(error = %message, "batched forward failed; failing its requests");
                let mut failed: Vec<usize> = plan.iter().map(|p| p.0).collect();
                failed.sort_unstable_by_key(|&i| std::cmp::Reverse(i));
                for i in failed {
                    let mut r = self.running.swap_remove(i);
                    r.sink
                        .send(GenerationEvent::Failed(KernelError::Compute(message.clone())));
                    engine.release_sequence(r.sequence);
                }
                return 0;
            }
        };

        let mut finished: Vec<(usize, FinishReason)> = Vec::new();
        for ((i, fed, samples), mut out) in plan.iter().copied().zip(outputs) {
            let r = &mut self.running[i];
            if r.next.is_none() {
                r.prefilled += fed;
                self.stats.prefill_tokens += fed as u64;
            }
            if !samples {
                continue;
            }
            r.slice_used += 1;
            self.stats.generated_tokens += 1;
            let mut logits = out.logits.pop().expect("logits were requested");
            let history: Vec<TokenId> = r.request.prompt.iter().chain(&r.generated).copied().collect();
            let token = r.sampler.sample(&mut logits, &history);
            if let Some(reason) = Self::accept(engine, r, token) {
                finished.push((i, reason));
            }
        }
        finished.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
        for (i, reason) in finished {
            let r = self.running.swap_remove(i);
            self.finish(engine, r, reason);
        }
        plan.len()
    }

    fn admit(&mut self, engine: &mut Engine) {
        let max_running = self.max_running.unwrap_or(engine.config().max_running).max(1);
        let slice = self.time_slice.unwrap_or(engine.config().time_slice_tokens);
        // Each pass admits one candidate or preempts one sequence; a preemption strictly lowers
        // the running set's (class, used slices), so this ends; the cap is a guard.
        for _ in 0..4 * (max_running + self.waiting.len() + self.paused.len()) {
            let Some((from_paused, index, priority, id)) = self.best_candidate() else {
                break;
            };
            if self.running.len() >= max_running {
                let Some(victim) = self.preemption_victim(priority, slice) else {
                    break;
                };
                let mut r = self.running.swap_remove(victim);
                tracing::debug!(request = r.id.0, by = id.0, "preempted (KV kept)");
                r.slice_used = 0;
                r.preemptions += 1;
                r.ticket = self.next_ticket;
                self.next_ticket += 1;
                self.stats.preemptions += 1;
                self.paused.push(r);
                continue;
            }
            if from_paused {
                self.resume(index);
                continue;
            }
            let w = self.waiting.remove(index).expect("index is valid");
            let (sequence, cached) = engine.create_sequence_with_prefix(&w.request.prompt);
            // A prompt that could never fit, even in an empty cache, fails now rather than wait.
            if !engine.can_extend(sequence, w.request.prompt.len() - cached + 1) {
                engine.release_sequence(sequence);
                if self.running.is_empty() && self.paused.is_empty() {
                    let mut w = w;
                    w.sink.send(GenerationEvent::Failed(KernelError::CacheFull(format!(
                        "a {}-token prompt does not fit in the KV cache budget",
                        w.request.prompt.len()
                    ))));
                    continue;
                }
                self.waiting.insert(index, w);
                // Only paused sequences hold the cache: let the most urgent of them finish.
                if self.running.is_empty() {
                    let best = self
                        .paused
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, r)| (r.request.priority, r.ticket));
                    if let Some((i, _)) = best {
                        self.resume(i);
                    }
                }
                break;
            }
            self.running.push(Running {
                id: w.id,
                sequence,
                sampler: Sampler::new(w.request.sampling.clone()),
                request: w.request,
                prefilled: cached,
                generated: Vec::new(),
                next: None,
                decoder: StreamDecoder::default(),
                text: String::new(),
                emitted: 0,
                sink: w.sink,
                submitted: w.submitted,
                first_token: None,
                slice_used: 0,
                ticket: w.ticket,
                cached,
                preemptions: 0,
            });
            self.stats.prefix_cached_tokens += cached as u64;
        }
    }

    /// Moves paused sequence `index` back to the running set; its KV is intact, so it simply
    /// continues with its next token.
    fn resume(&mut self, index: usize) {
        let r = self.paused.swap_remove(index);
        self.stats.resumptions += 1;
        self.running.push(r);
    }

    /// The most urgent paused or waiting request, first in line among equals:
    /// (is paused, index in its list, priority, id).
    fn best_candidate(&self) -> Option<(bool, usize, u8, RequestId)> {
        let paused = self
            .paused
            .iter()
            .enumerate()
            .map(|(i, r)| (true, i, r.request.priority, r.id, r.ticket));
        let waiting = self
            .waiting
            .iter()
            .enumerate()
            .map(|(i, w)| (false, i, w.request.priority, w.id, w.ticket));
        paused
            .chain(waiting)
            .min_by_key(|c| (c.2, c.4))
            .map(|(paused, i, priority, id, _)| (paused, i, priority, id))
    }

    /// The running sequence a candidate of class `priority` may displace: the least urgent one
    /// of a less urgent class, else (rotation) the one of the same class that used its slice
    /// longest ago admitted; None if none may be displaced.
    fn preemption_victim(&self, priority: u8, slice: usize) -> Option<usize> {
        let (index, victim) = self
            .running
            .iter()
            .enumerate()
            .max_by_key(|(_, r)| (r.request.priority, r.slice_used, std::cmp::Reverse(r.id.0)))?;
        let less_urgent = victim.request.priority > priority;
        let slice_used_up = slice > 0 && victim.request.priority == priority && victim.slice_used >= slice;
        (less_urgent || slice_used_up).then_some(index)
    }

    /// Records a sampled token, streams the text that became final, and says whether to stop.
    fn accept(engine: &Engine, r: &mut Running, token: TokenId) -> Option<FinishReason> {
        r.first_token.get_or_insert_with(Instant::now);
        let tokenizer = engine.tokenizer();
        if !r.request.ignore_eos && tokenizer.eos_tokens.contains(&token) {
            return Some(FinishReason::Eos);
        }
        r.generated.push(token);
        r.next = Some(token);
        let piece = r.decoder.push(tokenizer, token).unwrap_or_default();
        r.text.push_str(&piece);

        if let Some(at) = r.request.stop.iter().filter_map(|s| r.text.find(s.as_str())).min() {
            r.text.truncate(at);
            return Some(FinishReason::StopString);
        }
        // Hold back a tail that could still become the start of a stop string.
        let hold = r
            .request
            .stop
            .iter()
            .map(|s| s.len().saturating_sub(1))
            .max()
            .unwrap_or(0);
        let mut safe = r.text.len().saturating_sub(hold).max(r.emitted);
        while !r.text.is_char_boundary(safe) {
            safe -= 1;
        }
        let text = r.text[r.emitted..safe].to_string();
        r.emitted = safe;
        if !r.sink.send(GenerationEvent::Token { id: token, text }) {
            return Some(FinishReason::Cancelled);
        }
        if r.generated.len() >= r.request.max_tokens {
            return Some(FinishReason::MaxTokens);
        }
        if r.request.prompt.len() + r.generated.len() >= engine.model_config().context_length {
            return Some(FinishReason::ContextFull);
        }
        None
    }

    fn finish(&mut self, engine: &mut Engine, mut r: Running, reason: FinishReason) {
        engine.release_sequence(r.sequence);
        if reason != FinishReason::StopString {
            r.text.push_str(&r.decoder.finish());
        }
        let tail = r.text.get(r.emitted..).unwrap_or_default().to_string();
        let now = Instant::now();
        let summary = GenerationSummary {
            text: r.text,
            tokens: r.generated,
            prompt_tokens: r.request.prompt.len(),
            finish_reason: reason,
            time_to_first_token: r.first_token.unwrap_or(now) - r.submitted,
            total_time: now - r.submitted,
            cached_prompt_tokens: r.cached,
            preemptions: r.preemptions,
        };
        r.sink.send(GenerationEvent::Finished { tail, summary });
    }
}
