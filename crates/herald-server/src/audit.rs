//! Audit events: what was done to keys and tokens, and every read through a viewer token,
//! recorded as ordinary Herald events of type `herald.audit.*` (source `/herald/audit`,
//! `private` without readers, so only admins read them; nothing can edit or delete events).
//!
//! It exists so that the audit trail is queried, streamed and kept like any other events,
//! and so that recording one is a single call from the handlers.

use crate::auth::Caller;
use crate::AppState;

/// Appends one audit event. A failure is logged and counted, not returned: the action it
/// describes has already happened.
pub async fn record(st: &AppState, ty: &str, caller: &Caller, data: serde_json::Value) {
    let actor = match (&caller.key, &caller.viewer) {
        (Some(k), _) => format!("key:{}", k.id),
        (None, Some(v)) => format!("viewer:{}", v.jti),
        (None, None) => "local".to_owned(),
    };
    let event = serde_json::json!({
        "type": ty,
        "source": "/herald/audit",
        "visibility": "private",
        "severity": "notice",
        "actor": actor,
        "data": data,
    });
    let prepared = {
        let now = crate::query::now_micros();
        let now_text = herald_core::event::now_text(now);
        let mut new_id = || uuid::Uuid::now_v7().to_string();
        let mut ctx = herald_core::event::PrepareCtx {
            limits: &st.limits,
            now_us: now,
            now_text: &now_text,
            require_specversion: false,
            default_visibility: None,
            type_visibility: None,
            new_id: &mut new_id,
        };
        herald_core::event::prepare_json(&event.to_string(), "", &mut ctx)
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(r) => {
            tracing::error!(reason = %r.reason, ty, "cannot build an audit event");
            st.metrics.audit_failed.inc();
            return;
        }
    };
    if let Err(e) = st.store.append(vec![prepared]).await {
        tracing::error!(error = %e, ty, "cannot record an audit event");
        st.metrics.audit_failed.inc();
    }
}
