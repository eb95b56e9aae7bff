//! The scale-out backend: PostgreSQL, shared by any number of stateless
//! `tarmo serve` nodes. Batched operations use arrays (`unnest`, `= ANY`) so a
//! group commit costs a handful of round trips, not one per event.

use std::time::Duration;

use postgres::{Client, NoTls};

use crate::conn::*;
use crate::vault::{BlindIndex, Sealed};
use crate::{Error, Result};

pub struct PostgresBackend {
    config: Box<postgres::Config>,
    /// `None`: plain TCP (no `sslmode`, or `disable`, `allow`, `prefer`).
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

/// How long a connection attempt may take when the URL does not say
/// (`connect_timeout=` in seconds): a database that does not answer must
/// turn into an error, not a thread stuck for the kernel's TCP timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one statement may run when the URL's `options` do not set
/// `statement_timeout`: a stuck statement fails and frees its connection.
pub const STATEMENT_TIMEOUT_MS: u64 = 30_000;

/// Unacknowledged data on a connection for this long means the database is
/// gone (a blackholed network): the kernel closes the connection.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);

impl PostgresBackend {
    /// Connect, and run migrations under an advisory lock so that several
    /// nodes starting at once do not race.
    pub fn open(url: &str) -> Result<Self> {
        let b = Self::new(url)?;
        let mut c = b.connect()?;
        c.migrate()?;
        Ok(b)
    }

    /// The connection settings of `url`, with Tarmo's defaults for the
    /// timeouts it leaves out. Connects to nothing.
    pub fn new(url: &str) -> Result<Self> {
        let (url, ssl) = take_ssl_params(url)?;
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| Error::Config(format!("the PostgreSQL URL is not valid: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        config.keepalives(true);
        let options = config.get_options().unwrap_or("").to_owned();
        if !options.contains("statement_timeout") {
            let sep = if options.is_empty() { "" } else { " " };
            config.options(&format!(
                "{options}{sep}-c statement_timeout={STATEMENT_TIMEOUT_MS}"
            ));
        }
        if config.get_application_name().is_none() {
            config.application_name("tarmo");
        }
        let tls = match ssl.mode.as_deref() {
            None | Some("disable" | "allow" | "prefer") => None,
            Some(mode @ ("require" | "verify-ca" | "verify-full")) => {
                config.ssl_mode(postgres::config::SslMode::Require);
                Some(crate::pg_tls::connector(mode, ssl.root_cert.as_deref())?)
            }
            Some(other) => {
                return Err(Error::Config(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                )));
            }
        };
        Ok(Self {
            config: Box::new(config),
            tls,
        })
    }

    pub fn connect(&self) -> Result<PgConn> {
        let mut c = match &self.tls {
            None => self.config.connect(NoTls)?,
            Some(tls) => self.config.connect(tls.clone())?,
        };
        // The data keys live in schema `keyring` (migration 19); the
        // database's own search_path is kept in front.
        c.batch_execute(
            "SELECT set_config('search_path', current_setting('search_path') || ', keyring', false)",
        )?;
        Ok(PgConn {
            c,
            stmts: Default::default(),
        })
    }
}

/// `sslmode` and `sslrootcert` as libpq reads them.
struct SslParams {
    mode: Option<String>,
    root_cert: Option<String>,
}

/// Take `sslmode` and `sslrootcert` out of a URL's query: the driver knows
/// only `disable`, `prefer` and `require`, and no root certificates, so
/// Tarmo applies them itself (see [`crate::pg_tls`]).
fn take_ssl_params(url: &str) -> Result<(String, SslParams)> {
    let mut p = SslParams {
        mode: None,
        root_cert: None,
    };
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), p));
    };
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("sslmode", v)) => p.mode = Some(v.to_owned()),
            Some(("sslrootcert", v)) => p.root_cert = Some(percent_decode(v)?),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, p))
}

fn percent_decode(v: &str) -> Result<String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let h = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::Config("a bad %-escape in sslrootcert".into()))?;
            out.push(h);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::Config("sslrootcert is not UTF-8".into()))
}

pub struct PgConn {
    c: Client,
    /// Prepared statements of backend-neutral SQL, by text: one round trip
    /// per statement instead of two.
    stmts: std::collections::HashMap<String, postgres::Statement>,
}

