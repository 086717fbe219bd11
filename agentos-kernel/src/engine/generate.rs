//! Continuous batching: every step advances all running generations in one forward.
//!
//! Each step feeds every decoding sequence its last sampled token and fills the rest of the
//! step's token budget with prefill chunks of waiting prompts and of memory work (embeddings and
//! attention analysis, see [`Job`]), so a long prompt never stalls the decodes of others.
//! Finished sequences leave and waiting ones join between steps.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::sampling::{Sampler, SamplingParams};
use super::{AttentionEntropy, Embeddings, Engine, ForwardItem, LogitsWanted, SequenceId, TextAttention};
use crate::chat::{ChatMessage, ChatTemplate};
use crate::error::{KernelError, Result};
use crate::grammar::{Constraint, SequenceGrammar};
use crate::model::ModelConfig;
use crate::tokenizer::{StreamDecoder, TokenId, Tokenizer};

/// What to generate from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Prompt {
    /// Raw text (special tokens written inline are parsed).
    Text(String),
    /// Messages rendered with the model's chat template, ending with an open assistant turn.
    Chat(Vec<ChatMessage>),
    /// Messages rendered with the model's chat template given `tools` (function objects, see
    /// [`crate::chat`]) for its tools branch; use it where
    /// [`ChatTemplate::has_tools_branch`] holds.
    ChatWithTools {
        messages: Vec<ChatMessage>,
        tools: Vec<serde_json::Value>,
    },
    /// Messages rendered with the model's chat template, the last one left open: the model
    /// continues its text instead of starting a new turn (Hugging Face's
    /// `continue_final_message`). An agent's tool steps use it so that its calls and their
    /// results stay in the assistant's own turn.
    ContinueChat(Vec<ChatMessage>),
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
    /// A grammar the output must match (see [`crate::grammar`]); `None`: free generation.
    #[serde(default)]
    pub constraint: Option<Constraint>,
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
            constraint: None,
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

    pub fn constraint(mut self, constraint: Constraint) -> Self {
        self.constraint = Some(constraint);
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
    /// The request's grammar broke (an internal error of the grammar engine, logged with its
    /// reason): the generation ends rather than go on unconstrained.
    GrammarFailed,
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

    /// Whether nobody listens any more, known without sending: a waiting request whose sink
    /// is closed is dropped before it is prefilled. `false` where a sink cannot tell.
    fn is_closed(&self) -> bool {
        false
    }
}

impl EventSink for tokio::sync::mpsc::UnboundedSender<GenerationEvent> {
    fn send(&mut self, event: GenerationEvent) -> bool {
        tokio::sync::mpsc::UnboundedSender::send(self, event).is_ok()
    }

    fn is_closed(&self) -> bool {
        tokio::sync::mpsc::UnboundedSender::is_closed(self)
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
    pub constraint: Option<Constraint>,
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
        Prompt::Chat(messages) | Prompt::ChatWithTools { messages, .. } | Prompt::ContinueChat(messages)
            if messages.is_empty() =>
        {
            return Err(KernelError::InvalidRequest(
                "a chat prompt needs at least one message".into(),
            ));
        }
        // Message contents are encoded without control tokens: text from a tool, a file or
        // another agent cannot open a turn of its own.
        Prompt::Chat(messages) => tokenizer.encode_chat(&template.render_segments(&messages, &[], true)?)?,
        Prompt::ChatWithTools { messages, tools } => {
            tokenizer.encode_chat(&template.render_segments(&messages, &tools, true)?)?
        }
        Prompt::ContinueChat(messages) => tokenizer.encode_chat(&template.render_segments_continuing(&messages)?)?,
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
        constraint: request.constraint,
    })
}

/// The class memory work runs at unless told otherwise (the least urgent, `Background`).
pub const DEFAULT_JOB_PRIORITY: u8 = 4;

/// Memory work: forwards over texts that produce embeddings or attention entropy and no
/// tokens. The batcher runs a job's chunks in its steps like prompt chunks, ordered by class
/// with everything else, so it shares the model with generations instead of stalling them.
pub struct Job {
    kind: JobKind,
    parts: Vec<JobPart>,
}

enum JobKind {
    /// One mean-pooled final hidden state per text (`texts` parts per text, in order).
    Embed { texts: usize },
    /// The text's pieces and, per part, the entropy of its attention.
    Analyze { tokens: Vec<TokenId>, pieces: Vec<String> },
}

/// One sequence of a job: a text, or a piece of one longer than the model's context.
struct JobPart {
    /// Which text it belongs to (for embeddings).
    text: usize,
    tokens: Vec<TokenId>,
    fed: usize,
    sequence: Option<SequenceId>,
    /// Sum of mean hidden states weighted by chunk length (embeddings).
    sum: Vec<f32>,
    entropy: Vec<AttentionEntropy>,
}

impl JobPart {
    fn new(text: usize, tokens: Vec<TokenId>) -> Self {
        JobPart {
            text,
            tokens,
            fed: 0,
            sequence: None,
            sum: Vec::new(),
            entropy: Vec::new(),
        }
    }

    fn done(&self) -> bool {
        self.fed == self.tokens.len()
    }

