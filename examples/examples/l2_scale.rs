//! L2 at scale, without a model: start-up over a store of synthetic pages, search latency
//! through the L2 actor, recall of the approximate search against the exact scan (one JSON
//! object; see `agentos_examples::l2_scale`).
//!
//! ```text
//! cargo run --release --example l2_scale -- --pages 100000
//!     [--queries 300] [--dim 576] [--k 4] [--l2-capacity 4096] [--owners 1]
//!     [--topic-pages 100] [--vague]
//! ```

use agentos_examples::l2_scale::{Error, ScaleSpec, measure};

/// L2 at scale, without a model: start-up, search latency, recall of the approximate search.
#[derive(clap::Parser)]
struct Cli {
    /// Pages in the store [default: 100000]
    #[arg(long)]
    pages: Option<usize>,
    /// Searches to time [default: 300]
    #[arg(long)]
    queries: Option<usize>,
    /// Embedding dimension [default: 576]
    #[arg(long)]
    dim: Option<usize>,
    /// Pages each search returns [default: 4]
    #[arg(long)]
    k: Option<usize>,
    /// L2 capacity in pages [default: the memory default]
    #[arg(long = "l2-capacity")]
    l2_capacity: Option<usize>,
    /// Owners (agents) the pages are spread over [default: 1]
    #[arg(long)]
    owners: Option<usize>,
    /// Pages per topic [default: 100]
    #[arg(long = "topic-pages")]
    topic_pages: Option<usize>,
    /// Queries at a topic's centre, with no content word
    #[arg(long)]
    vague: bool,
}

fn main() -> Result<(), Error> {
    let cli = <Cli as clap::Parser>::parse();
    let mut spec = ScaleSpec::default();
    let fields = [
        (cli.pages, &mut spec.pages),
        (cli.queries, &mut spec.queries),
        (cli.dim, &mut spec.dim),
        (cli.k, &mut spec.k),
        (cli.l2_capacity, &mut spec.l2_capacity),
        (cli.owners, &mut spec.owners),
        (cli.topic_pages, &mut spec.topic_pages),
    ];
    for (given, field) in fields {
        if let Some(value) = given {
            *field = value;
        }
    }
    spec.vague |= cli.vague;
    let dir = std::env::temp_dir().join(format!("agentos-l2-scale-{}", std::process::id()));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(measure(&spec, &dir));
    let _ = std::fs::remove_dir_all(&dir);
    let report = report?;
    println!("{}", report.to_json(&spec));
    Ok(())
}