impl PgConn {
    fn prepared(&mut self, sql: &str) -> Result<postgres::Statement> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let st = self.c.prepare(sql)?;
        if self.stmts.len() > 256 {
            self.stmts.clear();
        }
        self.stmts.insert(sql.to_owned(), st.clone());
        Ok(st)
    }
}

impl PgConn {
    fn migrate(&mut self) -> Result<()> {
        let mut tx = self.c.transaction()?;
        // A migration may rewrite a large table: no statement timeout here.
        tx.batch_execute("SET LOCAL statement_timeout = 0")?;
        tx.execute("SELECT pg_advisory_xact_lock(7461726)", &[])?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_ms BIGINT NOT NULL)",
        )?;
        let all: Vec<(i64, String)> = crate::migrations::postgres();
        for (version, sql) in &all {
            let done = tx
                .query_opt(
                    "SELECT version FROM schema_migrations WHERE version = $1",
                    &[version],
                )?
                .is_some();
            if !done {
                tx.batch_execute(sql)?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, applied_ms) VALUES ($1, $2)",
                    &[version, &crate::now_ms()],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// A backend-neutral parameter as PostgreSQL wants it: integers fit the
/// column's width, and NULL is accepted for any type.
#[derive(Debug)]
struct PgParam<'a>(P<'a>);

