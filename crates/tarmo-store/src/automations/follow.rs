//! Making sends due. Each flow follows what commits — `segment_history`
//! (entries and exits) and `events` (views, orders, identifies) — by id
//! from its own cursor, kept in its row and moved in the transaction that
//! writes the sends, so a crash neither skips nor repeats (and a repeat
//! would meet the unique key anyway). Cron schedules and campaigns fire
//! from `next_fire_ms`, moved with a compare-and-set so that one node fans
//! out each firing. Birthdays are scheduled a year at a time per person:
//! the day's due set is an index range, not a scan of everyone. A new
//! win-back looks back over the orders made before it existed.
//!
//! On PostgreSQL ids do not commit in their order: the rows are read
//! through a [`Cursor`] per table, kept in this process, which hands out
//! a row that commits after a later id was read at the next pass, and the
//! stored cursor stays at its floor (what is safe). A new process starts
//! from the stored cursor and meets what it handles again at the unique
//! key of the sends.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::Value;
use tarmo_core::automations::Trigger;
use tarmo_core::automations::clock::{self, Schedule};

use super::{Flow, FlowRecord, SendConfig, flows};
use crate::conn::{Conn, P, ProfileId};
use crate::crypto::person;
use crate::cursor::{self, Cursor};
use crate::vault::{Place, Sealed, Vault};
use crate::{Error, Result};

const PAGE: i64 = 1000;
const DAY_MS: i64 = 86_400_000;

/// Queue one send; a second with the same key is ignored.
pub fn insert_due(
    conn: &mut dyn Conn,
    flow: &str,
    profile: ProfileId,
    occurrence: &str,
    due_ms: i64,
    since_ms: i64,
    now_ms: i64,
) -> Result<u64> {
    conn.exec(
        "INSERT INTO sends (flow_id, profile_id, occurrence, due_ms, since_ms, status, created_ms)
         VALUES ($1, $2, $3, $4, $5, 'due', $6)
         ON CONFLICT (flow_id, profile_id, occurrence) DO NOTHING",
        &[
            P::Text(flow),
            P::Int(profile.0),
            P::Text(occurrence),
            P::Int(due_ms),
            P::Int(since_ms),
            P::Int(now_ms),
        ],
    )
}

fn set_cursor(conn: &mut dyn Conn, id: &str, cursor: i64) -> Result<()> {
    conn.exec(
        "UPDATE automations SET cursor = $2 WHERE id = $1 AND cursor < $2",
        &[P::Text(id), P::Int(cursor)],
    )?;
    Ok(())
}

/// This process's cursors over `segment_history` and `events`, shared by
/// the clones of a [`SendConfig`].
#[derive(Debug, Clone, Default)]
pub struct FollowCursors(Arc<Mutex<Tables>>);

#[derive(Debug, Default)]
struct Tables {
    segments: Option<Cursor>,
    events: Option<Cursor>,
}

/// The cursor over a table for flows whose stored cursors are at least
/// `min`: started there, or moved up to it when another node went ahead,
/// or started again when the stored cursors are behind (a pass that was
/// rolled back).
fn cursor_at<'a>(slot: &'a mut Option<Cursor>, conn: &dyn Conn, min: i64) -> &'a mut Cursor {
    match slot {
        Some(c) if c.floor() <= min => c.skip_to(min),
        _ => *slot = Some(Cursor::new(min, cursor::grace_for(conn))),
    }
    slot.as_mut().expect("set above")
}

#[derive(Deserialize)]
struct NameOnly {
    event: Option<String>,
}

/// A track event's name, opened.
pub(crate) fn event_name(
    conn: &mut dyn Conn,
    vault: &Vault,
    owner: ProfileId,
    sealed: &Sealed,
) -> Result<Option<String>> {
    let sight = person::Sight::duty(person::Duty::Evaluation);
    let plain = person::open(conn, vault, &sight, owner, Place::EventBody, sealed)?;
    Ok(serde_json::from_slice::<NameOnly>(&plain)
        .ok()
        .and_then(|n| n.event))
}

/// A person's traits, opened (empty when they have none).
pub(crate) fn traits_of(
    conn: &mut dyn Conn,
    vault: &Vault,
    profile: ProfileId,
) -> Result<serde_json::Map<String, Value>> {
    let Some(p) = conn.profile_get(profile)? else {
        return Ok(Default::default());
    };
    let Some(sealed) = p.traits else {
        return Ok(Default::default());
    };
    let sight = person::Sight::duty(person::Duty::Evaluation);
    Ok(person::traits(conn, vault, &sight, p.id, &sealed)?.to_object())
}

