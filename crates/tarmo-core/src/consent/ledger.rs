//! The consent ledger's vocabulary and rules: what a person decided, how it
//! was recorded, how entries fold into the current state, and how each entry
//! is chained to the one before it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ConsentError;
use super::purpose::Channel;
use crate::ids::ProfileId;

/// What the person's choice (or its absence) is, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentDecision {
    Granted,
    Denied,
    Withdrawn,
    /// Asked for, awaiting the click in the confirmation message.
    PendingConfirmation,
    /// A grant that outlived the purpose's consent lifetime.
    Expired,
    /// An objection under Art. 21: stops direct marketing and processing on
    /// legitimate interests.
    Objected,
}

impl ConsentDecision {
    pub const ALL: [Self; 6] = [
        Self::Granted,
        Self::Denied,
        Self::Withdrawn,
        Self::PendingConfirmation,
        Self::Expired,
        Self::Objected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Granted => "granted",
            Self::Denied => "denied",
            Self::Withdrawn => "withdrawn",
            Self::PendingConfirmation => "pending_confirmation",
            Self::Expired => "expired",
            Self::Objected => "objected",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ConsentError> {
        Self::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| ConsentError::UnknownDecision(s.chars().take(40).collect()))
    }

    /// A no of any kind: the person does not want this.
    pub fn is_refusal(self) -> bool {
        matches!(self, Self::Denied | Self::Withdrawn | Self::Objected)
    }
}

/// How a decision reached the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    WebForm,
    DoubleOptInEmail,
    DoubleOptInSms,
    /// A list from a till system, a CRM or a third party, with provenance.
    Import,
    /// An IAB TCF v2 TC string from a CMP.
    Tcf,
    /// An IAB GPP string.
    Gpp,
    /// The browser's Global Privacy Control signal (`Sec-GPC: 1`).
    Gpc,
    /// RFC 8058 one-click unsubscribe, or the unsubscribe page.
    OneClickUnsubscribe,
    /// The person's own preference page.
    PreferenceCenter,
    /// Staff, acting on the customer's request.
    Staff,
    /// An application calling the API on the person's behalf.
    Api,
    /// Tarmo itself (a consent that reached the end of its lifetime).
    System,
}

impl Method {
    pub const ALL: [Self; 12] = [
        Self::WebForm,
        Self::DoubleOptInEmail,
        Self::DoubleOptInSms,
        Self::Import,
        Self::Tcf,
        Self::Gpp,
        Self::Gpc,
        Self::OneClickUnsubscribe,
        Self::PreferenceCenter,
        Self::Staff,
        Self::Api,
        Self::System,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::WebForm => "web_form",
            Self::DoubleOptInEmail => "double_opt_in_email",
            Self::DoubleOptInSms => "double_opt_in_sms",
            Self::Import => "import",
            Self::Tcf => "tcf",
            Self::Gpp => "gpp",
            Self::Gpc => "gpc",
            Self::OneClickUnsubscribe => "one_click_unsubscribe",
            Self::PreferenceCenter => "preference_center",
            Self::Staff => "staff",
            Self::Api => "api",
            Self::System => "system",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ConsentError> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| ConsentError::UnknownMethod(s.chars().take(40).collect()))
    }

    /// The person's own, explicit act, as opposed to a signal a browser or a
    /// CMP sent, a list someone imported, or Tarmo's own bookkeeping. Only an
    /// explicit act gives Art. 9 explicit consent, lifts an objection, or
    /// overrides an earlier Global Privacy Control opt-out.
    pub fn is_explicit(self) -> bool {
        !matches!(
            self,
            Self::Import | Self::Tcf | Self::Gpp | Self::Gpc | Self::System
        )
    }

    /// A string a consent management platform sent: anyone holding a public
    /// write key can send one, so it is a claim about the person, not their
    /// act.
    pub fn is_cmp_string(self) -> bool {
        matches!(self, Self::Tcf | Self::Gpp)
    }

    /// An act that proves it is the person's own: a link only they received
    /// (confirmation, unsubscribe, preference page), or staff acting on their
    /// request. A refusal made this way is not undone by a CMP string.
    pub fn is_proven_act(self) -> bool {
        matches!(
            self,
            Self::DoubleOptInEmail
                | Self::DoubleOptInSms
                | Self::OneClickUnsubscribe
                | Self::PreferenceCenter
                | Self::Staff
        )
    }
}

