//! Why a GAMMA route is not in force: one variant per Gateway API condition reason (its own
//! module, as both the translation and the match conversion return it).

/// Why a GAMMA route, or one of its parents, is not in force: each variant is one Gateway API
/// condition reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GammaError {
    /// A field this mesh does not implement (`UnsupportedValue`).
    #[error("{field}: {why}")]
    Unsupported {
        /// The field, as in the resource (`spec.rules[0].filters[1]`).
        field: String,
        /// Why, for people.
        why: String,
    },
    /// The parent is no mesh Service, or no port of it (`NoMatchingParent`).
    #[error("{0}")]
    NoMatchingParent(String),
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

impl GammaError {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            GammaError::Unsupported { .. } => "UnsupportedValue",
            GammaError::NoMatchingParent(_) => "NoMatchingParent",
            GammaError::BackendNotFound { .. } => "BackendNotFound",
            GammaError::RefNotPermitted { .. } => "RefNotPermitted",
            GammaError::InvalidKind { .. } => "InvalidKind",
        }
    }

    /// Whether the error is about a reference (then `ResolvedRefs` is False with this reason).
    pub fn is_ref(&self) -> bool {
        matches!(
            self,
            GammaError::BackendNotFound { .. }
                | GammaError::RefNotPermitted { .. }
                | GammaError::InvalidKind { .. }
        )
    }

    pub(super) fn unsupported(field: impl Into<String>, why: impl Into<String>) -> Self {
        GammaError::Unsupported {
            field: field.into(),
            why: why.into(),
        }
    }
}
