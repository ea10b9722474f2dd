//! Load-tests a running stack with the feature brief's scenarios; see the library.

use clap::Parser;
use kubesentiment_bench::{Args, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let report = run(Args::parse()).await?;
    print!("{}", report.render());
    Ok(())
}