/// The current state of one person's consent for one purpose: the fold of
/// their ledger entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsentState {
    pub decision: ConsentDecision,
    pub method: Method,
    /// When the deciding entry took effect (ms since the epoch).
    pub at_ms: i64,
    /// The notice version (its sequence number within the purpose) the
    /// deciding entry was made under.
    pub notice_seq: u32,
    /// The ledger entry that decided the state.
    pub seq: i64,
    /// When a Global Privacy Control opt-out was last recorded for it.
    pub gpc_ms: Option<i64>,
    /// The channels of the purpose the person switched off while keeping
    /// the purpose (bits of [`Channel::bit`]); 0 for none.
    pub channels_off: u8,
}

impl ConsentState {
    /// Whether the person switched this channel off within the purpose.
    pub fn channel_off(&self, c: Channel) -> bool {
        self.channels_off & c.bit() != 0
    }
}

/// The facts of one entry that the fold needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryFacts {
    pub seq: i64,
    pub decision: ConsentDecision,
    pub method: Method,
    pub at_ms: i64,
    pub notice_seq: u32,
    /// The one channel of the purpose the entry is about; `None` for the
    /// purpose as a whole (every entry written before channels could be
    /// chosen).
    pub channel: Option<Channel>,
}

/// Fold one entry into the state. The rules:
/// - a refusal (denied, withdrawn, objected) always takes effect;
/// - a pending confirmation does not undo a standing grant (asking twice
///   must not switch anyone off);
/// - a grant that is not the person's explicit act (an import, a CMP string)
///   does not lift an objection or an earlier GPC opt-out;
/// - a CMP string's grant does not lift a refusal the person made by a
///   proven act (confirmation or preference page, unsubscribe, staff): a CMP
///   string can come from anyone holding the public write key;
/// - expiry replaces a grant only;
/// - an entry about one channel changes only whether that channel is
///   switched off, never the purpose's decision: a refusal switches it off,
///   a grant by the person's explicit act switches it back on; with no
///   record for the purpose it changes nothing (there is nothing to refine);
/// - the purpose's own entries keep the channels switched off as they are.
pub fn fold(state: Option<ConsentState>, e: &EntryFacts) -> Option<ConsentState> {
    if let Some(ch) = e.channel {
        let mut cur = state?;
        match e.decision {
            ConsentDecision::Denied | ConsentDecision::Withdrawn | ConsentDecision::Objected => {
                cur.channels_off |= ch.bit()
            }
            ConsentDecision::Granted if e.method.is_explicit() => cur.channels_off &= !ch.bit(),
            _ => {}
        }
        return Some(cur);
    }
    let gpc_ms = match (e.method, state.and_then(|s| s.gpc_ms)) {
        (Method::Gpc, prev) => Some(prev.map_or(e.at_ms, |p| p.max(e.at_ms))),
        (_, prev) => prev,
    };
    let next = ConsentState {
        decision: e.decision,
        method: e.method,
        at_ms: e.at_ms,
        notice_seq: e.notice_seq,
        seq: e.seq,
        gpc_ms,
        channels_off: state.map_or(0, |s| s.channels_off),
    };
    let Some(cur) = state else {
        return Some(next);
    };
    let keep = |mut s: ConsentState| {
        s.gpc_ms = gpc_ms;
        Some(s)
    };
    // A refusal the person made by a proven act stays the deciding entry
    // whatever CMP strings follow: were a CMP refusal to replace it, the
    // next CMP grant would lift it. (Every refusal stops the use alike.)
    if e.method.is_cmp_string() && cur.decision.is_refusal() && cur.method.is_proven_act() {
        return keep(cur);
    }
    match e.decision {
        ConsentDecision::Denied | ConsentDecision::Withdrawn | ConsentDecision::Objected => {
            Some(next)
        }
        ConsentDecision::PendingConfirmation if cur.decision == ConsentDecision::Granted => {
            keep(cur)
        }
        ConsentDecision::PendingConfirmation => Some(next),
        ConsentDecision::Granted => {
            let blocked = !e.method.is_explicit()
                && (cur.decision == ConsentDecision::Objected
                    || (cur.decision.is_refusal() && cur.method == Method::Gpc));
            if blocked { keep(cur) } else { Some(next) }
        }
        ConsentDecision::Expired if cur.decision == ConsentDecision::Granted => Some(next),
        ConsentDecision::Expired => keep(cur),
    }
}

