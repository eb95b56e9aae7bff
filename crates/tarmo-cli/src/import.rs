//! `tarmo import consents FILE.csv`: consents from a till system, a CRM, or a
//! bought list, with their provenance. Every row is checked before anything
//! is written; then the whole file goes in one transaction, so a file is
//! either imported whole or not at all. People who were erased (their
//! identifiers are on the suppression list) are not brought back.
//!
//! `tarmo import customers|orders|products|stores|stock FILE`: the offline
//! register, by the same rules; the use case is `tarmo_store::imports`,
//! shared with `POST /api/v1/imports`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tarmo_core::consent::{ConsentDecision, Method, check_entry};
use tarmo_core::identity::Identifier;
use tarmo_core::segment::parse_timestamp_ms;
use tarmo_store::consent::NewEntry;
use tarmo_store::imports::{Format, ImportKind, ImportSpec, Mapping, Status};
use tarmo_store::writer::WriterConfig;

use crate::{Common, open_store, settings};

/// What every register import takes.
#[derive(Args)]
pub struct RegisterArgs {
    #[command(flatten)]
    common: Common,
    /// The file: CSV with a header row, or JSON Lines (one object a line).
    file: PathBuf,
    /// Where the file comes from, e.g. "till export 2026-11" (1-200 characters).
    #[arg(long)]
    source: String,
    /// Where the proof that the people in it were collected lawfully is kept
    /// (required for customers and orders).
    #[arg(long, default_value = "")]
    documentation: String,
    /// A TOML or JSON file mapping the file's columns (see the README).
    #[arg(long)]
    mapping: Option<PathBuf>,
    /// csv or jsonl (default: by the file's extension).
    #[arg(long)]
    format: Option<String>,
    /// Check every row and count what would change, without writing.
    #[arg(long)]
    dry_run: bool,
    /// Import the valid rows and report the others, instead of nothing.
    #[arg(long)]
    skip_invalid: bool,
}

#[derive(Subcommand)]
pub enum ImportCommand {
    /// Import customers from the CRM or the till: identifier columns
    /// (email, phone, loyalty_card, user_id, custom kinds such as a CRM id)
    /// and traits. A re-import of an unchanged row changes nothing.
    Customers(RegisterArgs),
    /// Import orders from the till: order_id, ordered_at, store_id, total,
    /// currency, and a line per row (product_id, quantity, price) or, in
    /// JSON Lines, an `items` list. Each order becomes an `Order Completed`
    /// event; an order id seen before is replaced, not duplicated.
    Orders(RegisterArgs),
    /// Import products: product_id, name (or name_fi, name_en, ...),
    /// category, price.
    Products(RegisterArgs),
    /// Import stores: store_id, name, city, latitude, longitude.
    Stores(RegisterArgs),
    /// Import stock levels: store_id, product_id, quantity.
    Stock(RegisterArgs),
    /// Import consent decisions from a CSV file. Columns: one or more
    /// identifier columns (email, phone, user_id, loyalty_card, ...),
    /// `purpose`, and optionally `decision` (granted, denied, withdrawn or
    /// objected; default granted), `consented_at` (RFC 3339 or YYYY-MM-DD:
    /// when the person decided) and `notice_version` (the notice they saw).
    Consents {
        #[command(flatten)]
        common: Common,
        /// The CSV file.
        file: PathBuf,
        /// Where the list comes from, e.g. "till system export 2026-11" or
        /// "list bought from Example Oy" (at most 200 characters).
        #[arg(long)]
        source: String,
        /// Where the proof of these consents is kept (the forms, the seller's
        /// documentation, the contract).
        #[arg(long)]
        documentation: String,
        /// Check every row and report, without writing anything.
        #[arg(long)]
        dry_run: bool,
    },
}

struct Row {
    line: u64,
    identifiers: Vec<Identifier>,
    purpose: String,
    decision: ConsentDecision,
    at_ms: Option<i64>,
    notice_version: Option<String>,
    consented_at: Option<String>,
}

fn parse_date(s: &str) -> Option<i64> {
    parse_timestamp_ms(s).or_else(|| parse_timestamp_ms(&format!("{s}T00:00:00Z")))
}

