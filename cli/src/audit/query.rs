//! `nhi-gate audit query`: stored records by subject, time, resource,
//! decision and session, as a JSON array or CSV; plus the filter flags and
//! the time parsing/formatting shared with `replay` and `GET /v1/records`.

use super::store::{Filter, Row, Store};
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;

/// Filter flags shared by `query` and `replay`.
#[derive(clap::Args, Debug, Default)]
pub struct FilterArgs {
    /// Only records of this subject (`identity.subject`).
    #[arg(long)]
    pub subject: Option<String>,
    /// Only records at or after T (`time_ms`): RFC 3339 (`2026-11-29T10:00:00Z`,
    /// `2026-11-29T11:00:00+01:00`, `2026-11-29`) or ms since the Unix epoch.
    #[arg(long, value_name = "T", value_parser = parse_time)]
    pub since: Option<i64>,
    /// Only records before T (exclusive); same forms as --since.
    #[arg(long, value_name = "T", value_parser = parse_time)]
    pub until: Option<i64>,
    /// Only records of this resource (policy resource name).
    #[arg(long)]
    pub resource: Option<String>,
    /// Only records with this decision (`allow`, `deny`, `pending`, `undecided`).
    #[arg(long)]
    pub decision: Option<String>,
    /// Only records of this session (the record's `session`).
    #[arg(long)]
    pub session: Option<String>,
}

impl FilterArgs {
    /// The store filter these flags describe.
    pub fn filter(&self) -> Filter {
        Filter {
            subject: self.subject.clone(),
            since: self.since,
            until: self.until,
            resource: self.resource.clone(),
            decision: self.decision.clone(),
            session: self.session.clone(),
        }
    }
}

/// Output format of `audit query`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum Format {
    /// One JSON array of the records as stored, one record per line, by seq.
    Json,
    /// A header and one row per record of the flat columns (RFC 4180 quoting).
    Csv,
}

/// Flags of `nhi-gate audit query`.
#[derive(clap::Args, Debug)]
pub struct QueryArgs {
    /// SQLite database of the collector.
    #[arg(long, default_value = "nhi-gate-audit.db")]
    pub db: PathBuf,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
}

/// Columns of `--format csv`, in order.
pub const CSV_COLUMNS: [&str; 16] = [
    "seq",
    "time",
    "request_id",
    "subject",
    "resource",
    "operation",
    "method",
    "path",
    "decision",
    "reason",
    "status",
    "approval_id",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "estimated",
];