/// Whether a Global Privacy Control signal should write an opt-out for a
/// purpose in this state: yes unless the person already refused, or made a
/// choice after an earlier GPC signal was recorded (their later explicit
/// choice stands).
pub fn gpc_applies(state: Option<&ConsentState>) -> bool {
    match state {
        None => true,
        Some(s) if s.gpc_ms.is_some() => false,
        Some(s) => !s.decision.is_refusal(),
    }
}

/// The chain's first `prev_hash`.
pub const GENESIS: [u8; 32] = [0; 32];

/// What one ledger entry commits to. The evidence is hashed sealed, so that
/// crypto-shredding a person leaves the chain verifiable.
#[derive(Debug, Clone, Copy)]
pub struct ChainFields<'a> {
    pub seq: i64,
    pub profile_id: ProfileId,
    pub key_owner: ProfileId,
    pub purpose: &'a str,
    pub decision: &'a str,
    pub method: &'a str,
    pub notice_version: &'a str,
    pub notice_seq: i64,
    pub at_ms: i64,
    pub recorded_ms: i64,
    pub source: &'a str,
    pub evidence: &'a [u8],
    /// The channel of an entry about one channel. `None` adds nothing to
    /// the hashed bytes, so entries written before channels existed hash as
    /// they always did.
    pub channel: Option<&'a str>,
}

