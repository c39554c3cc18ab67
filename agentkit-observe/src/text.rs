//! [`Text`]: a short string copied without allocating.

/// Text handed from the request path to the telemetry thread: request ids, tenants, session
/// and tool call ids. Up to [`INLINE`] bytes are copied in place; longer text is boxed. Memory
/// allocated on one thread and freed on another costs both threads a lock in the allocator
/// (glibc's arenas), which showed in the profile of every run before this.
#[derive(Clone)]
pub(crate) enum Text {
    Inline { len: u8, bytes: [u8; INLINE] },
    Boxed(Box<str>),
}

/// The longest text kept in place.
pub(crate) const INLINE: usize = 46;

impl Text {
    pub(crate) fn new(text: &str) -> Self {
        match u8::try_from(text.len()) {
            Ok(len) if text.len() <= INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..text.len()].copy_from_slice(text.as_bytes());
                Text::Inline { len, bytes }
            }
            _ => Text::Boxed(text.into()),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Copied from a `str` whole, so always UTF-8.
            Text::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Text::Boxed(text) => text,
        }
    }
}

impl From<Text> for opentelemetry::Value {
    fn from(text: Text) -> Self {
        match text {
            Text::Inline { .. } => text.as_str().to_owned().into(),
            Text::Boxed(text) => String::from(text).into(),
        }
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_stays_in_place_and_long_text_is_boxed_both_intact() {
        for text in ["", "req-1", "é".repeat(23).as_str(), &"x".repeat(INLINE)] {
            let copied = Text::new(text);
            assert!(matches!(copied, Text::Inline { .. }), "{text:?}");
            assert_eq!(copied.as_str(), text);
        }
        for text in ["x".repeat(INLINE + 1), "ü".repeat(200)] {
            let copied = Text::new(&text);
            assert!(matches!(copied, Text::Boxed(_)));
            assert_eq!(copied.as_str(), text);
        }
    }
}