pub fn run(cmd: ImportCommand) -> anyhow::Result<u8> {
    let (kind, args) = match cmd {
        ImportCommand::Consents {
            common,
            file,
            source,
            documentation,
            dry_run,
        } => return consents(common, file, source, documentation, dry_run),
        ImportCommand::Customers(a) => (ImportKind::Customers, a),
        ImportCommand::Orders(a) => (ImportKind::Orders, a),
        ImportCommand::Products(a) => (ImportKind::Products, a),
        ImportCommand::Stores(a) => (ImportKind::Stores, a),
        ImportCommand::Stock(a) => (ImportKind::Stock, a),
    };
    register(kind, args)
}

fn register(kind: ImportKind, a: RegisterArgs) -> anyhow::Result<u8> {
    let s = settings(&a.common, None)?;
    let bytes = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let mapping = match &a.mapping {
        None => Mapping::default(),
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Mapping::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        }
    };
    let file_name = a
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let format = match &a.format {
        None => Format::of_file_name(&file_name),
        Some(f) => Format::parse(f).context("--format is csv or jsonl")?,
    };
    let spec = ImportSpec {
        kind,
        format,
        mapping,
        source: a.source,
        documentation: a.documentation,
        file_name,
        skip_invalid: a.skip_invalid,
        dry_run: a.dry_run,
    };
    let store = open_store(&s)?;
    let (writer, join) = store.start_writer(WriterConfig::default())?;
    let tty = std::io::stderr().is_terminal();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut printer = None;
    let result = tarmo_store::imports::run(
        &store,
        &writer,
        &s.identity,
        spec,
        &bytes,
        None,
        |done, total| {
            if tty {
                let stop = stop.clone();
                printer = Some(std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let n = done.load(Ordering::Relaxed);
                        eprint!(
                            "\rimporting {n} / {total} records ({}%)",
                            n * 100 / total.max(1)
                        );
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    eprintln!("\rimporting {total} / {total} records (100%), committed");
                }));
            }
        },
    );
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = printer {
        let _ = p.join();
    }
    drop(writer);
    join.join()
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
    let done = match result {
        Ok(d) => d,
        Err(tarmo_store::Error::Rejected { message, .. }) => bail!("{message}"),
        Err(e) => return Err(e.into()),
    };
    let r = &done.report;
    {
        let mut err = std::io::stderr().lock();
        for e in &r.errors {
            writeln!(err, "{}:{}: {}", a.file.display(), e.line, e.message)?;
        }
        if r.errors.len() >= 1000 {
            writeln!(err, "... (the first 1000 errors)")?;
        }
        if !r.ignored_columns.is_empty() {
            writeln!(
                err,
                "columns not imported: {}",
                r.ignored_columns.join(", ")
            )?;
        }
    }
    let what = match kind {
        ImportKind::Customers => "customers",
        ImportKind::Orders => "orders",
        ImportKind::Products => "products",
        ImportKind::Stores => "stores",
        ImportKind::Stock => "stock levels",
    };
    let counts = format!(
        "{} rows, {} {what}: {} new, {} updated, {} unchanged, {} skipped (erased people), {} skipped (no customer), {} invalid rows",
        r.rows, r.records, r.created, r.updated, r.unchanged, r.suppressed, r.anonymous, r.invalid
    );
    match done.status {
        Status::Invalid => {
            eprintln!("{counts}");
            eprintln!(
                "{} rows have errors; nothing was imported (--skip-invalid imports the valid rows)",
                r.invalid
            );
            Ok(1)
        }
        Status::Checked => {
            println!("dry run, nothing written: {counts}");
            Ok(0)
        }
        _ => {
            println!(
                "import {}: {counts}",
                done.id.map(|i| i.to_string()).unwrap_or_default()
            );
            Ok(0)
        }
    }
}

