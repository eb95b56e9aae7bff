//! Use cases about access itself: staff accounts (made, given roles,
//! disabled, each change with its access-log record in the same
//! transaction), reading the access log, and the aggregates shown to
//! those who may see no person.
//!
//! Each function owns its transaction (a writer job, or a read on the
//! pool); the storage they use is `keys` and `access_log`. This module
//! must never return a password or a key's secret, and its aggregates
//! never name a person.

use crate::access_log::{self, AccessRecord, AccessView};
use crate::conn::{P, ProfileId};
use crate::keys::{self, User};
use crate::{Result, Services};

/// People by their recorded decision for one purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentCount {
    pub purpose: tarmo_core::consent::PurposeId,
    pub decision: String,
    pub people: i64,
}

/// Counts of the store, no person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    pub profiles: i64,
    pub events: i64,
    pub identifiers: i64,
    /// By purpose, then decision.
    pub consents: Vec<ConsentCount>,
}

/// The store's counts and the people by decision per purpose.
pub fn stats(svc: &Services) -> Result<Stats> {
    let c = svc.store.counts()?;
    let consents = svc.read(|conn, _| {
        conn.query(
            "SELECT purpose_id, decision, count(*) FROM consent_state GROUP BY purpose_id, decision
             ORDER BY purpose_id, decision",
            &[] as &[P<'_>],
        )?
        .iter()
        .map(|r| {
            Ok(ConsentCount {
                purpose: crate::consent::purpose_id(&r.text(0)?)?,
                decision: r.text(1)?,
                people: r.int(2)?,
            })
        })
        .collect::<Result<Vec<_>>>()
    })?;
    Ok(Stats {
        profiles: c.profiles,
        events: c.events,
        identifiers: c.identifiers,
        consents,
    })
}

/// The access log, newest first: of one person (who read their data) or,
/// without one, the newest records.
pub fn audit(svc: &Services, profile: Option<ProfileId>, limit: i64) -> Result<Vec<AccessView>> {
    svc.read(|conn, _| match profile {
        Some(p) => access_log::for_profile(conn, p, limit),
        None => access_log::recent(conn, limit),
    })
}

/// Every staff account (never a password).
pub fn users(svc: &Services) -> Result<Vec<User>> {
    svc.read(|conn, _| keys::users(conn))
}

/// Make a staff account with `roles` and no purpose binding, with the
/// record of the change, in one writer transaction. Its id.
pub fn create_user(
    svc: &Services,
    name: String,
    password: String,
    roles: Vec<String>,
    record: AccessRecord,
) -> Result<i64> {
    svc.write(move |ctx| {
        let id = keys::create_user(
            ctx.conn,
            ctx.vault,
            &name,
            &password,
            &roles,
            &[],
            ctx.now_ms,
        )?;
        access_log::append(ctx.conn, ctx.vault, &[record])?;
        Ok(id)
    })
}

/// Give an active staff account other roles (it keeps the purposes it is
/// bound to), with the record of the change. False when there is no such
/// active account.
pub fn set_roles(
    svc: &Services,
    id: i64,
    roles: Vec<String>,
    record: AccessRecord,
) -> Result<bool> {
    svc.write(move |ctx| {
        let Some(u) = keys::users(ctx.conn)?
            .into_iter()
            .find(|u| u.id == id && u.disabled_at.is_none())
        else {
            return Ok(false);
        };
        if !keys::set_user_roles(ctx.conn, id, &roles, &u.purposes)? {
            return Ok(false);
        }
        access_log::append(ctx.conn, ctx.vault, &[record])?;
        Ok(true)
    })
}

/// Disable a staff account, ending its sessions, with the record of the
/// change. False when there is no such active account.
pub fn disable_user(svc: &Services, id: i64, record: AccessRecord) -> Result<bool> {
    svc.write(move |ctx| {
        if !keys::disable_user(ctx.conn, id, ctx.now_ms)? {
            return Ok(false);
        }
        access_log::append(ctx.conn, ctx.vault, &[record])?;
        Ok(true)
    })
}

/// A fresh random token (32 hex digits), e.g. to tie a sign-in form to
/// the browser that asked for it.
pub fn random_token(svc: &Services) -> Result<String> {
    svc.store.vault().random::<16>().map(hex::encode)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::writer::WriterConfig;

    fn record() -> AccessRecord {
        AccessRecord {
            at_ms: crate::now_ms(),
            key_id: crate::conn::KeyId(1),
            user_id: None,
            roles: vec!["admin".into()],
            purposes: Vec::new(),
            route: "/console/users".into(),
            action: "users",
            profiles: Vec::new(),
            count: 1,
        }
    }

    #[test]
    fn each_change_to_an_account_is_recorded_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let backend = crate::Backend::open(dir.path(), None).unwrap();
        let master = crate::vault::MasterKey::generate().unwrap();
        let store = Arc::new(crate::Store::open(backend, &master, 1000).unwrap());
        let (writer, join) = store.start_writer(WriterConfig::default()).unwrap();
        let svc = Services::new(store, writer);

        let id = create_user(
            &svc,
            "ada".into(),
            "a long enough password".into(),
            vec!["support".into()],
            record(),
        )
        .unwrap();
        let short = create_user(&svc, "bob".into(), "short".into(), vec![], record());
        assert!(short.is_err(), "a short password is refused");
        assert!(set_roles(&svc, id, vec!["dpo".into()], record()).unwrap());
        assert!(!set_roles(&svc, id + 1, vec!["dpo".into()], record()).unwrap());
        let u = users(&svc).unwrap();
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].roles, ["dpo"]);
        assert!(disable_user(&svc, id, record()).unwrap());
        assert!(!disable_user(&svc, id, record()).unwrap());
        assert!(!set_roles(&svc, id, vec!["admin".into()], record()).unwrap());

        // Made, given roles, disabled: three records; nothing for what failed.
        let log = audit(&svc, None, 100).unwrap();
        assert_eq!(log.len(), 3);
        assert!(log.iter().all(|r| r.action == "users" && r.count == 1));

        let st = stats(&svc).unwrap();
        assert_eq!((st.profiles, st.events, st.identifiers), (0, 0, 0));
        assert_eq!(random_token(&svc).unwrap().len(), 32);
        drop(svc);
        join.join().unwrap();
    }
}
