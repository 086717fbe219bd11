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

fn main() -> Result<(), Error> {
    let mut spec = ScaleSpec::default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = || -> Result<usize, Error> {
            let v = args.get(i + 1).ok_or_else(|| format!("{} needs a value", args[i]))?;
            Ok(v.parse()?)
        };
        match args[i].as_str() {
            "--pages" => spec.pages = value()?,
            "--queries" => spec.queries = value()?,
            "--dim" => spec.dim = value()?,
            "--k" => spec.k = value()?,
            "--l2-capacity" => spec.l2_capacity = value()?,
            "--owners" => spec.owners = value()?,
            "--topic-pages" => spec.topic_pages = value()?,
            "--vague" => {
                spec.vague = true;
                i += 1;
                continue;
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
        i += 2;
    }
    let dir = std::env::temp_dir().join(format!("agentos-l2-scale-{}", std::process::id()));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(measure(&spec, &dir));
    let _ = std::fs::remove_dir_all(&dir);
    let report = report?;
    println!("{}", report.to_json(&spec));
    Ok(())
}
