//! `tarmo ledger verify` and `tarmo ledger rebuild`.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use clap::Subcommand;

use crate::{Common, open_store, settings};

#[derive(Subcommand)]
pub enum LedgerCommand {
    /// Check the whole hash chain, and that the materialised consent state
    /// is the fold of the ledger. Exit 1 naming the first broken link.
    Verify {
        #[command(flatten)]
        common: Common,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the materialised consent state from the ledger.
    Rebuild {
        #[command(flatten)]
        common: Common,
    },
}

pub fn run(cmd: LedgerCommand) -> anyhow::Result<u8> {
    match cmd {
        LedgerCommand::Verify { common, json } => {
            let s = settings(&common, None)?;
            let store = open_store(&s)?;
            let started = Instant::now();
            let tty = std::io::stderr().is_terminal() && !json;
            let mut conn = store.conn()?;
            let report = tarmo_store::consent::verify(&mut *conn, store.vault(), &mut |n| {
                if tty {
                    eprint!("\rverified {n} entries");
                }
            })?;
            if tty {
                eprintln!();
            }
            let folded = tarmo_store::consent::fold_all(&mut *conn)?;
            let stored = tarmo_store::consent::materialised(&mut *conn)?;
            let differing = folded
                .iter()
                .filter(|(k, v)| stored.get(*k) != Some(*v))
                .count()
                + stored.keys().filter(|k| !folded.contains_key(*k)).count();
            let secs = started.elapsed().as_secs_f64();
            let ok = report.first_broken.is_none() && differing == 0;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": ok,
                        "entries": report.entries,
                        "first_broken": report.first_broken,
                        "state_rows_differing": differing,
                        "seconds": secs,
                    })
                );
            } else {
                let mut out = std::io::stdout().lock();
                match &report.first_broken {
                    None => writeln!(
                        out,
                        "ledger intact: {} entries verified in {secs:.2} s",
                        report.entries
                    )?,
                    Some(b) => writeln!(
                        out,
                        "ledger BROKEN at entry {}: {} ({} entries verified before it)",
                        b.seq, b.problem, report.entries
                    )?,
                }
                if differing == 0 {
                    writeln!(out, "consent state: matches the ledger")?;
                } else {
                    writeln!(
                        out,
                        "consent state: {differing} rows differ from the ledger; run `tarmo ledger rebuild`"
                    )?;
                }
            }
            Ok(if ok { 0 } else { 1 })
        }
        LedgerCommand::Rebuild { common } => {
            let s = settings(&common, None)?;
            let store = open_store(&s)?;
            let n = store.transact_direct(|c, _| tarmo_store::consent::rebuild(c))?;
            println!("consent state rebuilt from the ledger; {n} rows were different");
            Ok(0)
        }
    }
}