    /// Forgets what was computed (its KV was taken back under memory pressure).
    fn reset(&mut self) {
        self.fed = 0;
        self.sequence = None;
        self.sum.clear();
        self.entropy.clear();
    }
}

/// What a finished job returns.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutput {
    Embeddings(Embeddings),
    Analysis(TextAttention),
}

/// Receives a job's result on the engine thread.
pub type JobReply = Box<dyn FnOnce(Result<JobOutput>) + Send>;

impl Job {
    /// Embeddings of `texts`, each its own sequence (split at the model's context length).
    pub fn embed(engine: &Engine, texts: &[String]) -> Result<Job> {
        let limit = engine.model_config().context_length.max(1);
        let mut parts = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let tokens = engine.tokenizer().encode(text)?;
            if tokens.is_empty() {
                return Err(KernelError::InvalidRequest(format!(
                    "cannot embed text {i}: it is empty"
                )));
            }
            parts.extend(tokens.chunks(limit).map(|c| JobPart::new(i, c.to_vec())));
        }
        Ok(Job {
            kind: JobKind::Embed { texts: texts.len() },
            parts,
        })
    }

    /// `text`'s tokens and pieces and, when `with_attention`, the entropy of every token's
    /// attention over the text before it: the text is one sequence (split only where it exceeds
    /// the model's context length).
    pub fn analyze(engine: &Engine, text: &str, with_attention: bool) -> Result<Job> {
        let tokenizer = engine.tokenizer();
        let tokens = tokenizer.encode(text)?;
        let mut pieces = Vec::with_capacity(tokens.len());
        let mut decoder = StreamDecoder::default();
        for &t in &tokens {
            pieces.push(decoder.push(tokenizer, t)?);
        }
        if let Some(last) = pieces.last_mut() {
            last.push_str(&decoder.finish());
        }
        let limit = engine.model_config().context_length.max(1);
        let parts = match with_attention {
            true => tokens.chunks(limit).map(|c| JobPart::new(0, c.to_vec())).collect(),
            false => Vec::new(),
        };
        Ok(Job {
            kind: JobKind::Analyze { tokens, pieces },
            parts,
        })
    }

    /// Tokens the job runs through the model.
    pub fn tokens(&self) -> usize {
        self.parts.iter().map(|p| p.tokens.len()).sum()
    }

    fn done(&self) -> bool {
        self.parts.iter().all(JobPart::done)
    }

    fn output(self) -> JobOutput {
        let tokens = self.tokens();
        match self.kind {
            JobKind::Embed { texts } => {
                let mut sums: Vec<(Vec<f32>, usize)> = vec![(Vec::new(), 0); texts];
                for part in self.parts {
                    let (sum, n) = &mut sums[part.text];
                    if sum.is_empty() {
                        *sum = part.sum;
                    } else {
                        sum.iter_mut().zip(&part.sum).for_each(|(s, p)| *s += p);
                    }
                    *n += part.tokens.len();
                }
                let vectors = sums
                    .into_iter()
                    .map(|(sum, n)| sum.into_iter().map(|s| s / n.max(1) as f32).collect())
                    .collect();
                JobOutput::Embeddings(Embeddings { vectors, tokens })
            }
            JobKind::Analyze { tokens, pieces } => JobOutput::Analysis(TextAttention {
                tokens,
                pieces,
                entropy: self.parts.into_iter().flat_map(|p| p.entropy).collect(),
            }),
        }
    }
}

struct QueuedJob {
    id: RequestId,
    priority: u8,
    ticket: u64,
    submitted: Instant,
    job: Job,
    reply: JobReply,
}

struct Running {
    id: RequestId,
    /// Its sequence in the KV cache; `None` while swapped out (its KV released under memory
    /// pressure, to be recomputed).
    sequence: Option<SequenceId>,
    request: PreparedRequest,
    /// The class it runs at: its own, or better when it was admitted after aging.
    class: u8,
    /// Tokens that must be in the cache before the next decode: the prompt, or after a swap
    /// the prompt and every generated token but the last.
    context: Vec<TokenId>,
    /// How many of `context` are in the cache.
    prefilled: usize,
    generated: Vec<TokenId>,
    /// The sampled token not yet fed to the model.
    next: Option<TokenId>,
    /// Tokens the grammar forced after `next` (appended without sampling), fed with it in the
    /// next forward: one forward for the whole run instead of one per token.
    forced: Vec<TokenId>,
    /// After a swap: the token to continue with once `context` is back in the cache.
    resume: Option<TokenId>,
    sampler: Sampler,
    /// Its place in its grammar, for a constrained request.
    grammar: Option<SequenceGrammar>,
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
    /// When it was last paused (paused sequences age from then).
    paused_at: Instant,
    /// Prompt tokens taken from the prefix cache.
    cached: usize,
    preemptions: u32,
}

