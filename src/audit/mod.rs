//! The audit trail (SPEC §6): every modification recorded, durably and tamper-evidently, before
//! the upstream sees it.