/// Runs `audit query`: exit 0 with the output (an empty array or just the
/// header when nothing matches), 1 if the database cannot be read.
pub fn run(a: QueryArgs) -> ExitCode {
    let rows = match Store::open_existing(&a.db).and_then(|s| s.select(&a.filter.filter()).map_err(|e| e.to_string())) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("nhi-gate audit query: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rows = parsed(rows, "nhi-gate audit query");
    let out = match a.format {
        Format::Json => json_array(&rows),
        Format::Csv => {
            let mut s = csv_line(CSV_COLUMNS.iter().map(|c| c.to_string()));
            for (row, v) in &rows {
                s.push_str(&csv_line(csv_cells(row.seq, v)));
            }
            s
        }
    };
    print!("{out}");
    ExitCode::SUCCESS
}

/// Rows with their parsed record; rows whose text is not a JSON object are
/// dropped with a warning on stderr (prefixed by `who`).
pub fn parsed(rows: Vec<Row>, who: &str) -> Vec<(Row, Value)> {
    rows.into_iter()
        .filter_map(|r| match serde_json::from_str::<Value>(&r.record) {
            Ok(v) if v.is_object() => Some((r, v)),
            _ => {
                eprintln!("{who}: warning: record seq {} is not a JSON object (run `nhi-gate audit verify`); skipped", r.seq);
                None
            }
        })
        .collect()
}

/// `[\n<record>,\n<record>\n]\n` with each record's stored text, or `[]\n`.
pub fn json_array(rows: &[(Row, Value)]) -> String {
    if rows.is_empty() {
        return "[]\n".into();
    }
    let texts: Vec<&str> = rows.iter().map(|(r, _)| r.record.trim()).collect();
    format!("[\n{}\n]\n", texts.join(",\n"))
}

/// A value as one CSV cell: `null`/absent empty, strings as they are,
/// numbers and booleans in JSON form, objects and arrays as compact JSON.
fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The [`CSV_COLUMNS`] cells of one record.
pub fn csv_cells(seq: i64, r: &Value) -> Vec<String> {
    let time = r.get("time_ms").and_then(Value::as_i64).map(format_time).unwrap_or_default();
    let mut cells = vec![seq.to_string(), time];
    for p in [
        "/request_id",
        "/identity/subject",
        "/resource",
        "/operation",
        "/method",
        "/path",
        "/decision",
        "/reason",
        "/status",
        "/approval/approval_id",
        "/usage/prompt_tokens",
        "/usage/completion_tokens",
        "/usage/total_tokens",
        "/usage/estimated",
    ] {
        cells.push(cell(r.pointer(p)));
    }
    cells
}

/// One CSV line (ending in `\n`): cells containing `,`, `"`, CR or LF are
/// quoted, with `"` doubled.
pub fn csv_line(cells: impl IntoIterator<Item = String>) -> String {
    let quoted: Vec<String> = cells
        .into_iter()
        .map(|c| {
            // A cell a spreadsheet would read as a formula (`=`, `+`, `-`,
            // `@`, tab, CR first: OWASP "CSV injection") gets a leading `'`;
            // record values such as `request_id` can be the client's. Other
            // control characters are dropped.
            let mut c: String = c.chars().filter(|ch| !ch.is_control() || matches!(ch, '\n' | '\r' | '\t')).collect();
            if c.starts_with(['=', '+', '-', '@', '\t', '\r']) && c.parse::<f64>().is_err() {
                c.insert(0, '\'');
            }
            if c.contains([',', '"', '\r', '\n']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c
            }
        })
        .collect();
    format!("{}\n", quoted.join(","))
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// ms since the Unix epoch as RFC 3339 UTC with milliseconds
/// (`2026-11-29T10:00:00.123Z`).
pub fn format_time(ms: i64) -> String {
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, m, d) = civil_from_days(days);
    let (h, min, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{milli:03}Z")
}

/// Parses ms since the Unix epoch (digits only) or an RFC 3339 date-time
/// (`T`, `t` or a space between date and time; fraction truncated to ms;
/// `Z` or `±HH:MM`), or a plain date `YYYY-MM-DD` (midnight UTC).
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not an RFC 3339 time (2026-11-29T10:00:00Z) or ms since the Unix epoch");
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| bad());
    }
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Result<i64, String> {
        let part = b.get(from..from + len).ok_or_else(bad)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        Ok(part.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')))
    };
    let sep = |at: usize, ok: &[u8]| -> Result<(), String> {
        if b.get(at).is_some_and(|c| ok.contains(c)) {
            Ok(())
        } else {
            Err(bad())
        }
    };
    let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    sep(4, b"-")?;
    sep(7, b"-")?;
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&mo) || d < 1 || d > month_days[(mo - 1) as usize] {
        return Err(bad());
    }
    let day_ms = days_from_civil(y, mo, d) * 86_400_000;
    if b.len() == 10 {
        return Ok(day_ms);
    }
    sep(10, b"Tt ")?;
    sep(13, b":")?;
    sep(16, b":")?;
    let (h, mi, sec) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if h > 23 || mi > 59 || sec > 60 {
        return Err(bad());
    }
    let mut i = 19;
    let mut millis = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 3 {
                millis = millis * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
        for _ in (i - start)..3 {
            millis *= 10;
        }
    }
    let offset_min = match b.get(i) {
        Some(b'Z' | b'z') if b.len() == i + 1 => 0,
        Some(&c @ (b'+' | b'-')) if b.len() == i + 6 => {
            sep(i + 3, b":")?;
            let (oh, om) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            let m = oh * 60 + om;
            if c == b'+' {
                m
            } else {
                -m
            }
        }
        _ => return Err(bad()),
    };
    Ok(day_ms + ((h * 60 + mi - offset_min) * 60 + sec.min(59)) * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_parse_and_format() {
        assert_eq!(parse_time("1764430000123").unwrap(), 1_764_430_000_123);
        assert_eq!(parse_time("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_time("2025-11-29T15:26:40.123Z").unwrap(), 1_764_430_000_123);
        assert_eq!(parse_time("2025-11-29t16:26:40.1234+01:00").unwrap(), 1_764_430_000_123);
        assert_eq!(parse_time("2025-11-29 10:26:40.12-05:00").unwrap(), 1_764_430_000_120);
        assert_eq!(parse_time("2024-02-29").unwrap(), 1_709_164_800_000);
        for bad in ["", "2025-02-29", "2025-11-29T25:00:00Z", "2025-11-29T10:00:00", "2025-11-29T10:00Z", "yesterday", "-5"] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
        assert_eq!(format_time(1_764_430_000_123), "2025-11-29T15:26:40.123Z");
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(-1), "1969-12-31T23:59:59.999Z");
        for ms in [0, 951_782_400_000, 1_709_164_800_000, 4_102_444_799_999] {
            assert_eq!(parse_time(&format_time(ms)).unwrap(), ms);
        }
    }

    #[test]
    fn csv_quotes_only_when_needed() {
        let line = csv_line(["a".into(), "b,c".into(), "say \"hi\"".into(), "x\ny".into(), String::new()]);
        assert_eq!(line, "a,\"b,c\",\"say \"\"hi\"\"\",\"x\ny\",\n");
        let r = json!({"time_ms": 0, "request_id": "r1", "identity": {"subject": "s"}, "status": 200,
                       "approval": null, "usage": {"prompt_tokens": 1, "estimated": false}});
        let cells = csv_cells(7, &r);
        assert_eq!(cells.len(), CSV_COLUMNS.len());
        assert_eq!(cells[..4], ["7", "1970-01-01T00:00:00.000Z", "r1", "s"]);
        assert_eq!(cells[10], "200");
        assert_eq!(cells[11], "");
        assert_eq!(cells[12], "1");
        assert_eq!(cells[15], "false");
    }
}
