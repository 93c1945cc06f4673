//! `Serial`: an appliance serial number that is known to be usable as an identity.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// Longest serial accepted; DMI serials are far shorter, this bounds hostile input.
pub const MAX_SERIAL_LEN: usize = 64;

/// An appliance serial: 1 to 64 printable ASCII characters, no leading or trailing space.
///
/// Inner spaces are allowed because real firmware uses them (VMware writes serials such as
/// `VMware-56 4d 9e …`). Anything else, control characters and non-ASCII included, is refused, so
/// a `Serial` is always safe to put in a certificate, a log line or a URL once escaped.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Serial(String);

/// Why a string is not a valid serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialError {
    Empty,
    TooLong(usize),
    BadCharacter { position: usize, character: char },
    SurroundingSpace,
}

impl fmt::Display for SerialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SerialError::Empty => write!(f, "serial is empty"),
            SerialError::TooLong(n) => {
                write!(
                    f,
                    "serial is {n} characters long; at most {MAX_SERIAL_LEN} are allowed"
                )
            }
            SerialError::BadCharacter {
                position,
                character,
            } => write!(
                f,
                "serial has {character:?} at position {position}; only printable ASCII is allowed"
            ),
            SerialError::SurroundingSpace => {
                write!(f, "serial starts or ends with a space")
            }
        }
    }
}

impl std::error::Error for SerialError {}

impl Serial {
    pub fn parse(s: &str) -> Result<Self, SerialError> {
        if s.is_empty() {
            return Err(SerialError::Empty);
        }
        let len = s.chars().count();
        if len > MAX_SERIAL_LEN {
            return Err(SerialError::TooLong(len));
        }
        if let Some((position, character)) = s
            .chars()
            .enumerate()
            .find(|(_, c)| !(' '..='~').contains(c))
        {
            return Err(SerialError::BadCharacter {
                position,
                character,
            });
        }
        if s.starts_with(' ') || s.ends_with(' ') {
            return Err(SerialError::SurroundingSpace);
        }
        Ok(Serial(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A form safe as a file name: every character outside `[A-Za-z0-9._-]` becomes `_`.
    pub fn file_stem(&self) -> String {
        self.0
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }
}

impl TryFrom<String> for Serial {
    type Error = SerialError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Serial::parse(&s)
    }
}

impl std::str::FromStr for Serial {
    type Err = SerialError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Serial::parse(s)
    }
}

impl From<Serial> for String {
    fn from(s: Serial) -> String {
        s.0
    }
}

impl AsRef<str> for Serial {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({:?})", self.0)
    }
}

impl JsonSchema for Serial {
    fn schema_name() -> Cow<'static, str> {
        "Serial".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Appliance serial: 1 to 64 printable ASCII characters, inner spaces allowed, none leading or trailing. Must equal the serial in the client certificate.",
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_SERIAL_LEN,
            "pattern": "^[!-~]([ -~]*[!-~])?$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_serials_and_refuses_the_rest() {
        let cases: &[(&str, bool)] = &[
            ("CZJ1234ABC", true),
            (
                "VMware-56 4d 9e 0e 1a 2b 3c 4d-5e 6f 70 81 92 a3 b4 c5",
                true,
            ),
            ("3d1219c7c4c5404aaa1f6d2a48adfda4", true),
            ("A", true),
            ("", false),
            (" lead", false),
            ("trail ", false),
            ("tab\there", false),
            ("nul\0", false),
            ("ünïcode", false),
            (&"x".repeat(65), false),
            (&"x".repeat(64), true),
        ];
        for (input, ok) in cases {
            assert_eq!(Serial::parse(input).is_ok(), *ok, "{input:?}");
        }
    }

    #[test]
    fn deserialising_refuses_invalid_serials() {
        let err = serde_json::from_str::<Serial>("\"bad\\nserial\"").unwrap_err();
        assert!(err.to_string().contains("only printable ASCII"), "{err}");
    }

    #[test]
    fn file_stem_is_path_safe() {
        let s = Serial::parse("a/b c:..").unwrap();
        assert_eq!(s.file_stem(), "a_b_c_..");
    }
}
