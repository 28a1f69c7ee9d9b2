//! One attribute of a span as it arrives, borrowed from its request: what
//! the decoders and the stage rules read. Neither depends on the other
//! through it.

/// An attribute's value, as far as paytrace reads it: strings, and integers
/// (some SDKs send transaction ids as numbers). Other values are never
/// decoded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AttrValue<'a> {
    /// `string_value`, not yet checked to be UTF-8 (it is only when kept).
    Str(&'a [u8]),
    /// `int_value`.
    Int(i64),
    /// Any other value, or none.
    Other,
}

/// One attribute of a span, borrowed from the request it came in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Attr<'a> {
    /// The key, as bytes: compared with known keys, never kept.
    pub key: &'a [u8],
    /// The value.
    pub value: AttrValue<'a>,
}

impl<'a> Attr<'a> {
    /// The string value, if the value is a string.
    pub fn str_value(&self) -> Option<&'a [u8]> {
        match self.value {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn str_value_reads_a_string_attribute() {
        use crate::attribute::{Attr, AttrValue};
        let attr = Attr {
            key: b"http.route",
            value: AttrValue::Str(b"/pay"),
        };
        assert_eq!(attr.str_value(), Some(&b"/pay"[..]));
    }
}