/// The entry's hash: SHA-256 over the previous hash and every field, each
/// length-prefixed so that no two different entries hash the same.
pub fn chain_hash(prev: &[u8; 32], f: &ChainFields<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"tarmo consent ledger v1\0");
    h.update(prev);
    for n in [
        f.seq,
        f.profile_id.0,
        f.key_owner.0,
        f.notice_seq,
        f.at_ms,
        f.recorded_ms,
    ] {
        h.update(n.to_le_bytes());
    }
    for s in [
        f.purpose.as_bytes(),
        f.decision.as_bytes(),
        f.method.as_bytes(),
        f.notice_version.as_bytes(),
        f.source.as_bytes(),
        f.evidence,
    ] {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s);
    }
    if let Some(c) = f.channel {
        // A marker first, so that a channel's bytes can never read as the
        // continuation of the evidence.
        h.update(b"\0channel\0");
        h.update((c.len() as u64).to_le_bytes());
        h.update(c.as_bytes());
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConsentDecision::*;

    fn e(seq: i64, decision: ConsentDecision, method: Method) -> EntryFacts {
        EntryFacts {
            seq,
            decision,
            method,
            at_ms: seq * 1000,
            notice_seq: 1,
            channel: None,
        }
    }

    fn ch(seq: i64, decision: ConsentDecision, method: Method, c: Channel) -> EntryFacts {
        EntryFacts {
            channel: Some(c),
            ..e(seq, decision, method)
        }
    }

    fn run(entries: &[EntryFacts]) -> Option<ConsentState> {
        entries.iter().fold(None, fold)
    }

    #[test]
    fn names_round_trip() {
        for d in ConsentDecision::ALL {
            assert_eq!(ConsentDecision::parse(d.as_str()).unwrap(), d);
        }
        for m in Method::ALL {
            assert_eq!(Method::parse(m.as_str()).unwrap(), m);
        }
        assert!(Method::parse("carrier_pigeon").is_err());
    }

    #[test]
    fn a_second_request_does_not_switch_a_grant_off() {
        let s = run(&[
            e(1, Granted, Method::DoubleOptInEmail),
            e(2, PendingConfirmation, Method::DoubleOptInEmail),
        ])
        .unwrap();
        assert_eq!((s.decision, s.seq), (Granted, 1));
    }

    #[test]
    fn withdrawal_always_wins_and_a_new_grant_after_it_counts() {
        let s = run(&[
            e(1, Granted, Method::WebForm),
            e(2, Withdrawn, Method::OneClickUnsubscribe),
        ])
        .unwrap();
        assert_eq!(s.decision, Withdrawn);
        let s = run(&[
            e(1, Granted, Method::WebForm),
            e(2, Withdrawn, Method::OneClickUnsubscribe),
            e(3, Granted, Method::Import),
        ])
        .unwrap();
        assert_eq!(
            s.decision, Granted,
            "an import may renew a plain withdrawal"
        );
    }

    #[test]
    fn an_objection_is_lifted_only_by_the_persons_own_act() {
        let s = run(&[e(1, Objected, Method::Staff), e(2, Granted, Method::Tcf)]).unwrap();
        assert_eq!(s.decision, Objected);
        let s = run(&[
            e(1, Objected, Method::Staff),
            e(2, Granted, Method::WebForm),
        ])
        .unwrap();
        assert_eq!(s.decision, Granted);
    }

    #[test]
    fn a_cmp_string_never_lifts_a_refusal_made_by_a_proven_act() {
        for strong in Method::ALL.into_iter().filter(|m| m.is_proven_act()) {
            for refusal in [Denied, Withdrawn, Objected] {
                for cmp in [Method::Tcf, Method::Gpp] {
                    let s = run(&[
                        e(1, Granted, Method::WebForm),
                        e(2, refusal, strong),
                        e(3, Granted, cmp),
                    ])
                    .unwrap();
                    assert_eq!((s.decision, s.seq), (refusal, 2), "{strong:?} {cmp:?}");
                }
            }
        }
        // A CMP denial first does not open the way for a CMP grant after it.
        let s = run(&[
            e(1, Withdrawn, Method::OneClickUnsubscribe),
            e(2, Denied, Method::Tcf),
            e(3, Granted, Method::Tcf),
        ])
        .unwrap();
        assert_eq!((s.decision, s.seq), (Withdrawn, 1));
        // A CMP string may still deny, and may lift a refusal it made itself.
        let s = run(&[
            e(1, Granted, Method::DoubleOptInEmail),
            e(2, Denied, Method::Tcf),
        ])
        .unwrap();
        assert_eq!(s.decision, Denied);
        let s = run(&[e(1, Denied, Method::Tcf), e(2, Granted, Method::Gpp)]).unwrap();
        assert_eq!(s.decision, Granted);
        // The person's own later act still lifts it.
        let s = run(&[
            e(1, Withdrawn, Method::OneClickUnsubscribe),
            e(2, Granted, Method::Tcf),
            e(3, Granted, Method::DoubleOptInEmail),
        ])
        .unwrap();
        assert_eq!(s.decision, Granted);
    }

    proptest::proptest! {
        /// Whatever came before, once a proven act refused, no sequence of
        /// CMP strings afterwards leaves the state granted.
        #[test]
        fn cmp_strings_after_a_proven_refusal_never_grant(
            before in proptest::collection::vec((0usize..6, 0usize..12), 0..8),
            refusal in 0usize..3,
            strong in 0usize..5,
            after in proptest::collection::vec((0usize..6, proptest::bool::ANY), 0..8),
        ) {
            let strong_methods: Vec<Method> =
                Method::ALL.into_iter().filter(|m| m.is_proven_act()).collect();
            let mut entries: Vec<EntryFacts> = before
                .iter()
                .enumerate()
                .map(|(i, &(d, m))| e(i as i64 + 1, ConsentDecision::ALL[d], Method::ALL[m]))
                .collect();
            let n = entries.len() as i64;
            entries.push(e(n + 1, [Denied, Withdrawn, Objected][refusal], strong_methods[strong]));
            for (i, &(d, tcf)) in after.iter().enumerate() {
                let m = if tcf { Method::Tcf } else { Method::Gpp };
                entries.push(e(n + 2 + i as i64, ConsentDecision::ALL[d], m));
            }
            let s = run(&entries).unwrap();
            proptest::prop_assert_ne!(s.decision, Granted);
        }
    }

    #[test]
    fn gpc_opts_out_once_and_a_later_explicit_choice_stands() {
        let granted = run(&[e(1, Granted, Method::WebForm)]);
        assert!(gpc_applies(granted.as_ref()));
        let after_gpc = fold(granted, &e(2, Denied, Method::Gpc));
        assert_eq!(after_gpc.unwrap().decision, Denied);
        assert!(!gpc_applies(after_gpc.as_ref()));
        // A CMP string does not override the GPC opt-out; the person does.
        let tcf = fold(after_gpc, &e(3, Granted, Method::Tcf));
        assert_eq!(tcf.unwrap().decision, Denied);
        let explicit = fold(tcf, &e(4, Granted, Method::PreferenceCenter)).unwrap();
        assert_eq!(explicit.decision, Granted);
        assert_eq!(explicit.gpc_ms, Some(2000));
        assert!(
            !gpc_applies(Some(&explicit)),
            "the explicit choice made after GPC stands"
        );
        assert!(gpc_applies(None));
        assert!(!gpc_applies(
            run(&[e(1, Withdrawn, Method::WebForm)]).as_ref()
        ));
    }

    #[test]
    fn expiry_replaces_only_a_grant() {
        let s = run(&[
            e(1, Granted, Method::WebForm),
            e(2, Expired, Method::System),
        ])
        .unwrap();
        assert_eq!(s.decision, Expired);
        let s = run(&[
            e(1, Withdrawn, Method::WebForm),
            e(2, Expired, Method::System),
        ])
        .unwrap();
        assert_eq!(s.decision, Withdrawn);
    }

    #[test]
    fn an_entry_without_a_channel_hashes_as_before_channels_existed() {
        // Pinned from the hash as written before entries could name a
        // channel (SHA-256 computed independently): every ledger written
        // since the first release must keep verifying.
        let f = ChainFields {
            seq: 1,
            profile_id: ProfileId(2),
            key_owner: ProfileId(2),
            purpose: "p",
            decision: "granted",
            method: "api",
            notice_version: "v",
            notice_seq: 1,
            at_ms: 5,
            recorded_ms: 5,
            source: "s",
            evidence: b"e",
            channel: None,
        };
        assert_eq!(
            hex::encode(chain_hash(&GENESIS, &f)),
            "cc63bf0a2281f2b4d9f4ca5bb87e884d852838b9204f444edb1aee05990aa596"
        );
    }

    #[test]
    fn a_channel_is_switched_off_and_on_within_a_standing_purpose() {
        let granted = e(1, Granted, Method::DoubleOptInEmail);
        let off = run(&[
            granted,
            ch(2, Withdrawn, Method::PreferenceCenter, Channel::Sms),
        ])
        .unwrap();
        assert_eq!((off.decision, off.seq), (Granted, 1), "the purpose stands");
        assert!(off.channel_off(Channel::Sms));
        assert!(!off.channel_off(Channel::Email));
        let on = fold(
            Some(off),
            &ch(3, Granted, Method::PreferenceCenter, Channel::Sms),
        )
        .unwrap();
        assert_eq!(on.channels_off, 0);
        assert_eq!((on.decision, on.seq), (Granted, 1));
    }

    #[test]
    fn the_purposes_own_entries_keep_a_channel_switched_off() {
        let s = run(&[
            e(1, Granted, Method::WebForm),
            ch(2, Withdrawn, Method::PreferenceCenter, Channel::Sms),
            e(3, Withdrawn, Method::OneClickUnsubscribe),
            e(4, Granted, Method::PreferenceCenter),
        ])
        .unwrap();
        assert_eq!((s.decision, s.seq), (Granted, 4));
        assert!(
            s.channel_off(Channel::Sms),
            "a new grant of the purpose does not undo a channel choice"
        );
    }

    #[test]
    fn only_the_persons_own_act_switches_a_channel_back_on() {
        let base = [
            e(1, Granted, Method::WebForm),
            ch(2, Denied, Method::Staff, Channel::Email),
        ];
        for weak in [
            Method::Import,
            Method::Tcf,
            Method::Gpp,
            Method::Gpc,
            Method::System,
        ] {
            let s = fold(run(&base), &ch(3, Granted, weak, Channel::Email)).unwrap();
            assert!(s.channel_off(Channel::Email), "{weak:?}");
        }
        // With no record for the purpose there is nothing to refine.
        assert_eq!(run(&[ch(1, Withdrawn, Method::Api, Channel::Sms)]), None);
        // A pending confirmation or an expiry about a channel changes nothing.
        let s = run(&base).unwrap();
        for d in [PendingConfirmation, Expired] {
            assert_eq!(
                fold(Some(s), &ch(3, d, Method::Api, Channel::Email)),
                Some(s)
            );
        }
    }

    proptest::proptest! {
        /// Entries about channels never change the purpose's decision, and
        /// each channel is off exactly when its last entry by an explicit
        /// act (after the purpose's first record) was a refusal.
        #[test]
        fn channel_entries_refine_without_deciding(
            ops in proptest::collection::vec(
                (0usize..6, 0usize..12, proptest::option::of(0usize..7)),
                1..24,
            ),
        ) {
            let entries: Vec<EntryFacts> = ops
                .iter()
                .enumerate()
                .map(|(i, &(d, m, c))| EntryFacts {
                    channel: c.map(|c| Channel::ALL[c]),
                    ..e(i as i64 + 1, ConsentDecision::ALL[d], Method::ALL[m])
                })
                .collect();
            let with = run(&entries);
            let purpose_only: Vec<EntryFacts> =
                entries.iter().copied().filter(|x| x.channel.is_none()).collect();
            let without = run(&purpose_only);
            proptest::prop_assert_eq!(
                with.map(|s| (s.decision, s.method, s.seq, s.at_ms, s.gpc_ms)),
                without.map(|s| (s.decision, s.method, s.seq, s.at_ms, s.gpc_ms))
            );
            let Some(s) = with else { return Ok(()) };
            let first = entries.iter().position(|x| x.channel.is_none()).unwrap();
            for c in Channel::ALL {
                let last = entries[first..]
                    .iter()
                    .rev()
                    .find(|x| {
                        x.channel == Some(c)
                            && (x.decision.is_refusal()
                                || (x.decision == Granted && x.method.is_explicit()))
                    });
                proptest::prop_assert_eq!(
                    s.channel_off(c),
                    last.is_some_and(|x| x.decision.is_refusal()),
                    "{:?}", c
                );
            }
        }
    }

    #[test]
    fn the_chain_hash_covers_every_field() {
        let base = ChainFields {
            seq: 1,
            profile_id: ProfileId(2),
            key_owner: ProfileId(2),
            purpose: "p",
            decision: "granted",
            method: "api",
            notice_version: "v",
            notice_seq: 1,
            at_ms: 5,
            recorded_ms: 5,
            source: "s",
            evidence: b"e",
            channel: None,
        };
        let h = chain_hash(&GENESIS, &base);
        let variants = [
            ChainFields { seq: 9, ..base },
            ChainFields {
                profile_id: ProfileId(9),
                ..base
            },
            ChainFields {
                key_owner: ProfileId(9),
                ..base
            },
            ChainFields {
                purpose: "q",
                ..base
            },
            ChainFields {
                decision: "denied",
                ..base
            },
            ChainFields {
                method: "staff",
                ..base
            },
            ChainFields {
                notice_version: "w",
                ..base
            },
            ChainFields {
                notice_seq: 2,
                ..base
            },
            ChainFields { at_ms: 6, ..base },
            ChainFields {
                recorded_ms: 6,
                ..base
            },
            ChainFields {
                source: "t",
                ..base
            },
            ChainFields {
                evidence: b"f",
                ..base
            },
            ChainFields {
                channel: Some("sms"),
                ..base
            },
            ChainFields {
                channel: Some(""),
                ..base
            },
            // Moving a byte between adjacent fields must change the hash.
            ChainFields {
                purpose: "pg",
                decision: "ranted",
                ..base
            },
        ];
        for v in variants {
            assert_ne!(chain_hash(&GENESIS, &v), h, "{v:?}");
        }
        assert_ne!(chain_hash(&[1; 32], &base), h);
    }
}