impl postgres::types::ToSql for PgParam<'_> {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> std::result::Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
    {
        use postgres::types::{IsNull, Type};
        match self.0 {
            P::Null => Ok(IsNull::Yes),
            P::Int(v) => match *ty {
                Type::INT2 => i16::try_from(v)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(v)?.to_sql(ty, out),
                Type::BOOL => (v != 0).to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            P::Text(s) => s.to_sql(ty, out),
            P::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_ty: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

fn pg_cells(r: &postgres::Row) -> Result<Row> {
    use postgres::types::Type;
    let mut cells = Vec::with_capacity(r.len());
    for (i, col) in r.columns().iter().enumerate() {
        let c = match *col.type_() {
            Type::INT8 => r.try_get::<_, Option<i64>>(i)?.map(Cell::Int),
            Type::INT4 => r.try_get::<_, Option<i32>>(i)?.map(|v| Cell::Int(v.into())),
            Type::INT2 => r.try_get::<_, Option<i16>>(i)?.map(|v| Cell::Int(v.into())),
            Type::BOOL => r
                .try_get::<_, Option<bool>>(i)?
                .map(|v| Cell::Int(v.into())),
            Type::BYTEA => r.try_get::<_, Option<Vec<u8>>>(i)?.map(Cell::Blob),
            Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => {
                r.try_get::<_, Option<String>>(i)?.map(Cell::Text)
            }
            ref other => {
                return Err(Error::Backend(format!(
                    "column {} has type {other}, which backend-neutral queries do not read",
                    col.name()
                )));
            }
        };
        cells.push(c.unwrap_or(Cell::Null));
    }
    Ok(Row(cells))
}

/// Ids as the integers PostgreSQL binds.
fn numbers(ids: &[ProfileId]) -> Vec<i64> {
    ids.iter().map(|p| p.0).collect()
}

fn merge_row(r: &postgres::Row) -> MergeRow {
    MergeRow {
        into_profile: ProfileId(r.get(0)),
        from_profile: ProfileId(r.get(1)),
        identifier_kind: r.get(2),
        at_ms: r.get(3),
        refused: r.get(4),
        reason: r.get(5),
    }
}

impl Conn for PgConn {
    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    fn is_broken(&self) -> bool {
        self.c.is_closed()
    }

    fn ping(&mut self) -> Result<()> {
        self.c.batch_execute("SELECT 1")?;
        Ok(())
    }

    fn skip_locked(&self, table: &str) -> String {
        format!(" FOR UPDATE OF {table} SKIP LOCKED")
    }

    fn begin(&mut self) -> Result<()> {
        self.c.batch_execute("BEGIN")?;
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        self.c.batch_execute("COMMIT")?;
        Ok(())
    }

    fn rollback(&mut self) -> Result<()> {
        self.c.batch_execute("ROLLBACK")?;
        Ok(())
    }

    fn exec(&mut self, sql: &str, params: &[P<'_>]) -> Result<u64> {
        let ps: Vec<PgParam<'_>> = params.iter().map(|p| PgParam(*p)).collect();
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = ps
            .iter()
            .map(|p| p as &(dyn postgres::types::ToSql + Sync))
            .collect();
        let st = self.prepared(sql)?;
        Ok(self.c.execute(&st, &refs)?)
    }

    fn query(&mut self, sql: &str, params: &[P<'_>]) -> Result<Vec<Row>> {
        let ps: Vec<PgParam<'_>> = params.iter().map(|p| PgParam(*p)).collect();
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = ps
            .iter()
            .map(|p| p as &(dyn postgres::types::ToSql + Sync))
            .collect();
        let st = self.prepared(sql)?;
        self.c.query(&st, &refs)?.iter().map(pg_cells).collect()
    }

    fn checkpoint(&mut self) -> Result<()> {
        Ok(())
    }

    fn data_version(&mut self) -> Result<i64> {
        Ok(0)
    }

    fn lock(&mut self, lock: TxLock) -> Result<()> {
        let id: i64 = match lock {
            TxLock::ConsentLedger => 7461727,
            TxLock::AccessLog => 7461728,
        };
        self.c.execute("SELECT pg_advisory_xact_lock($1)", &[&id])?;
        Ok(())
    }

    fn keyring_meta(&self) -> &'static str {
        "keyring.meta"
    }

    fn meta_get(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .c
            .query_opt("SELECT value FROM meta WHERE key = $1", &[&key])?
            .map(|r| r.get(0)))
    }

    fn meta_set(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.c.execute(
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&key, &value],
        )?;
        Ok(())
    }

    fn dedup_claim(&mut self, hashes: &[i64], now_ms: i64) -> Result<Vec<bool>> {
        let rows = self.c.query(
            "INSERT INTO dedup (h, seen_ms) SELECT unnest($1::bigint[]), $2 ON CONFLICT DO NOTHING RETURNING h",
            &[&hashes, &now_ms],
        )?;
        let new: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
        Ok(hashes.iter().map(|h| new.contains(h)).collect())
    }

    fn dedup_purge(&mut self, older_than_ms: i64) -> Result<u64> {
        Ok(self
            .c
            .execute("DELETE FROM dedup WHERE seen_ms < $1", &[&older_than_ms])?)
    }

    fn profile_create(&mut self, now_ms: i64) -> Result<ProfileId> {
        Ok(ProfileId(
            self.c
                .query_one(
                    "INSERT INTO profiles (created_ms, updated_ms) VALUES ($1, $1) RETURNING id",
                    &[&now_ms],
                )?
                .get(0),
        ))
    }

    fn data_key_insert(
        &mut self,
        owner: ProfileId,
        profile: ProfileId,
        wrapped: &[u8],
    ) -> Result<()> {
        self.c.execute(
            "INSERT INTO data_keys (owner_id, profile_id, wrapped) VALUES ($1, $2, $3)",
            &[&owner.0, &profile.0, &wrapped],
        )?;
        Ok(())
    }

    fn data_key_get(&mut self, owner: ProfileId) -> Result<Option<Vec<u8>>> {
        Ok(self
            .c
            .query_opt(
                "SELECT wrapped FROM data_keys WHERE owner_id = $1",
                &[&owner.0],
            )?
            .map(|r| r.get(0)))
    }

    fn profile_get(&mut self, id: ProfileId) -> Result<Option<ProfileRow>> {
        Ok(self
            .c
            .query_opt(
                "SELECT p.id, p.created_ms, greatest(p.updated_ms, COALESCE(c.last_ms, 0)),
                        COALESCE(c.events, 0), p.traits
                 FROM profiles p LEFT JOIN profile_counts c ON c.profile_id = p.id
                 WHERE p.id = (SELECT COALESCE(merged_into, id) FROM profiles WHERE id = $1)",
                &[&id.0],
            )?
            .map(|r| ProfileRow {
                id: ProfileId(r.get(0)),
                created_ms: r.get(1),
                updated_ms: r.get(2),
                event_count: r.get(3),
                traits: r.get::<_, Option<Vec<u8>>>(4).map(Sealed::from_db),
            }))
    }

    fn profile_set_traits(&mut self, id: ProfileId, sealed: &Sealed, now_ms: i64) -> Result<()> {
        self.c.execute(
            "UPDATE profiles SET traits = $2, updated_ms = $3 WHERE id = $1",
            &[&id.0, &sealed.as_bytes(), &now_ms],
        )?;
        Ok(())
    }

    fn profile_merge(
        &mut self,
        from: ProfileId,
        into: ProfileId,
        cause_kind: &str,
        now_ms: i64,
    ) -> Result<()> {
        // Another node may be merging the same people: the first to mark
        // `from` merged wins (the row lock orders them), and the other's
        // group is retried on what the winner committed, so a merge
        // happens, and is recorded, once. `into` must still be a profile
        // of its own too.
        let marked = self.c.execute(
            "UPDATE profiles SET merged_into = $2, updated_ms = $3 WHERE id = $1 AND merged_into IS NULL",
            &[&from.0, &into.0, &now_ms],
        )?;
        let into_alive = self
            .c
            .query_opt(
                "SELECT 1 FROM profiles WHERE id = $1 AND merged_into IS NULL FOR UPDATE",
                &[&into.0],
            )?
            .is_some();
        if marked != 1 || !into_alive {
            return Err(Error::Busy(format!(
                "profile {from} or {into} was merged by another writer meanwhile"
            )));
        }
        self.c.execute(
            "UPDATE identifiers SET profile_id = $2 WHERE profile_id = $1",
            &[&from.0, &into.0],
        )?;
        self.c.execute(
            "UPDATE events SET profile_id = $2 WHERE profile_id = $1",
            &[&from.0, &into.0],
        )?;
        self.c.execute(
            "UPDATE data_keys SET profile_id = $2 WHERE profile_id = $1",
            &[&from.0, &into.0],
        )?;
        self.c.execute(
            "UPDATE profiles SET merged_into = $2 WHERE merged_into = $1",
            &[&from.0, &into.0],
        )?;
        self.c.execute(
            "INSERT INTO profile_counts (profile_id, events, last_ms)
                 SELECT $2, events, last_ms FROM profile_counts WHERE profile_id = $1
             ON CONFLICT (profile_id) DO UPDATE SET events = profile_counts.events + EXCLUDED.events,
                 last_ms = greatest(profile_counts.last_ms, EXCLUDED.last_ms)",
            &[&from.0, &into.0],
        )?;
        self.c.execute(
            "DELETE FROM profile_counts WHERE profile_id = $1",
            &[&from.0],
        )?;
        self.c.execute(
            "UPDATE profiles SET updated_ms = $2 WHERE id = $1",
            &[&into.0, &now_ms],
        )?;
        self.c.execute(
            "UPDATE profiles SET merged_into = $2, traits = NULL, updated_ms = $3 WHERE id = $1",
            &[&from.0, &into.0, &now_ms],
        )?;
        self.merge_record(&MergeRow {
            into_profile: into,
            from_profile: from,
            identifier_kind: cause_kind.to_owned(),
            at_ms: now_ms,
            refused: false,
            reason: None,
        })
    }

    fn merge_record(&mut self, m: &MergeRow) -> Result<()> {
        self.c.execute(
            "INSERT INTO merges (into_profile, from_profile, identifier_kind, at_ms, refused, reason)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &m.into_profile.0,
                &m.from_profile.0,
                &m.identifier_kind,
                &m.at_ms,
                &m.refused,
                &m.reason,
            ],
        )?;
        Ok(())
    }

    fn merges_of(&mut self, profile: ProfileId) -> Result<Vec<MergeRow>> {
        Ok(self
            .c
            .query(
                "SELECT into_profile, from_profile, identifier_kind, at_ms, refused, reason FROM merges
                 WHERE into_profile = $1 OR from_profile = $1
                    OR into_profile IN (SELECT id FROM profiles WHERE merged_into = $1)
                 ORDER BY at_ms, id",
                &[&profile.0],
            )?
            .iter()
            .map(merge_row)
            .collect())
    }

    fn identifiers_lookup(&mut self, keys: &[BlindIndex]) -> Result<Vec<Option<ProfileId>>> {
        let arr: Vec<&[u8]> = keys.iter().map(|k| &k.0[..]).collect();
        let rows = self.c.query(
            "SELECT bidx, profile_id FROM identifiers WHERE bidx = ANY($1)",
            &[&arr],
        )?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for r in &rows {
            let b: Vec<u8> = r.get(0);
            found.insert(BlindIndex::from_slice(&b)?, ProfileId(r.get(1)));
        }
        Ok(keys.iter().map(|k| found.get(k).copied()).collect())
    }

    fn identifier_insert(&mut self, row: &IdentifierRow, profile: ProfileId) -> Result<()> {
        self.c.execute(
            "INSERT INTO identifiers (bidx, kind, profile_id, key_owner, sealed, first_seen_ms, verified_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &&row.bidx.0[..],
                &row.kind,
                &profile.0,
                &row.key_owner.0,
                &row.sealed.as_bytes(),
                &row.first_seen_ms,
                &row.verified_ms,
            ],
        )?;
        Ok(())
    }

    fn identifiers_of(&mut self, profile: ProfileId) -> Result<Vec<IdentifierRow>> {
        self.c
            .query(
                "SELECT kind, bidx, key_owner, sealed, first_seen_ms, verified_ms FROM identifiers
                 WHERE profile_id = $1 ORDER BY first_seen_ms, kind",
                &[&profile.0],
            )?
            .iter()
            .map(|r| {
                let b: Vec<u8> = r.get(1);
                Ok(IdentifierRow {
                    kind: r.get(0),
                    bidx: BlindIndex::from_slice(&b)?,
                    key_owner: ProfileId(r.get(2)),
                    sealed: Sealed::from_db(r.get(3)),
                    first_seen_ms: r.get(4),
                    verified_ms: r.get(5),
                })
            })
            .collect()
    }

    fn batch_writes(&self) -> bool {
        true
    }

    fn profile_ids_reserve(&mut self, n: usize) -> Result<Vec<ProfileId>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        Ok(self
            .c
            .query(
                "SELECT nextval('profiles_id_seq') FROM generate_series(1, $1::bigint)",
                &[&(n as i64)],
            )?
            .iter()
            .map(|r| ProfileId(r.get(0)))
            .collect())
    }

    fn profiles_insert(&mut self, ids: &[ProfileId], now_ms: i64) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.c.execute(
            "INSERT INTO profiles (id, created_ms, updated_ms) SELECT unnest($1::bigint[]), $2, $2",
            &[&numbers(ids), &now_ms],
        )?;
        Ok(())
    }

    fn data_keys_insert(&mut self, rows: &[(ProfileId, ProfileId, Vec<u8>)]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let owner: Vec<i64> = rows.iter().map(|r| r.0.0).collect();
        let profile: Vec<i64> = rows.iter().map(|r| r.1.0).collect();
        let wrapped: Vec<&[u8]> = rows.iter().map(|r| &r.2[..]).collect();
        self.c.execute(
            "INSERT INTO data_keys (owner_id, profile_id, wrapped)
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[])",
            &[&owner, &profile, &wrapped],
        )?;
        Ok(())
    }

    fn identifiers_insert(&mut self, rows: &[(IdentifierRow, ProfileId)]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let bidx: Vec<&[u8]> = rows.iter().map(|(r, _)| &r.bidx.0[..]).collect();
        let kind: Vec<&str> = rows.iter().map(|(r, _)| r.kind.as_str()).collect();
        let profile: Vec<i64> = rows.iter().map(|(_, p)| p.0).collect();
        let owner: Vec<i64> = rows.iter().map(|(r, _)| r.key_owner.0).collect();
        let sealed: Vec<&[u8]> = rows.iter().map(|(r, _)| r.sealed.as_bytes()).collect();
        let first: Vec<i64> = rows.iter().map(|(r, _)| r.first_seen_ms).collect();
        let verified: Vec<Option<i64>> = rows.iter().map(|(r, _)| r.verified_ms).collect();
        self.c.execute(
            "INSERT INTO identifiers (bidx, kind, profile_id, key_owner, sealed, first_seen_ms, verified_ms)
             SELECT * FROM unnest($1::bytea[], $2::text[], $3::bigint[], $4::bigint[], $5::bytea[], $6::bigint[], $7::bigint[])",
            &[&bidx, &kind, &profile, &owner, &sealed, &first, &verified],
        )?;
        Ok(())
    }

    fn data_keys_get(&mut self, owners: &[ProfileId]) -> Result<Vec<Option<Vec<u8>>>> {
        let rows = self.c.query(
            "SELECT owner_id, wrapped FROM data_keys WHERE owner_id = ANY($1)",
            &[&numbers(owners)],
        )?;
        let mut found: std::collections::HashMap<ProfileId, Vec<u8>> = rows
            .iter()
            .map(|r| (ProfileId(r.get(0)), r.get(1)))
            .collect();
        Ok(owners.iter().map(|o| found.remove(o)).collect())
    }

    fn profiles_get(&mut self, ids: &[ProfileId]) -> Result<Vec<Option<ProfileRow>>> {
        // Each asked id with the row of the profile it was merged into, if any.
        let rows = self.c.query(
            "SELECT q.id, p.id, p.created_ms, greatest(p.updated_ms, COALESCE(c.last_ms, 0)),
                    COALESCE(c.events, 0), p.traits
             FROM unnest($1::bigint[]) AS q(id)
             JOIN profiles m ON m.id = q.id
             JOIN profiles p ON p.id = COALESCE(m.merged_into, m.id)
             LEFT JOIN profile_counts c ON c.profile_id = p.id",
            &[&numbers(ids)],
        )?;
        let mut found: std::collections::HashMap<ProfileId, ProfileRow> = rows
            .iter()
            .map(|r| {
                (
                    ProfileId(r.get(0)),
                    ProfileRow {
                        id: ProfileId(r.get(1)),
                        created_ms: r.get(2),
                        updated_ms: r.get(3),
                        event_count: r.get(4),
                        traits: r.get::<_, Option<Vec<u8>>>(5).map(Sealed::from_db),
                    },
                )
            })
            .collect();
        Ok(ids.iter().map(|p| found.remove(p)).collect())
    }

    fn identifiers_of_many(
        &mut self,
        profiles: &[ProfileId],
    ) -> Result<Vec<(ProfileId, IdentifierRow)>> {
        self.c
            .query(
                "SELECT profile_id, kind, bidx, key_owner, sealed, first_seen_ms, verified_ms FROM identifiers
                 WHERE profile_id = ANY($1) ORDER BY profile_id, first_seen_ms, kind",
                &[&numbers(profiles)],
            )?
            .iter()
            .map(|r| {
                let b: Vec<u8> = r.get(2);
                Ok((
                    ProfileId(r.get(0)),
                    IdentifierRow {
                        kind: r.get(1),
                        bidx: BlindIndex::from_slice(&b)?,
                        key_owner: ProfileId(r.get(3)),
                        sealed: Sealed::from_db(r.get(4)),
                        first_seen_ms: r.get(5),
                        verified_ms: r.get(6),
                    },
                ))
            })
            .collect()
    }

    fn profiles_set_traits(&mut self, rows: &[(ProfileId, Sealed)], now_ms: i64) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let id: Vec<i64> = rows.iter().map(|r| r.0.0).collect();
        let traits: Vec<&[u8]> = rows.iter().map(|r| r.1.as_bytes()).collect();
        self.c.execute(
            "UPDATE profiles p SET traits = u.traits, updated_ms = $3
             FROM unnest($1::bigint[], $2::bytea[]) AS u(id, traits) WHERE p.id = u.id",
            &[&id, &traits, &now_ms],
        )?;
        Ok(())
    }

    fn profiles_add_events(&mut self, rows: &[(ProfileId, i64)], now_ms: i64) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let id: Vec<i64> = rows.iter().map(|r| r.0.0).collect();
        let n: Vec<i64> = rows.iter().map(|r| r.1).collect();
        self.c.execute(
            "INSERT INTO profile_counts (profile_id, events, last_ms)
                 SELECT u.id, u.n, $3 FROM unnest($1::bigint[], $2::bigint[]) AS u(id, n)
             ON CONFLICT (profile_id) DO UPDATE SET events = profile_counts.events + EXCLUDED.events,
                 last_ms = greatest(profile_counts.last_ms, EXCLUDED.last_ms)",
            &[&id, &n, &now_ms],
        )?;
        Ok(())
    }

    fn suppressed_many(&mut self, keys: &[BlindIndex]) -> Result<Vec<bool>> {
        let arr: Vec<&[u8]> = keys.iter().map(|k| &k.0[..]).collect();
        let rows = self
            .c
            .query("SELECT bidx FROM suppression WHERE bidx = ANY($1)", &[&arr])?;
        let mut found = std::collections::HashSet::with_capacity(rows.len());
        for r in &rows {
            let b: Vec<u8> = r.get(0);
            found.insert(BlindIndex::from_slice(&b)?);
        }
        Ok(keys.iter().map(|k| found.contains(k)).collect())
    }

    fn events_insert(&mut self, rows: &[NewEvent]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let profile: Vec<i64> = rows.iter().map(|e| e.profile_id.0).collect();
        let owner: Vec<i64> = rows.iter().map(|e| e.key_owner.0).collect();
        let kind: Vec<&str> = rows.iter().map(|e| e.kind).collect();
        let ts: Vec<i64> = rows.iter().map(|e| e.timestamp_ms).collect();
        let received: Vec<i64> = rows.iter().map(|e| e.received_ms).collect();
        let body: Vec<&[u8]> = rows.iter().map(|e| e.sealed.as_bytes()).collect();
        let source: Vec<i64> = rows.iter().map(|e| e.source_id.column()).collect();
        self.c.execute(
            "INSERT INTO events (profile_id, key_owner, kind, ts_ms, received_ms, body, source_id)
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[], $6::bytea[], $7::bigint[])",
            &[&profile, &owner, &kind, &ts, &received, &body, &source],
        )?;
        Ok(())
    }

    fn events_page(
        &mut self,
        profile: ProfileId,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<EventRow>> {
        Ok(self
            .c
            .query(
                "SELECT id, key_owner, kind, ts_ms, received_ms, body FROM events
                 WHERE profile_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
                &[&profile.0, &before.unwrap_or(i64::MAX), &(limit as i64)],
            )?
            .iter()
            .map(|r| EventRow {
                id: r.get(0),
                key_owner: ProfileId(r.get(1)),
                kind: r.get(2),
                timestamp_ms: r.get(3),
                received_ms: r.get(4),
                sealed: Sealed::from_db(r.get(5)),
            })
            .collect())
    }

    fn counts(&mut self) -> Result<StoreCounts> {
        let r = self.c.query_one(
            "SELECT (SELECT count(*) FROM profiles WHERE merged_into IS NULL),
                    (SELECT count(*) FROM events), (SELECT count(*) FROM identifiers)",
            &[],
        )?;
        Ok(StoreCounts {
            profiles: r.get(0),
            events: r.get(1),
            identifiers: r.get(2),
        })
    }
}