impl Running {
    /// Context tokens still to prefill.
    fn to_prefill(&self) -> usize {
        self.context.len() - self.prefilled
    }
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
    /// Paused sequences that continued.
    pub resumptions: u64,
    /// Sequences whose KV blocks were released because the cache ran out (they recompute it
    /// when they continue), and job parts restarted for the same reason.
    pub swaps: u64,
    /// Prompt tokens run through the model (a sequence resumed with its KV adds none).
    pub prefill_tokens: u64,
    /// Tokens recomputed for sequences that were swapped out.
    pub recomputed_tokens: u64,
    /// Prompt tokens whose KV blocks came from the prefix cache instead.
    pub prefix_cached_tokens: u64,
    /// Tokens generated.
    pub generated_tokens: u64,
    /// Tokens run through the model for jobs (memory work).
    pub job_tokens: u64,
    /// Grammar masks computed (one per sampled constrained token).
    pub grammar_masks: u64,
    /// Tokens a grammar forced: appended without a mask or a sample, and fed to the model
    /// together with the sampled token before them (counted in `generated_tokens` too).
    pub grammar_forced_tokens: u64,
    /// Time the grammars took: masks, taking each token into its grammar (including the
    /// search for a lazy grammar's start text), and finding forced tokens.
    pub grammar_us: u64,
}

/// A holder of KV blocks that memory pressure may take them from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    Running(usize),
    Paused(usize),
    Job(usize, usize),
}

/// Running work: a generation (index in `running`) or a job's part (job index, part index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    Running(usize),
    Job(usize, usize),
}

impl From<Work> for Holder {
    fn from(w: Work) -> Holder {
        match w {
            Work::Running(i) => Holder::Running(i),
            Work::Job(j, p) => Holder::Job(j, p),
        }
    }
}

/// One forward item's place in the step's plan.
#[derive(Debug, Clone, Copy)]
enum Planned {
    Decode(RequestId),
    Prefill { id: RequestId, fed: usize, completes: bool },
    Job { id: RequestId, part: usize, fed: usize },
}

