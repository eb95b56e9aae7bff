//! Purposes, legal bases, the consent ledger and the policy decision.