impl From<postgres::Error> for Error {
    fn from(e: postgres::Error) -> Self {
        use postgres::error::SqlState;
        // Display of a database error is only "db error"; the message says
        // what went wrong (it never holds values: Tarmo binds only sealed bytes).
        let text = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        };
        if unreachable(&e) {
            return Error::Unavailable(text);
        }
        match e.code() {
            Some(c) if *c == SqlState::UNIQUE_VIOLATION => Error::Conflict(text),
            Some(c)
                if *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::T_R_DEADLOCK_DETECTED
                    || *c == SqlState::QUERY_CANCELED =>
            {
                Error::Busy(text)
            }
            Some(c) if *c == SqlState::DISK_FULL => Error::StorageFull(text),
            _ => Error::Backend(text),
        }
    }
}

/// The server cannot be reached or went away (restart, crash, network):
/// nothing the statement did is kept, and the same work may succeed on a
/// new connection.
fn unreachable(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // Connection exceptions (class 08), the server shutting down or
        // starting (57P01-57P03), no connection slots left.
        Some(c) => {
            let c = c.code();
            c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03" | "53300")
        }
        // Not a database error: I/O, connect, TLS and timeouts are the
        // server being away; conversion errors are bugs.
        None => {
            let t = e.to_string();
            [
                "error communicating with the server",
                "error connecting to server",
                "timeout waiting for server",
                "error performing TLS handshake",
                "unexpected message from server",
                "error parsing response from server",
            ]
            .iter()
            .any(|p| t.starts_with(p))
        }
    }
}
