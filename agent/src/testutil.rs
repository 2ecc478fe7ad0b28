//! Helpers shared by unit tests: decoding the hex captures kept in `agent/testdata`. Test-only.

/// Bytes of a hex dump (whitespace ignored), as the captures in `agent/testdata` are stored.
pub fn unhex(text: &str) -> Vec<u8> {
    let digits: String = text.split_whitespace().collect();
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex capture"))
        .collect()
}
