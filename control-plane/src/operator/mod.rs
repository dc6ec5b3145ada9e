//! The operators' side: the HTTP API ([`api`], bearer token: [`auth`]), validate, apply and
//! rollback ([`ops`]), every accepted version's files and the audit log ([`history`]), and the
//! API's client ([`client`]: what `weftctl`'s operator commands run) with its text
//! ([`tables`]), and the API's join tokens, denied serials and audit records ([`state_api`]).

pub mod api;
pub mod auth;
pub mod client;
pub mod history;
mod http;
pub mod ops;
pub mod state_api;
mod summary;
pub mod tables;
