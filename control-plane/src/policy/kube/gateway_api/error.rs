//! Why a route is not in force: one variant per Gateway API condition reason, one type for
//! GAMMA (east-west) and north-south routes, as both share the match and filter translations
//! that return it.

/// Why an `HTTPRoute` or `GRPCRoute`, or one of its parents, is not in force: each variant is
/// one Gateway API condition reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// A field this mesh does not implement (`UnsupportedValue`).
    #[error("{field}: {why}")]
    Unsupported {
        /// The field, as in the resource (`spec.rules[0].filters[1]`).
        field: String,
        /// Why, for people.
        why: String,
    },
    /// The parent is no mesh Service, or no port of it; for a Gateway parent, the Gateway
    /// is not accepted or has no such listener (`NoMatchingParent`).
    #[error("{0}")]
    NoMatchingParent(String),
    /// No listener named lets the route attach (`NotAllowedByListeners`).
    #[error("{0}")]
    NotAllowedByListeners(String),
    /// No host in common with the listeners (`NoMatchingListenerHostname`).
    #[error("{0}")]
    NoMatchingListenerHostname(String),
    /// A backendRef names a Service that does not exist (`BackendNotFound`).
    #[error("{field}: {why}")]
    BackendNotFound {
        /// The field.
        field: String,
        /// Why.
        why: String,
    },
    /// A backendRef to another namespace without a ReferenceGrant (`RefNotPermitted`).
    #[error("{field}: {why}")]
    RefNotPermitted {
        /// The field.
        field: String,
        /// Why.
        why: String,
    },
    /// A backendRef of a kind other than a core Service (`InvalidKind`).
    #[error("{field}: {why}")]
    InvalidKind {
        /// The field.
        field: String,
        /// Why.
        why: String,
    },
}

impl RouteError {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            RouteError::Unsupported { .. } => "UnsupportedValue",
            RouteError::NoMatchingParent(_) => "NoMatchingParent",
            RouteError::NotAllowedByListeners(_) => "NotAllowedByListeners",
            RouteError::NoMatchingListenerHostname(_) => "NoMatchingListenerHostname",
            RouteError::BackendNotFound { .. } => "BackendNotFound",
            RouteError::RefNotPermitted { .. } => "RefNotPermitted",
            RouteError::InvalidKind { .. } => "InvalidKind",
        }
    }

    /// Whether the error is about a reference (then `ResolvedRefs` is False with this reason).
    pub fn is_ref(&self) -> bool {
        matches!(
            self,
            RouteError::BackendNotFound { .. }
                | RouteError::RefNotPermitted { .. }
                | RouteError::InvalidKind { .. }
        )
    }

    /// An `UnsupportedValue` refusal of `field`.
    pub fn unsupported(field: impl Into<String>, why: impl Into<String>) -> Self {
        RouteError::Unsupported {
            field: field.into(),
            why: why.into(),
        }
    }
}
