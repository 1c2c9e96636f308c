//! [`Ignored`]: a value M3 defines that has no effect here, accepted so that M3's files load.

/// A config value M3 defines that has no effect here: accepted, whatever its shape, so M3's files
/// load, and documented as such on the field that holds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ignored;

impl<'de> serde::Deserialize<'de> for Ignored {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Ignored)
    }
}
