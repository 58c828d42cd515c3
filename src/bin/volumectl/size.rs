//! Byte sizes on the command line and in human output.

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// Parses a size in bytes: a whole number with an optional unit suffix.
///
/// `K`, `M`, `G`, `T` and `KiB`, `MiB`, `GiB`, `TiB` are powers of 1024;
/// `KB`, `MB`, `GB`, `TB` are powers of 1000; `B` or no suffix means bytes.
/// Suffixes are case-insensitive and may follow a space.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err("expected a whole number of bytes, optionally followed by a unit".into());
    }
    let multiplier = match suffix.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => KIB,
        "m" | "mib" => MIB,
        "g" | "gib" => GIB,
        "t" | "tib" => TIB,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "unknown unit {suffix:?}; use K, M, G, T (or KiB..TiB) for powers of 1024 \
                 or KB, MB, GB, TB for powers of 1000"
            ))
        }
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| "the number does not fit in 64 bits".to_string())?;
    number
        .checked_mul(multiplier)
        .ok_or_else(|| "the size does not fit in 64 bits of bytes".to_string())
}

/// Formats a byte count with a binary unit and one decimal, e.g. `1.2 GiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")];
    for (unit, name) in UNITS {
        if bytes >= unit {
            return format!("{:.1} {name}", bytes as f64 / unit as f64);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_size_units() {
        let cases = [
            ("0", 0),
            ("4096", 4096),
            ("10B", 10),
            ("1K", 1024),
            ("1k", 1024),
            ("2KiB", 2048),
            ("3M", 3 * MIB),
            ("3 MiB", 3 * MIB),
            ("1G", GIB),
            ("5gib", 5 * GIB),
            ("2T", 2 * TIB),
            ("1TiB", TIB),
            ("1KB", 1_000),
            ("512MB", 512_000_000),
            ("1GB", 1_000_000_000),
            ("2TB", 2_000_000_000_000),
            (" 7G ", 7 * GIB),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_size(text), Ok(expected), "parsing {text:?}");
        }
    }

    #[test]
    fn parse_size_rejects_bad_text() {
        for text in ["", "G", "-1", "1.5G", "1X", "1 GiBs", "10 bytes", "0x10"] {
            assert!(parse_size(text).is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn parse_size_rejects_overflow() {
        assert!(parse_size("18446744073709551616").is_err());
        assert!(parse_size("16777216T").is_err());
        assert_eq!(parse_size("16777215T"), Ok(16_777_215 * TIB));
    }

    #[test]
    fn format_bytes_picks_largest_unit() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1024), "1.0 KiB");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(1_288_490_189), "1.2 GiB");
        assert_eq!(format_bytes(3 * TIB), "3.0 TiB");
    }
}