/// The person's time zone: trait `timezone`, else the default.
pub(crate) fn zone_of(
    traits: &serde_json::Map<String, Value>,
    cfg: &SendConfig,
) -> clock::TimeZone {
    traits
        .get("timezone")
        .and_then(Value::as_str)
        .and_then(clock::zone)
        .unwrap_or_else(|| cfg.default_tz.clone())
}

/// Put the person's next birthday greeting in the queue (and drop a
/// waiting one for a birthday that changed). A year already greeted is
/// passed over.
#[allow(clippy::too_many_arguments)]
pub fn schedule_birthday(
    conn: &mut dyn Conn,
    vault: &Vault,
    cfg: &SendConfig,
    flow: &str,
    local_minutes: u16,
    profile: ProfileId,
    from_ms: i64,
    now_ms: i64,
) -> Result<()> {
    let traits = traits_of(conn, vault, profile)?;
    let tz = zone_of(&traits, cfg);
    let mut next = traits
        .get("birthday")
        .and_then(Value::as_str)
        .and_then(|b| clock::next_birthday(b, &tz, local_minutes, from_ms).map(|n| (b, n)));
    // A year already sent or skipped: the one after.
    if let Some((b, (year, at))) = next {
        let done = conn
            .query_opt(
                "SELECT 1 FROM sends WHERE flow_id = $1 AND profile_id = $2 AND occurrence = $3 AND status <> 'due'",
                &[P::Text(flow), P::Int(profile.0), P::Text(&format!("b{year}"))],
            )?
            .is_some();
        if done {
            next = clock::next_birthday(b, &tz, local_minutes, at + DAY_MS).map(|n| (b, n));
        }
    }
    let occurrence = next.map(|(_, (y, _))| format!("b{y}"));
    conn.exec(
        "DELETE FROM sends WHERE flow_id = $1 AND profile_id = $2 AND status = 'due' AND occurrence <> $3",
        &[
            P::Text(flow),
            P::Int(profile.0),
            P::Text(occurrence.as_deref().unwrap_or("")),
        ],
    )?;
    if let (Some(occ), Some((_, (_, at)))) = (occurrence, next) {
        insert_due(conn, flow, profile, &occ, at, at, now_ms)?;
    }
    Ok(())
}

/// An order (`event` of an absence trigger, id `id` at `ts`) starts a new
/// absence: the one waiting before it ends, and a send is due `for_ms`
/// after it unless a later order already started another (whatever became
/// of that one). Order-independent, so the look-back over old orders and
/// the following of new ones may meet.
fn absence_begins(
    conn: &mut dyn Conn,
    flow: &str,
    profile: ProfileId,
    id: i64,
    ts: i64,
    for_ms: i64,
    now_ms: i64,
) -> Result<u64> {
    conn.exec(
        "DELETE FROM sends WHERE flow_id = $1 AND profile_id = $2
         AND status = 'due' AND since_ms <= $3",
        &[P::Text(flow), P::Int(profile.0), P::Int(ts)],
    )?;
    let later = conn
        .query_opt(
            "SELECT 1 FROM sends WHERE flow_id = $1 AND profile_id = $2 AND since_ms > $3",
            &[P::Text(flow), P::Int(profile.0), P::Int(ts)],
        )?
        .is_some();
    if later {
        return Ok(0);
    }
    insert_due(
        conn,
        flow,
        profile,
        &format!("a{id}"),
        ts + for_ms,
        ts,
        now_ms,
    )
}

/// What one pass made due.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Followed {
    pub made_due: u64,
    /// More is waiting: run again at once.
    pub more: bool,
}

/// One pass: segment entries and exits, events, birthdays to backfill,
/// schedules and campaigns that fire. Run in a writer transaction.
pub fn follow(
    conn: &mut dyn Conn,
    vault: &Vault,
    cfg: &SendConfig,
    now_ms: i64,
) -> Result<Followed> {
    let all: Vec<FlowRecord> = flows(conn)?
        .into_iter()
        .filter(|f| f.status == "active" || f.status == "scheduled")
        .collect();
    let mut out = Followed::default();
    let mut tables = cfg.cursors.0.lock().unwrap_or_else(|e| e.into_inner());
    let followed = follow_segments(conn, &mut tables.segments, &all, now_ms, &mut out)
        .and_then(|()| follow_events(conn, vault, cfg, &mut tables.events, &all, now_ms, &mut out));
    if followed.is_err() {
        // The transaction is rolled back: start again from the stored cursors.
        *tables = Tables::default();
    }
    drop(tables);
    followed?;
    backfill(conn, vault, cfg, &all, now_ms, &mut out)?;
    fire(conn, cfg, &all, now_ms, &mut out)?;
    Ok(out)
}