/// The continuous-batching loop over one [`Engine`].
///
/// Scheduling, between steps: free slots (up to `max_running`) go to the most urgent candidate,
/// first in line among equals (a preempted sequence rejoins the back of its class); paused and
/// waiting requests compete alike. A candidate's class improves by one for every aging step it
/// has waited (default [`Batcher::DEFAULT_AGING`]), so no class starves; it runs at the class it
/// was admitted with. When all slots are taken, a candidate of a more urgent class preempts the
/// least urgent running sequence, and a candidate of the same class takes the slot of one that
/// has used its time slice. A preempted sequence keeps its KV blocks, so resuming it costs
/// nothing but the slot.
///
/// KV memory: each step's work is planned within the blocks the cache has left, counted
/// cumulatively. When the decodes of a step need more blocks than there are, the least urgent,
/// most recently admitted holder of blocks gives its blocks back (paused sequences before
/// running ones of the same class): it is *swapped out* and recomputes its context when it next
/// runs, continuing exactly where it was. Prompt chunks and memory work that do not fit wait;
/// only a request that cannot fit even alone in the whole cache fails.
pub struct Batcher {
    waiting: VecDeque<Waiting>,
    running: Vec<Running>,
    /// Preempted sequences, with their KV or swapped out.
    paused: Vec<Running>,
    jobs: Vec<QueuedJob>,
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
            jobs: Vec::new(),
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
        self.aging = step.filter(|s| !s.is_zero());
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
        let id = self.new_id();
        let ticket = self.new_ticket();
        self.waiting.push_back(Waiting {
            id,
            ticket,
            request,
            sink,
            submitted: Instant::now(),
        });
        id
    }

    /// Queues a job at class `priority` (0 most urgent); `reply` gets its result.
    pub fn submit_job(&mut self, job: Job, priority: u8, reply: JobReply) -> RequestId {
        let id = self.new_id();
        let ticket = self.new_ticket();
        if job.done() {
            // Nothing to run through the model (an analysis without attention).
            reply(Ok(job.output()));
            return id;
        }
        self.jobs.push(QueuedJob {
            id,
            priority,
            ticket,
            submitted: Instant::now(),
            job,
            reply,
        });
        id
    }

    /// Whether nothing is queued or running.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty() && self.paused.is_empty() && self.jobs.is_empty()
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Jobs queued or in progress.
    pub fn jobs(&self) -> usize {
        self.jobs.len()
    }

    fn new_id(&mut self) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        id
    }

    fn new_ticket(&mut self) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        ticket
    }

    /// `class` improved by one for every aging step since `since`.
    fn aged(&self, class: u8, since: Instant, now: Instant) -> u8 {
        match self.aging {
            Some(step) => {
                let steps = now.saturating_duration_since(since).as_nanos() / step.as_nanos().max(1);
                class.saturating_sub(steps.min(u8::MAX as u128) as u8)
            }
            None => class,
        }
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
        if let Some(pos) = self.jobs.iter().position(|j| j.id == id) {
            let job = self.jobs.swap_remove(pos);
            self.fail_job(engine, job, KernelError::InvalidRequest("cancelled".into()));
        }
    }

    /// Runs one batched forward over all running generations and jobs. Returns the number of
    /// items advanced (0 when idle, or when this step only made room in the KV cache).
    pub fn step(&mut self, engine: &mut Engine) -> usize {
        self.admit(engine);
        let now = Instant::now();
        let budget_total = engine.config().max_batch_tokens.max(1);
        let mut budget = budget_total;
        // A reasoning interrupt: while a sequence more urgent than every decoding one is still
        // prefilling, the step serves only its class, so its first token is not held up by a
        // full batch of less urgent work (those decodes wait one step, their KV untouched).
        let urgent_prefill = self.running.iter().filter(|r| r.next.is_none()).map(|r| r.class).min();
        let most_urgent_decode = self.running.iter().filter(|r| r.next.is_some()).map(|r| r.class).min();
        let only_class = match (urgent_prefill, most_urgent_decode) {
            (Some(p), Some(d)) if p < d => Some(p),
            _ => None,
        };
        // Decodes, at most `step_decodes` per step, taken in rotation so all advance alike.
        let decodes: Vec<usize> = (0..self.running.len())
            .filter(|&i| {
                let r = &self.running[i];
                r.next.is_some() && only_class.is_none_or(|c| r.class == c)
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
        let chosen_count = decodes.len().min(cap).min(budget);
        let mut chosen: Vec<RequestId> = (0..chosen_count)
            .map(|k| self.running[decodes[(start + k) % decodes.len()]].id)
            .collect();
        if decodes.len() > cap {
            self.decode_cursor = (start + chosen.len()) % decodes.len();
        }
        // The decodes' blocks, counted together: when the cache cannot hold them all, the
        // least urgent holder gives its blocks back, until they fit.
        loop {
            let need: usize = chosen.iter().map(|&id| self.decode_blocks(engine, id)).sum();
            if need <= engine.available_kv_blocks() {
                break;
            }
            let Some(victim) = self.kv_victim(None) else { break };
            self.swap_out(engine, victim);
            chosen.retain(|id| self.running.iter().any(|r| r.id == *id));
        }
        let mut reserved: usize = chosen.iter().map(|&id| self.decode_blocks(engine, id)).sum();
        let mut items = Vec::new();
        let mut plan: Vec<Planned> = Vec::new();
        for &id in &chosen {
            let r = self.running.iter().find(|r| r.id == id).expect("chosen from running");
            let (Some(sequence), Some(next)) = (r.sequence, r.next) else {
                continue;
            };
            let mut tokens = Vec::with_capacity(1 + r.forced.len());
            tokens.push(next);
            tokens.extend_from_slice(&r.forced);
            budget = budget.saturating_sub(tokens.len());
            items.push(ForwardItem::new(sequence, tokens));
            plan.push(Planned::Decode(id));
        }
        // A step that decodes keeps its prefill short, so neither those decodes nor an urgent
        // request arriving meanwhile wait behind a long prompt; the prompt goes on next step.
        if !chosen.is_empty() {
            let prefill_cap = self
                .step_prefill_with_decodes
                .unwrap_or_else(|| engine.config().step_prefill_with_decodes(engine.uses_host_matmul()))
                .max(1);
            budget = budget.min(prefill_cap);
        }

        // Prefill chunks (prompts, recomputed contexts, memory work) share what the decodes
        // left, most urgent first; each takes only the blocks the cache has left.
        let mut prefills: Vec<(u8, u64, Work)> = Vec::new();
        for (i, r) in self.running.iter().enumerate() {
            if r.next.is_none() && r.to_prefill() > 0 && only_class.is_none_or(|c| r.class == c) {
                prefills.push((r.class, r.ticket, Work::Running(i)));
            }
        }
        for (j, q) in self.jobs.iter().enumerate() {
            let class = self.aged(q.priority, q.submitted, now);
            if only_class.is_some_and(|c| class != c) {
                continue;
            }
            for (p, part) in q.job.parts.iter().enumerate() {
                if !part.done() {
                    prefills.push((class, q.ticket, Work::Job(j, p)));
                }
            }
        }
        prefills.sort_by_key(|&(class, ticket, _)| (class, ticket));
        let block = engine.kv_block_size();
        let mut heads_started: Vec<Vec<TokenId>> = Vec::new();
        for (_, _, work) in prefills {
            if budget == 0 {
                break;
            }
            match work {
                Work::Running(i) => {
                    let r = &mut self.running[i];
                    let Some(sequence) = r.sequence else { continue };
                    // Blocks another sequence finished computing since this one was admitted
                    // (the same system prompt arriving in one burst) are taken now instead of
                    // recomputed.
                    let adopted = engine.adopt_cached_prefix(sequence, &r.context);
                    if adopted > r.prefilled {
                        let gained = adopted - r.prefilled;
                        r.cached += gained;
                        self.stats.prefix_cached_tokens += gained as u64;
                        r.prefilled = adopted;
                    }
                    // A sequence that has computed nothing and starts like one whose prefill
                    // starts in this step waits one step, then adopts that prefix instead of
                    // computing it twice.
                    let fresh = r.prefilled == 0 && r.context.len() > block;
                    if fresh && heads_started.iter().any(|h| h[..] == r.context[..block]) {
                        continue;
                    }
                    let left = engine.available_kv_blocks().saturating_sub(reserved);
                    let chunk = fitting_chunk(engine, sequence, r.to_prefill().min(budget), left);
                    if chunk == 0 {
                        continue;
                    }
                    reserved += engine.blocks_to_extend(sequence, chunk).unwrap_or(0);
                    if fresh {
                        heads_started.push(r.context[..block].to_vec());
                    }
                    let completes = r.prefilled + chunk == r.context.len();
                    let mut item = ForwardItem::new(sequence, r.context[r.prefilled..r.prefilled + chunk].to_vec());
                    // Logits only where a token is sampled: the end of a prompt, not of a
                    // recomputed context (its next token is known).
                    item.logits = match completes && r.resume.is_none() {
                        true => LogitsWanted::Last,
                        false => LogitsWanted::None,
                    };
                    items.push(item);
                    plan.push(Planned::Prefill {
                        id: r.id,
                        fed: chunk,
                        completes,
                    });
                    budget -= chunk;
                }
                Work::Job(j, p) => {
                    let left = engine.available_kv_blocks().saturating_sub(reserved);
                    let q = &mut self.jobs[j];
                    let part = &mut q.job.parts[p];
                    let want = (part.tokens.len() - part.fed).min(budget);
                    let sequence = match part.sequence {
                        Some(s) => s,
                        None if engine.kv_blocks_for(want.min(block)) <= left => {
                            let s = engine.create_sequence();
                            part.sequence = Some(s);
                            s
                        }
                        None => continue,
                    };
                    let chunk = fitting_chunk(engine, sequence, want, left);
                    if chunk == 0 {
                        continue;
                    }
                    reserved += engine.blocks_to_extend(sequence, chunk).unwrap_or(0);
                    let mut item = ForwardItem::new(sequence, part.tokens[part.fed..part.fed + chunk].to_vec());
                    item.logits = LogitsWanted::None;
                    match q.job.kind {
                        JobKind::Embed { .. } => item.embedding = true,
                        JobKind::Analyze { .. } => item.entropy = true,
                    }
                    items.push(item);
                    plan.push(Planned::Job {
                        id: q.id,
                        part: p,
                        fed: chunk,
                    });
                    budget -= chunk;
                }
            }
        }
        if items.is_empty() {
            self.relieve_deadlock(engine);
            return 0;
        }
        let outputs = match engine.forward(&items) {
            Ok(o) => o,
            Err(e) => {
                self.fail_step(engine, &plan, e);
                return 0;
            }
        };

        let mut finished: Vec<(RequestId, FinishReason)> = Vec::new();
        let mut jobs_done: Vec<RequestId> = Vec::new();
        for (planned, mut out) in plan.iter().copied().zip(outputs) {
            match planned {
                Planned::Decode(id) | Planned::Prefill { id, .. } => {
                    let r = self
                        .running
                        .iter_mut()
                        .find(|r| r.id == id)
                        .expect("planned from running");
                    let samples = match planned {
                        Planned::Prefill { fed, completes, .. } => {
                            r.prefilled += fed;
                            match r.resume.is_some() {
                                true => self.stats.recomputed_tokens += fed as u64,
                                false => self.stats.prefill_tokens += fed as u64,
                            }
                            if completes && let Some(token) = r.resume.take() {
                                // The context is back: continue with the token it had sampled.
                                r.next = Some(token);
                                false
                            } else {
                                completes
                            }
                        }
                        _ => true,
                    };
                    if !samples {
                        continue;
                    }
                    r.slice_used += 1;
                    self.stats.generated_tokens += 1;
                    let mut logits = out.logits.pop().expect("logits were requested");
                    r.forced.clear();
                    if let Some(grammar) = &mut r.grammar {
                        let started = Instant::now();
                        self.stats.grammar_masks += grammar.active() as u64;
                        grammar.mask(&mut logits);
                        self.stats.grammar_us += started.elapsed().as_micros() as u64;
                        if grammar.failed() {
                            finished.push((id, FinishReason::GrammarFailed));
                            continue;
                        }
                    }
                    let token = r.sampler.sample(&mut logits, &[&r.request.prompt, &r.generated]);
                    r.next = Some(token);
                    let mut reason = Self::accept(engine, r, token, &mut self.stats);
                    // Tokens the grammar allows alone are appended without sampling and fed
                    // with the sampled one in the next forward.
                    if reason.is_none()
                        && let Some(grammar) = &mut r.grammar
                    {
                        let started = Instant::now();
                        let forced = grammar.forced();
                        self.stats.grammar_us += started.elapsed().as_micros() as u64;
                        for token in forced {
                            self.stats.generated_tokens += 1;
                            self.stats.grammar_forced_tokens += 1;
                            reason = Self::accept(engine, r, token, &mut self.stats);
                            if reason.is_some() {
                                break;
                            }
                            r.forced.push(token);
                        }
                    }
                    if let Some(reason) = reason {
                        finished.push((id, reason));
                    }
                }
                Planned::Job { id, part, fed } => {
                    self.stats.job_tokens += fed as u64;
                    let q = self.jobs.iter_mut().find(|q| q.id == id).expect("planned from jobs");
                    let p = &mut q.job.parts[part];
                    p.fed += fed;
                    if let Some(mean) = out.embedding.take() {
                        if p.sum.is_empty() {
                            p.sum = vec![0.0; mean.len()];
                        }
                        p.sum.iter_mut().zip(&mean).for_each(|(s, m)| *s += m * fed as f32);
                    }
                    if let Some(entropy) = out.entropy.take() {
                        p.entropy.push(entropy);
                    }
                    if p.done()
                        && let Some(sequence) = p.sequence.take()
                    {
                        engine.release_sequence(sequence);
                    }
                    if q.job.done() && !jobs_done.contains(&id) {
                        jobs_done.push(id);
                    }
                }
            }
        }
        for (id, reason) in finished {
            let pos = self
                .running
                .iter()
                .position(|r| r.id == id)
                .expect("finished from running");
            let r = self.running.swap_remove(pos);
            self.finish(engine, r, reason);
        }
        for id in jobs_done {
            let pos = self.jobs.iter().position(|q| q.id == id).expect("done from jobs");
            let q = self.jobs.swap_remove(pos);
            (q.reply)(Ok(q.job.output()));
        }
        plan.len()
    }

    /// New blocks the decode of `id` needs this step.
    fn decode_blocks(&self, engine: &Engine, id: RequestId) -> usize {
        self.running
            .iter()
            .find(|r| r.id == id)
            .and_then(|r| engine.blocks_to_extend(r.sequence?, 1 + r.forced.len()))
            .unwrap_or(0)
    }

    /// The holder of KV blocks to take them from first: the least urgent, then (in one class)
    /// paused before running and jobs, then the most recently admitted. `spare` is never taken.
    fn kv_victim(&self, spare: Option<Holder>) -> Option<Holder> {
        let now = Instant::now();
        let running = self
            .running
            .iter()
            .enumerate()
            .filter(|(_, r)| r.sequence.is_some())
            .map(|(i, r)| ((r.class, 0u8, r.ticket), Holder::Running(i)));
        let paused = self
            .paused
            .iter()
            .enumerate()
            .filter(|(_, r)| r.sequence.is_some())
            .map(|(i, r)| ((r.request.priority, 2u8, r.ticket), Holder::Paused(i)));
        let jobs = self.jobs.iter().enumerate().flat_map(|(j, q)| {
            let class = self.aged(q.priority, q.submitted, now);
            q.job
                .parts
                .iter()
                .enumerate()
                .filter(|(_, p)| p.sequence.is_some())
                .map(move |(p, _)| ((class, 1u8, q.ticket), Holder::Job(j, p)))
        });
        running
            .chain(paused)
            .chain(jobs)
            .filter(|(_, h)| Some(*h) != spare)
            .max_by_key(|(key, _)| *key)
            .map(|(_, h)| h)
    }

    /// Takes `holder`'s KV blocks back: a sequence is paused, swapped out (it recomputes its
    /// context when it runs again and continues where it was); a job part starts over.
    fn swap_out(&mut self, engine: &mut Engine, holder: Holder) {
        self.stats.swaps += 1;
        match holder {
            Holder::Running(i) => {
                let mut r = self.running.swap_remove(i);
                tracing::debug!(request = r.id.0, "KV cache full: swapped out (recomputed later)");
                Self::release_kv(engine, &mut r);
                r.slice_used = 0;
                r.preemptions += 1;
                r.ticket = self.new_ticket();
                r.paused_at = Instant::now();
                self.stats.preemptions += 1;
                self.paused.push(r);
            }
            Holder::Paused(i) => {
                let r = &mut self.paused[i];
                tracing::debug!(request = r.id.0, "KV cache full: a paused sequence gives its KV back");
                Self::release_kv(engine, r);
            }
            Holder::Job(j, p) => {
                let part = &mut self.jobs[j].job.parts[p];
                if let Some(sequence) = part.sequence {
                    engine.release_sequence(sequence);
                }
                part.reset();
            }
        }
    }

    /// Releases a sequence's blocks and sets it up to recompute its context.
    fn release_kv(engine: &mut Engine, r: &mut Running) {
        if let Some(sequence) = r.sequence.take() {
            engine.release_sequence(sequence);
        }
        if r.next.take().is_some() {
            // In the cache were the prompt and every generated token before `next` and the
            // forced ones; all but the last are recomputed, the last continues the sequence.
            r.forced.clear();
            r.context = r.request.prompt.clone();
            r.context.extend_from_slice(&r.generated[..r.generated.len() - 1]);
            r.resume = r.generated.last().copied();
        }
        r.prefilled = 0;
    }

    /// Nothing could be planned: the most urgent work does not fit in the KV cache. Take blocks
    /// from the least urgent other holder; when there is none, that work can never fit: fail it.
    fn relieve_deadlock(&mut self, engine: &mut Engine) {
        let now = Instant::now();
        let gens = self
            .running
            .iter()
            .enumerate()
            .map(|(i, r)| ((r.class, r.ticket), Work::Running(i)));
        let jobs = self.jobs.iter().enumerate().flat_map(|(j, q)| {
            let class = self.aged(q.priority, q.submitted, now);
            q.job
                .parts
                .iter()
                .enumerate()
                .filter(|(_, p)| !p.done())
                .map(move |(p, _)| ((class, q.ticket), Work::Job(j, p)))
        });
        let Some((_, first)) = gens.chain(jobs).min_by_key(|(key, _)| *key) else {
            return;
        };
        if let Some(victim) = self.kv_victim(Some(first.into())) {
            self.swap_out(engine, victim);
            return;
        }
        let error = KernelError::CacheFull("no room in the KV cache to continue this work, even alone".into());
        match first {
            Work::Running(i) => {
                let mut r = self.running.swap_remove(i);
                r.sink.send(GenerationEvent::Failed(error));
                if let Some(sequence) = r.sequence.take() {
                    engine.release_sequence(sequence);
                }
            }
            Work::Job(j, _) => {
                let job = self.jobs.swap_remove(j);
                self.fail_job(engine, job, error);
            }
        }
    }

    /// The forward failed: every request and job in it fails.
    fn fail_step(&mut self, engine: &mut Engine, plan: &[Planned], e: KernelError) {
        let message = e.to_string();
        tracing::error!(error = %message, "batched forward failed; failing its requests");
        for planned in plan {
            match *planned {
                Planned::Decode(id) | Planned::Prefill { id, .. } => {
                    if let Some(pos) = self.running.iter().position(|r| r.id == id) {
                        let mut r = self.running.swap_remove(pos);
                        r.sink
                            .send(GenerationEvent::Failed(KernelError::Compute(message.clone())));
                        if let Some(sequence) = r.sequence.take() {
                            engine.release_sequence(sequence);
                        }
                    }
                }
                Planned::Job { id, .. } => {
                    if let Some(pos) = self.jobs.iter().position(|q| q.id == id) {
                        let job = self.jobs.swap_remove(pos);
                        self.fail_job(engine, job, KernelError::Compute(message.clone()));
                    }
                }
            }
        }
    }

    fn fail_job(&mut self, engine: &mut Engine, job: QueuedJob, error: KernelError) {
        for part in &job.job.parts {
            if let Some(sequence) = part.sequence {
                engine.release_sequence(sequence);
            }
        }
        (job.reply)(Err(error));
    }

    fn admit(&mut self, engine: &mut Engine) {
        let max_running = self.max_running.unwrap_or(engine.config().max_running).max(1);
        let slice = self.time_slice.unwrap_or(engine.config().time_slice_tokens);
        // Each pass admits one candidate or preempts one sequence; a preemption strictly lowers
        // the running set's (class, used slices), so this ends; the cap is a guard.
        for _ in 0..4 * (max_running + self.waiting.len() + self.paused.len()) {
            let Some((from_paused, index, class, id)) = self.best_candidate() else {
                break;
            };
            if self.running.len() >= max_running {
                let Some(victim) = self.preemption_victim(class, slice) else {
                    break;
                };
                let mut r = self.running.swap_remove(victim);
                tracing::debug!(request = r.id.0, by = id.0, "preempted (KV kept)");
                r.slice_used = 0;
                r.preemptions += 1;
                r.ticket = self.new_ticket();
                r.paused_at = Instant::now();
                self.stats.preemptions += 1;
                self.paused.push(r);
                continue;
            }
            if from_paused {
                if !self.resume(engine, index, class) {
                    break;
                }
                continue;
            }
            let w = self.waiting.remove(index).expect("index is valid");
            // Cancelled while it waited (its receiver is gone): not worth a prefill.
            if w.sink.is_closed() {
                continue;
            }
            // A prompt that could never fit, even in an empty cache, fails now rather than wait.
            if engine.kv_blocks_for(w.request.prompt.len() + 1) > engine.max_kv_blocks() {
                let mut w = w;
                w.sink.send(GenerationEvent::Failed(KernelError::CacheFull(format!(
                    "a {}-token prompt does not fit in the KV cache budget",
                    w.request.prompt.len()
                ))));
                continue;
            }
            let grammar = match w.request.constraint.as_ref().map(|c| engine.grammar(c)) {
                None => None,
                Some(Ok(grammar)) => Some(grammar),
                Some(Err(e)) => {
                    let mut w = w;
                    w.sink.send(GenerationEvent::Failed(e));
                    continue;
                }
            };
            let (sequence, cached) = engine.create_sequence_with_prefix(&w.request.prompt);
            if !self.make_room(engine, sequence, w.request.prompt.len() - cached + 1, class) {
                engine.release_sequence(sequence);
                self.waiting.insert(index, w);
                break;
            }
            self.running.push(Running {
                id: w.id,
                sequence: Some(sequence),
                sampler: Sampler::new(w.request.sampling.clone()),
                grammar,
                context: w.request.prompt.clone(),
                class,
                request: w.request,
                prefilled: cached,
                generated: Vec::new(),
                next: None,
                forced: Vec::new(),
                resume: None,
                decoder: StreamDecoder::default(),
                text: String::new(),
                emitted: 0,
                sink: w.sink,
                submitted: w.submitted,
                first_token: None,
                slice_used: 0,
                ticket: w.ticket,
                paused_at: Instant::now(),
                cached,
                preemptions: 0,
            });
            self.stats.prefix_cached_tokens += cached as u64;
        }
    }

    /// Makes sure `sequence` can grow by `extra` tokens, taking KV blocks from paused sequences
    /// and jobs of a class no more urgent than `class` and from running sequences of a less
    /// urgent one; false when it still cannot.
    fn make_room(&mut self, engine: &mut Engine, sequence: SequenceId, extra: usize, class: u8) -> bool {
        let now = Instant::now();
        loop {
            if engine.can_extend(sequence, extra) {
                return true;
            }
            let running = self
                .running
                .iter()
                .enumerate()
                .filter(|(_, r)| r.sequence.is_some() && r.class > class)
                .map(|(i, r)| ((r.class, r.ticket), Holder::Running(i)));
            let paused = self
                .paused
                .iter()
                .enumerate()
                .filter(|(_, r)| r.sequence.is_some() && r.request.priority >= class)
                .map(|(i, r)| ((r.request.priority, r.ticket), Holder::Paused(i)));
            let jobs = self.jobs.iter().enumerate().flat_map(|(j, q)| {
                let job_class = self.aged(q.priority, q.submitted, now);
                q.job
                    .parts
                    .iter()
                    .enumerate()
                    .filter(move |(_, p)| p.sequence.is_some() && job_class >= class)
                    .map(move |(p, _)| ((job_class, q.ticket), Holder::Job(j, p)))
            });
            let Some((_, victim)) = running.chain(paused).chain(jobs).max_by_key(|(key, _)| *key) else {
                return false;
            };
            self.swap_out(engine, victim);
        }
    }

    /// Moves paused sequence `index` back to the running set at `class`. One with its KV simply
    /// continues; a swapped-out one gets a sequence again (reusing cached prefix blocks) and
    /// recomputes the rest of its context first. False when its context does not fit now.
    fn resume(&mut self, engine: &mut Engine, index: usize, class: u8) -> bool {
        if self.paused[index].sequence.is_none() {
            let context = self.paused[index].context.clone();
            if engine.kv_blocks_for(context.len() + 1) > engine.max_kv_blocks() {
                // It outgrew the whole cache: it can never continue.
                let mut r = self.paused.swap_remove(index);
                r.sink.send(GenerationEvent::Failed(KernelError::CacheFull(format!(
                    "the generation reached {} tokens, more than the KV cache budget holds",
                    context.len() + 1
                ))));
                return true;
            }
            let (sequence, cached) = engine.create_sequence_with_prefix(&context);
            if !self.make_room(engine, sequence, context.len() - cached + 1, class) {
                engine.release_sequence(sequence);
                return false;
            }
            let r = &mut self.paused[index];
            r.sequence = Some(sequence);
            r.prefilled = cached;
            self.stats.prefix_cached_tokens += cached as u64;
        }
        let mut r = self.paused.swap_remove(index);
        r.class = class;
        self.stats.resumptions += 1;
        self.running.push(r);
        true
    }

    /// The most urgent paused or waiting request (after aging), first in line among equals:
    /// (is paused, index in its list, class, id).
    fn best_candidate(&self) -> Option<(bool, usize, u8, RequestId)> {
        let now = Instant::now();
        let paused = self
            .paused
            .iter()
            .enumerate()
            .map(|(i, r)| (true, i, self.aged(r.request.priority, r.paused_at, now), r.id, r.ticket));
        let waiting = self.waiting.iter().enumerate().map(|(i, w)| {
            (
                false,
                i,
                self.aged(w.request.priority, w.submitted, now),
                w.id,
                w.ticket,
            )
        });
        paused
            .chain(waiting)
            .min_by_key(|c| (c.2, c.4))
            .map(|(paused, i, class, id, _)| (paused, i, class, id))
    }

    /// The running sequence a candidate of class `class` may displace: the least urgent one of
    /// a less urgent class, else (rotation) the one of the same class that used its slice
    /// longest ago admitted; None if none may be displaced.
    fn preemption_victim(&self, class: u8, slice: usize) -> Option<usize> {
        let (index, victim) = self
            .running
            .iter()
            .enumerate()
            .max_by_key(|(_, r)| (r.class, r.slice_used, std::cmp::Reverse(r.id.0)))?;
        let less_urgent = victim.class > class;
        let slice_used_up = slice > 0 && victim.class == class && victim.slice_used >= slice;
        (less_urgent || slice_used_up).then_some(index)
    }

    /// Records a sampled token, streams the text that became final, and says whether to stop.
    fn accept(engine: &Engine, r: &mut Running, token: TokenId, stats: &mut BatcherStats) -> Option<FinishReason> {
        r.first_token.get_or_insert_with(Instant::now);
        let tokenizer = engine.tokenizer();
        if !r.request.ignore_eos && tokenizer.eos_tokens.contains(&token) {
            return Some(FinishReason::Eos);
        }
        r.generated.push(token);
        let piece = r.decoder.push(tokenizer, token).unwrap_or_default();
        r.text.push_str(&piece);
        if let Some(grammar) = &mut r.grammar {
            let started = Instant::now();
            grammar.commit(token, &r.text);
            stats.grammar_us += started.elapsed().as_micros() as u64;
            if grammar.failed() {
                return Some(FinishReason::GrammarFailed);
            }
        }

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
        if let Some(sequence) = r.sequence.take() {
            engine.release_sequence(sequence);
        }
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

/// The longest chunk of at most `want` tokens `sequence` can take with `left` more blocks.
fn fitting_chunk(engine: &Engine, sequence: SequenceId, want: usize, left: usize) -> usize {
    want.min(engine.room_with(sequence, left))
}