fn consents(
    common: Common,
    file: PathBuf,
    source: String,
    documentation: String,
    dry_run: bool,
) -> anyhow::Result<u8> {
    if source.trim().is_empty() || source.len() > 200 {
        bail!("--source names where the list comes from, in 1 to 200 characters");
    }
    if documentation.trim().is_empty() {
        bail!("--documentation says where the proof of these consents is kept");
    }
    let s = settings(&common, None)?;
    let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let file_hash = hex::encode(Sha256::digest(&bytes));
    let store = open_store(&s)?;
    let catalog = store.catalog()?;

    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(&bytes[..]);
    let headers = rdr.headers().context("reading the CSV header")?.clone();
    let mut id_cols = Vec::new();
    let (mut purpose_col, mut decision_col, mut at_col, mut notice_col) = (None, None, None, None);
    for (i, h) in headers.iter().enumerate() {
        match h {
            "purpose" => purpose_col = Some(i),
            "decision" => decision_col = Some(i),
            "consented_at" => at_col = Some(i),
            "notice_version" => notice_col = Some(i),
            other => match s.identity.kind(other) {
                Ok(k) => id_cols.push((i, k)),
                Err(_) => bail!(
                    "unknown column `{other}`: use identifier types (email, phone, user_id, {}), purpose, decision, consented_at, notice_version",
                    s.identity
                        .custom_kinds()
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
        }
    }
    let Some(purpose_col) = purpose_col else {
        bail!("the CSV needs a `purpose` column");
    };
    if id_cols.is_empty() {
        bail!("the CSV needs at least one identifier column (email, phone, user_id, ...)");
    }

    let now = tarmo_store::now_ms();
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for rec in rdr.records() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                errors.push((line, format!("not valid CSV: {e}")));
                continue;
            }
        };
        let line = rec.position().map_or(0, |p| p.line());
        let mut err = |m: String| errors.push((line, m));
        let mut identifiers = Vec::new();
        for (i, k) in &id_cols {
            let v = rec.get(*i).unwrap_or("");
            if v.is_empty() {
                continue;
            }
            match s.identity.identifier(k.clone(), v) {
                Ok(id) => identifiers.push(id),
                Err(e) => err(format!("{}: {e}", headers.get(*i).unwrap_or(""))),
            }
        }
        if identifiers.is_empty()
            && id_cols
                .iter()
                .all(|(i, _)| rec.get(*i).unwrap_or("").is_empty())
        {
            err("no identifier: every identifier column is empty".into());
        }
        let purpose = rec.get(purpose_col).unwrap_or("").to_owned();
        let decision = match decision_col.map(|c| rec.get(c).unwrap_or("")) {
            None | Some("") => ConsentDecision::Granted,
            Some(d) => match ConsentDecision::parse(d) {
                Ok(
                    d @ (ConsentDecision::Granted
                    | ConsentDecision::Denied
                    | ConsentDecision::Withdrawn
                    | ConsentDecision::Objected),
                ) => d,
                _ => {
                    err(format!(
                        "decision `{d}`: use granted, denied, withdrawn or objected"
                    ));
                    ConsentDecision::Granted
                }
            },
        };
        match catalog.require(&purpose) {
            Err(e) => err(e.to_string()),
            Ok(c) => {
                if let Err(e) = check_entry(&purpose, &c.rule, decision, Method::Import) {
                    err(e.to_string());
                }
            }
        }
        let consented_at = at_col
            .map(|c| rec.get(c).unwrap_or("").to_owned())
            .filter(|v| !v.is_empty());
        let at_ms = match &consented_at {
            None => None,
            Some(v) => match parse_date(v) {
                Some(t) if t <= now => Some(t),
                Some(_) => {
                    err(format!("consented_at `{v}` is in the future"));
                    None
                }
                None => {
                    err(format!(
                        "consented_at `{v}` is not an RFC 3339 date-time or a YYYY-MM-DD date"
                    ));
                    None
                }
            },
        };
        let notice_version = notice_col
            .map(|c| rec.get(c).unwrap_or("").to_owned())
            .filter(|v| !v.is_empty());
        rows.push(Row {
            line,
            identifiers,
            purpose,
            decision,
            at_ms,
            notice_version,
            consented_at,
        });
    }
    // Notice versions the file names must exist.
    {
        let mut conn = store.conn()?;
        let mut known = std::collections::HashSet::new();
        for r in &rows {
            if let Some(v) = &r.notice_version {
                let k = (r.purpose.clone(), v.clone());
                if known.contains(&k) {
                    continue;
                }
                if tarmo_store::consent::notice_texts(&mut *conn, &r.purpose, v)?.is_none() {
                    errors.push((
                        r.line,
                        format!("purpose `{}` never had notice version `{v}`", r.purpose),
                    ));
                } else {
                    known.insert(k);
                }
            }
        }
    }
    if !errors.is_empty() {
        errors.sort();
        let mut err = std::io::stderr().lock();
        for (line, m) in errors.iter().take(100) {
            writeln!(err, "{}:{line}: {m}", file.display())?;
        }
        if errors.len() > 100 {
            writeln!(err, "... and {} more", errors.len() - 100)?;
        }
        writeln!(
            err,
            "{} rows have errors; nothing was imported",
            errors.len()
        )?;
        return Ok(1);
    }
    if rows.is_empty() {
        bail!("{} has no rows", file.display());
    }
    if dry_run {
        println!(
            "{} rows checked; all valid (dry run: nothing written)",
            rows.len()
        );
        return Ok(0);
    }

    let total = rows.len() as u64;
    let done = Arc::new(AtomicU64::new(0));
    let prepared: Vec<_> = rows
        .into_iter()
        .map(|r| {
            let ids: Vec<_> = r
                .identifiers
                .iter()
                .map(|i| store.prepare_identifier(i))
                .collect();
            (r, ids)
        })
        .collect();
    let file_name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (writer, join) = store.start_writer(WriterConfig::default())?;
    let (tx, rx) = std::sync::mpsc::channel();
    let progress = done.clone();
    writer.transact(
        move |ctx| {
            let mut people = std::collections::HashSet::new();
            let (mut entries, mut suppressed, mut imported) = (Vec::new(), 0u64, 0u64);
            for (r, ids) in prepared {
                let mut skip = false;
                for id in &ids {
                    if tarmo_store::consent::suppressed(ctx.conn, &id.bidx)?.is_some() {
                        skip = true;
                    }
                }
                progress.fetch_add(1, Ordering::Relaxed);
                if skip {
                    suppressed += 1;
                    continue;
                }
                let profile = ctx.resolve(&ids)?;
                people.insert(profile);
                let mut evidence = Map::new();
                evidence.insert("list_source".into(), json!(source));
                evidence.insert("documentation".into(), json!(documentation));
                evidence.insert("file".into(), json!(file_name));
                evidence.insert("file_sha256".into(), json!(file_hash));
                evidence.insert("line".into(), json!(r.line));
                if let Some(c) = &r.consented_at {
                    evidence.insert("consented_at".into(), Value::String(c.clone()));
                }
                entries.push(NewEntry {
                    channel: None,
                    profile_id: profile,
                    // Every row's purpose was found in the catalog above.
                    purpose: ctx.catalog.require(&r.purpose)?.id.clone(),
                    decision: r.decision,
                    method: Method::Import,
                    notice_version: r.notice_version,
                    at_ms: r.at_ms,
                    source: source.clone(),
                    evidence,
                });
                if entries.len() >= 1000 {
                    imported += entries.len() as u64;
                    tarmo_store::consent::append(
                        ctx.conn,
                        ctx.vault,
                        &ctx.catalog,
                        &std::mem::take(&mut entries),
                        ctx.now_ms,
                    )?;
                }
            }
            imported += entries.len() as u64;
            tarmo_store::consent::append(ctx.conn, ctx.vault, &ctx.catalog, &entries, ctx.now_ms)?;
            Ok((imported, people.len(), suppressed))
        },
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    let tty = std::io::stderr().is_terminal();
    let result = loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(r) => break r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if tty {
                    let n = done.load(Ordering::Relaxed);
                    eprint!(
                        "\rimporting {n} / {total} rows ({}%)",
                        n * 100 / total.max(1)
                    );
                }
            }
            Err(_) => bail!("the writer stopped"),
        }
    };
    if tty {
        eprintln!("\rimporting {total} / {total} rows (100%), committing");
    }
    drop(writer);
    join.join()
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
    let (imported, people, suppressed) = result?;
    println!(
        "imported {imported} consent entries for {people} people from {}; {suppressed} rows skipped: their people were erased",
        file.display()
    );
    Ok(0)
}