fn follow_segments(
    conn: &mut dyn Conn,
    slot: &mut Option<Cursor>,
    all: &[FlowRecord],
    now_ms: i64,
    out: &mut Followed,
) -> Result<()> {
    let autos: Vec<(&str, &str, bool, i64)> = all
        .iter()
        .filter_map(|f| match &f.flow {
            Flow::Automation(a) => match &a.trigger {
                Trigger::SegmentEntered(s) => Some((a.id.as_str(), s.as_str(), true, f.cursor)),
                Trigger::SegmentLeft(s) => Some((a.id.as_str(), s.as_str(), false, f.cursor)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let Some(min) = autos.iter().map(|a| a.3).min() else {
        return Ok(());
    };
    let cur = cursor_at(slot, conn, min);
    let (rows, full) = cur.poll(
        conn,
        "SELECT id, segment_id, profile_id, entered, at_ms FROM segment_history",
        PAGE,
        // The grace is wall-clock time, whatever time the pass is for.
        crate::now_ms(),
    )?;
    let last = cur.floor();
    out.more |= full;
    for r in &rows {
        let (id, seg, profile, entered, at) =
            (r.int(0)?, r.text(1)?, r.int(2)?, r.int(3)? != 0, r.int(4)?);
        for &(flow, s, wants_entry, cursor) in &autos {
            if id > cursor && s == seg && wants_entry == entered {
                out.made_due += insert_due(
                    conn,
                    flow,
                    ProfileId(profile),
                    &format!("h{id}"),
                    at,
                    at,
                    now_ms,
                )?;
            }
        }
    }
    if last > min {
        for &(flow, ..) in &autos {
            set_cursor(conn, flow, last)?;
        }
    }
    Ok(())
}

fn follow_events(
    conn: &mut dyn Conn,
    vault: &Vault,
    cfg: &SendConfig,
    slot: &mut Option<Cursor>,
    all: &[FlowRecord],
    now_ms: i64,
    out: &mut Followed,
) -> Result<()> {
    let autos: Vec<(&str, &Trigger, i64)> = all
        .iter()
        .filter_map(|f| match &f.flow {
            Flow::Automation(a) => match &a.trigger {
                Trigger::Event { .. } | Trigger::Absence { .. } | Trigger::Birthday { .. } => {
                    Some((a.id.as_str(), &a.trigger, f.cursor))
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    let Some(min) = autos.iter().map(|a| a.2).min() else {
        return Ok(());
    };
    let names: BTreeSet<&str> = autos
        .iter()
        .filter_map(|a| match a.1 {
            Trigger::Event { event, .. } | Trigger::Absence { event, .. } => Some(event.as_str()),
            _ => None,
        })
        .collect();
    let birthdays = autos
        .iter()
        .any(|a| matches!(a.1, Trigger::Birthday { .. }));
    let cur = cursor_at(slot, conn, min);
    let (rows, full) = cur.poll(
        conn,
        "SELECT id, profile_id, key_owner, kind, ts_ms, body FROM events",
        PAGE,
        // The grace is wall-clock time, whatever time the pass is for.
        crate::now_ms(),
    )?;
    let last = cur.floor();
    out.more |= full;
    for r in &rows {
        let (id, profile, owner, kind, ts) =
            (r.int(0)?, r.int(1)?, r.int(2)?, r.text(3)?, r.int(4)?);
        if kind == "track" && !names.is_empty() {
            let Some(name) = event_name(conn, vault, ProfileId(owner), &r.sealed(5)?)? else {
                continue;
            };
            for &(flow, t, cursor) in &autos {
                if id <= cursor {
                    continue;
                }
                match t {
                    Trigger::Event { event, delay, .. } if *event == name => {
                        out.made_due += insert_due(
                            conn,
                            flow,
                            ProfileId(profile),
                            &format!("e{id}"),
                            ts + delay.ms(),
                            ts,
                            now_ms,
                        )?;
                    }
                    Trigger::Absence { event, for_ } if *event == name => {
                        out.made_due += absence_begins(
                            conn,
                            flow,
                            ProfileId(profile),
                            id,
                            ts,
                            for_.ms(),
                            now_ms,
                        )?;
                    }
                    _ => {}
                }
            }
        } else if kind == "identify" && birthdays {
            for &(flow, t, cursor) in &autos {
                if let Trigger::Birthday { local_minutes } = t
                    && id > cursor
                {
                    schedule_birthday(
                        conn,
                        vault,
                        cfg,
                        flow,
                        *local_minutes,
                        ProfileId(profile),
                        now_ms,
                        now_ms,
                    )?;
                }
            }
        }
    }
    if last > min {
        for &(flow, ..) in &autos {
            set_cursor(conn, flow, last)?;
        }
    }
    Ok(())
}

/// A new birthday automation goes over everyone once, and a new win-back
/// over the orders made before it existed, a page a pass.
fn backfill(
    conn: &mut dyn Conn,
    vault: &Vault,
    cfg: &SendConfig,
    all: &[FlowRecord],
    now_ms: i64,
    out: &mut Followed,
) -> Result<()> {
    for f in all {
        let (Flow::Automation(a), Some(from)) = (&f.flow, f.backfill) else {
            continue;
        };
        let next = match &a.trigger {
            Trigger::Birthday { local_minutes } => {
                let ids: Vec<i64> = conn
                    .query(
                        "SELECT id FROM profiles WHERE id > $1 AND merged_into IS NULL AND traits IS NOT NULL
                         ORDER BY id LIMIT $2",
                        &[P::Int(from), P::Int(PAGE)],
                    )?
                    .iter()
                    .map(|r| r.int(0))
                    .collect::<Result<_>>()?;
                for &p in &ids {
                    schedule_birthday(
                        conn,
                        vault,
                        cfg,
                        &a.id,
                        *local_minutes,
                        ProfileId(p),
                        now_ms,
                        now_ms,
                    )?;
                }
                ids.last().copied().filter(|_| ids.len() as i64 == PAGE)
            }
            Trigger::Absence { event, for_ } => {
                // Up to where following began; what came after is followed.
                let rows = conn.query(
                    "SELECT id, profile_id, key_owner, ts_ms, body FROM events
                     WHERE kind = 'track' AND id > $1 AND id <= $2 ORDER BY id LIMIT $3",
                    &[P::Int(from), P::Int(f.cursor), P::Int(PAGE)],
                )?;
                for r in &rows {
                    let (id, profile, owner, ts) = (r.int(0)?, r.int(1)?, r.int(2)?, r.int(3)?);
                    if event_name(conn, vault, ProfileId(owner), &r.sealed(4)?)?.as_deref()
                        == Some(event)
                    {
                        out.made_due += absence_begins(
                            conn,
                            &a.id,
                            ProfileId(profile),
                            id,
                            ts,
                            for_.ms(),
                            now_ms,
                        )?;
                    }
                }
                match rows.last() {
                    Some(r) if rows.len() as i64 == PAGE => Some(r.int(0)?),
                    _ => None,
                }
            }
            _ => None,
        };
        out.more |= next.is_some();
        conn.exec(
            "UPDATE automations SET backfill = $2 WHERE id = $1",
            &[P::Text(&a.id), next.into()],
        )?;
    }
    Ok(())
}

/// Schedules and campaigns whose time came: their segment's members now.
fn fire(
    conn: &mut dyn Conn,
    cfg: &SendConfig,
    all: &[FlowRecord],
    now_ms: i64,
    out: &mut Followed,
) -> Result<()> {
    for f in all {
        let Some(at) = f.next_fire_ms.filter(|t| *t <= now_ms) else {
            continue;
        };
        let (segment, next, status) = match &f.flow {
            Flow::Automation(a) => match &a.trigger {
                Trigger::Schedule { cron, segment } => {
                    let s = Schedule::parse(cron).map_err(Error::Corrupt)?;
                    // Firings missed while no node ran collapse into this one.
                    (
                        segment.as_str(),
                        s.next_after(&cfg.default_tz, now_ms),
                        "active",
                    )
                }
                _ => continue,
            },
            Flow::Campaign(c) => (c.segment.as_str(), None, "running"),
        };
        // Compare-and-set: of two nodes, one fans out this firing.
        let won = conn.exec(
            "UPDATE automations SET next_fire_ms = $3, status = $4 WHERE id = $1 AND next_fire_ms = $2",
            &[P::Text(f.flow.id()), P::Int(at), next.into(), P::Text(status)],
        )? == 1;
        if !won {
            continue;
        }
        let members: Vec<i64> = conn
            .query(
                "SELECT profile_id FROM segment_members WHERE segment_id = $1 ORDER BY profile_id",
                &[P::Text(segment)],
            )?
            .iter()
            .map(|r| r.int(0))
            .collect::<Result<_>>()?;
        for (i, p) in members.into_iter().enumerate() {
            let (occ, due) = match &f.flow {
                Flow::Campaign(c) => ("campaign".to_owned(), c.due_of(i as u64)),
                Flow::Automation(_) => (format!("c{at}"), at),
            };
            out.made_due += insert_due(conn, f.flow.id(), ProfileId(p), &occ, due, at, now_ms)?;
        }
    }
    Ok(())
}
