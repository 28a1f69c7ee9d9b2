//! Redaction of personal data before it reaches a span.
//!
//! Span attributes leave the process and land in tracing back-ends that are
//! rarely cleared for cardholder or personal data. Every user-supplied value
//! paytrace puts on a span (URL paths, baggage values, stage attributes)
//! passes through [`redact`] first.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex_lite::{Captures, Regex};

/// The mask of an e-mail address.
pub const EMAIL_MASK: &str = "[email]";
/// The mask of a phone number.
pub const PHONE_MASK: &str = "[phone]";

// 13 to 19 digits, optionally grouped by single spaces or dashes.
static CARD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b(?:\d[ -]?){12,18}\d\b").expect("card pattern is valid"));
static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
        .expect("e-mail pattern is valid")
});
// International (+CC …), mainland China mobile (1[3-9] and 9 digits), and
// North American numbers written with separators.
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"\+\d{1,3}[ -]?\d(?:[ -]?\d){6,13}\b|\b1[3-9]\d{9}\b|\(?\b\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b",
    )
    .expect("phone pattern is valid")
});

/// Whether the digits of `number` pass the Luhn checksum (ISO/IEC 7812).
///
/// ```
/// assert!(paytrace::redact::luhn_valid("4111 1111 1111 1111"));
/// assert!(!paytrace::redact::luhn_valid("4111 1111 1111 1112"));
/// ```
pub fn luhn_valid(number: &str) -> bool {
    let digits: Vec<u32> = number.chars().filter_map(|c| c.to_digit(10)).collect();
    if digits.len() < 2 {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Masks card numbers that pass the Luhn check (all digits but the last four
/// become `*`, separators stay), phone numbers (`[phone]`) and e-mail
/// addresses (`[email]`). Everything else, including digit runs that fail the
/// Luhn check, is left alone.
///
/// ```
/// use paytrace::redact::redact;
///
/// assert_eq!(redact("card 4111-1111-1111-1111"), "card ****-****-****-1111");
/// assert_eq!(redact("order 4111111111111112"), "order 4111111111111112");
/// assert_eq!(redact("mail bob@example.com"), "mail [email]");
/// assert_eq!(redact("call +86 138 0013 8000"), "call [phone]");
/// assert_eq!(redact("/orders/42"), "/orders/42");
/// ```
pub fn redact(value: &str) -> Cow<'_, str> {
    // Fast path: every pattern needs an `@` or at least seven digits.
    let digits = value.bytes().filter(u8::is_ascii_digit).count();
    let has_at = value.contains('@');
    if digits < 7 && !has_at {
        return Cow::Borrowed(value);
    }
    let mut out = Cow::Borrowed(value);
    if has_at {
        out = replace(out, &EMAIL, |_| EMAIL_MASK.to_owned());
    }
    if digits >= 13 {
        out = replace(out, &CARD, |caps| {
            let number = &caps[0];
            if luhn_valid(number) {
                mask_card(number)
            } else {
                number.to_owned()
            }
        });
    }
    replace(out, &PHONE, |_| PHONE_MASK.to_owned())
}

fn replace<'a>(
    input: Cow<'a, str>,
    pattern: &Regex,
    with: impl Fn(&Captures<'_>) -> String,
) -> Cow<'a, str> {
    if !pattern.is_match(&input) {
        return input;
    }
    let replaced = pattern.replace_all(&input, |caps: &Captures<'_>| with(caps));
    Cow::Owned(replaced.into_owned())
}

fn mask_card(number: &str) -> String {
    let total = number.chars().filter(char::is_ascii_digit).count();
    let mut seen = 0;
    number
        .chars()
        .map(|c| {
            if c.is_ascii_digit() {
                seen += 1;
                if seen <= total - 4 { '*' } else { c }
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_valid_cards_are_masked_in_every_layout() {
        // Published test numbers of the major schemes, all Luhn-valid.
        for (input, expected) in [
            ("4111111111111111", "************1111"),
            ("5555 5555 5555 4444", "**** **** **** 4444"),
            ("3782-822463-10005", "****-******-*0005"),
            ("6222021234567890128", "***************0128"),
        ] {
            assert!(luhn_valid(input), "{input} should pass Luhn");
            assert_eq!(redact(input), expected, "{input}");
        }
    }

    #[test]
    fn luhn_invalid_digit_runs_are_left_alone() {
        for input in [
            "4111111111111112",
            "1234567812345678",
            "trace 0af7651916cd43dd8448eb211c80319c",
        ] {
            assert_eq!(redact(input), input, "{input}");
        }
    }

    #[test]
    fn card_inside_text_keeps_the_text() {
        assert_eq!(
            redact("paid with 4111 1111 1111 1111 today"),
            "paid with **** **** **** 1111 today"
        );
    }

    #[test]
    fn phones_and_emails_are_masked() {
        assert_eq!(redact("13800138000"), PHONE_MASK);
        assert_eq!(redact("tel: (415) 555-2671"), "tel: [phone]");
        assert_eq!(redact("+44 20 7946 0958"), PHONE_MASK);
        assert_eq!(
            redact("alice.smith+shop@mail.example.co.uk wrote"),
            "[email] wrote"
        );
    }

    #[test]
    fn ordinary_values_are_borrowed_unchanged() {
        for input in ["/orders/ord_7f3a", "checkout", "/items/12345", "2026-11-25"] {
            assert!(matches!(redact(input), Cow::Borrowed(_)), "{input}");
        }
    }
}
