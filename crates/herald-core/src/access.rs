//! Who may read which event: the caller's [`Access`] and the rule that decides, in memory,
//! for the live stream; the store compiles the same rule into SQL for every other read path.
//!
//! It exists so that the rule is written once. An event is readable when:
//!
//! - the caller is an admin; or
//! - it is `public`; or
//! - it is `internal` and the caller is authenticated and, when the event has a tenant, holds
//!   `tenant:<that tenant>`; or
//! - it is `private` and one of its `readers` is one of the caller's principals (a private
//!   event without readers is for admins only);
//!
//! and, for a key restricted to some tenants, the event belongs to one of them; for a viewer
//! token restricted to a subject, the event is about it.

use crate::event::PreparedEvent;
use herald_wire::Visibility;

/// What a caller may read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Access {
    /// Reads everything (admin keys, or a server without authentication).
    pub admin: bool,
    /// Holds a valid key (anonymous callers only see public events).
    pub authenticated: bool,
    /// `user:…`, `group:…`, `tenant:…`.
    pub principals: Vec<String>,
    /// When set, only events of these tenants (a read key's restriction).
    pub only_tenants: Option<Vec<String>>,
    /// When set, only events with this subject (a viewer token for one resource).
    pub only_subject: Option<String>,
}

impl Access {
    /// Everything: admins, and every caller when authentication is off.
    pub fn all() -> Access {
        Access {
            admin: true,
            authenticated: true,
            ..Access::default()
        }
    }

    /// Anonymous readers of the public feed.
    pub fn public_only() -> Access {
        Access::default()
    }

    /// The tenants the caller belongs to (its `tenant:` principals).
    pub fn tenants(&self) -> impl Iterator<Item = &str> {
        self.principals
            .iter()
            .filter_map(|p| p.strip_prefix("tenant:"))
    }

    /// Whether the caller may read this event (the in-memory form of the store's clause).
    pub fn can_read(&self, ev: &PreparedEvent) -> bool {
        if let Some(only) = &self.only_tenants {
            match &ev.tenant {
                Some(t) if only.iter().any(|o| o == t) => {}
                _ => return false,
            }
        }
        if let Some(s) = &self.only_subject {
            if ev.subject.as_deref() != Some(s.as_str()) {
                return false;
            }
        }
        if self.admin {
            return true;
        }
        match ev.visibility {
            Visibility::Public => true,
            Visibility::Internal => {
                self.authenticated
                    && match &ev.tenant {
                        None => true,
                        Some(t) => self.tenants().any(|mine| mine == t),
                    }
            }
            Visibility::Private => ev
                .readers
                .iter()
                .any(|r| self.principals.iter().any(|p| p == r)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::test_event as ev;

    fn key(admin: bool, principals: &[&str], only: Option<&[&str]>) -> Access {
        Access {
            admin,
            authenticated: true,
            principals: principals.iter().map(|s| s.to_string()).collect(),
            only_tenants: only.map(|o| o.iter().map(|s| s.to_string()).collect()),
            only_subject: None,
        }
    }

    #[test]
    fn the_rule() {
        let public = ev(r#"{"type":"a","source":"/s","visibility":"public","tenant":"acme"}"#);
        let internal = ev(r#"{"type":"a","source":"/s","visibility":"internal","tenant":"acme"}"#);
        let internal_no_tenant = ev(r#"{"type":"a","source":"/s","visibility":"internal"}"#);
        let private = ev(
            r#"{"type":"a","source":"/s","visibility":"private","tenant":"acme","readers":["user:1","group:ops"]}"#,
        );
        let private_nobody = ev(r#"{"type":"a","source":"/s","visibility":"private"}"#);
        let anon = Access::public_only();
        let admin = Access::all();
        let acme = key(false, &["tenant:acme"], None);
        let beta = key(false, &["tenant:beta", "user:1"], None);
        let ops = key(false, &["group:ops"], None);
        let only_beta = key(true, &[], Some(&["beta"]));
        let cases: [(&Access, [bool; 5]); 6] = [
            (&anon, [true, false, false, false, false]),
            (&admin, [true, true, true, true, true]),
            (&acme, [true, true, true, false, false]),
            (&beta, [true, false, true, true, false]),
            (&ops, [true, false, true, true, false]),
            (&only_beta, [false, false, false, false, false]),
        ];
        for (who, want) in cases {
            let got = [
                who.can_read(&public),
                who.can_read(&internal),
                who.can_read(&internal_no_tenant),
                who.can_read(&private),
                who.can_read(&private_nobody),
            ];
            assert_eq!(got, want, "{who:?}");
        }
    }
}
