//! `mask`: built-in detectors — a positive and a negative corpus per
//! detector, including the usual false-positive traps (UUIDs, hex hashes,
//! 13-digit millisecond timestamps, versions, order ids, dates, ISO
//! timestamps).

use nhi_gate::mask::{Counts, Masker, RawMasking};
use serde_json::json;

fn masker(cfg: serde_json::Value) -> Masker {
    let raw: RawMasking = serde_json::from_value(cfg).expect("raw masking");
    Masker::compile(raw, "masking").expect("compiles")
}

fn all_detectors() -> Masker {
    masker(json!({"detectors": [
        "email", "payment_card", "us_ssn", "phone", "iban", "ipv4", "ipv6", "aws_access_key", "google_api_key",
        "github_token", "openai_key", "anthropic_key", "slack_token", "jwt", "private_key"
    ]}))
}

/// `value` embedded in prose is replaced by exactly `[LABEL]`, counted once.
fn assert_found(m: &Masker, value: &str, label: &str) {
    for (pre, post) in [("", ""), ("see ", " now"), ("(", ")"), ("\"", "\","), ("x: ", ".")] {
        let mut counts = Counts::new();
        let text = format!("{pre}{value}{post}");
        let out = m.mask_text(&text, &mut counts);
        assert_eq!(out, format!("{pre}[{}]{post}", label.to_uppercase()), "input {text:?}");
        assert_eq!(counts.get(label), Some(&1), "count for {text:?}: {counts:?}");
    }
}

/// Each `(text, want)`: `text` masks to `want`, with one value counted for `det`.
#[track_caller]
fn assert_masks_to(m: &Masker, cases: &[(&str, &str)], det: &str) {
    for (text, want) in cases {
        let mut counts = Counts::new();
        assert_eq!(m.mask_text(text, &mut counts), *want, "{text}");
        assert_eq!(counts.get(det), Some(&1), "{text}: {counts:?}");
    }
}

/// `text` passes through unchanged.
fn assert_clean(m: &Masker, text: &str) {
    let mut counts = Counts::new();
    let out = m.mask_text(text, &mut counts);
    assert_eq!(out, text, "false positive {counts:?}");
    assert!(counts.is_empty());
}

#[test]
fn email_positive() {
    let m = masker(json!({}));
    for v in [
        "john.doe@example.com",
        "user+tag@sub.mail.example.co.uk",
        "a_b-c%d@example.io",
        "x@xn--mnchen-3ya.de",
        "user@xn--80ak6aa92e.xn--p1ai",
        "UPPER.Case@Example.ORG",
        "first.last+filter-1@mail-relay.example-corp.com",
        "1234@numbers.example",
        // URL percent-encoded `@` (query strings, logged URLs)
        "jane%40example.com",
        "jane.doe%2Bbilling%40mail.example.co.uk",
        // HTML character references for `@` (against address harvesters)
        "jane&#64;example.com",
        "Jane&#X40;Example.org",
        "jane&#x40;example.com",
        "jane&#064;example.com",
        "jane&#x0040;example.com",
        "jane&commat;example.com",
    ] {
        assert_found(&m, v, "email");
    }
    assert_masks_to(&m, &[("<a href=\"mailto:jane.roe&#64;example.org\">mail</a>", "<a href=\"mailto:[EMAIL]\">mail</a>")], "email");
    assert_masks_to(&m, &[("write to j.roe&#x40;example.org; or call", "write to [EMAIL]; or call")], "email");
    for t in [
        "jane&#64;example",
        "&#64;example.com",
        "a&#644;example.com",
        "jane&#X40example.com",
        "x&#46;y&#64;z",
        "jane&#x41;example.com",
        "jane&#x440;example.com",
        "jane&#0x40;example.com",
        "jane&#000000064;example.com",
        "jane&Commat;example.com",
        "jane&#;example.com",
        "a;b&c;d; e&#;",
    ] {
        assert_clean(&m, t);
    }
    assert_masks_to(&m, &[("GET /users?email=jane%40example.com&page=2", "GET /users?email=[EMAIL]&page=2")], "email");
    for t in ["jane%40example", "%40example.com", "100%40 of them", "a%4011.22", "jane%4Oexample.com"] {
        assert_clean(&m, t);
    }
    // hashed alike, however the `@` is written
    let h = masker(json!({"redaction": "hash", "hash_key": "k3y-for-tests-only-0123456789abcdef"}));
    let (a, b) = (h.mask_text("jane@example.com", &mut Counts::new()), h.mask_text("Jane%40Example.com", &mut Counts::new()));
    assert_eq!(a, b);
    for other in ["jane&#64;example.com", "JANE&#X40;example.com", "jane&#x40;example.com", "Jane&commat;example.com", "jane&#0064;example.com"] {
        assert_eq!(h.mask_text(other, &mut Counts::new()), a, "{other}");
    }
    let (a, b) = (h.mask_text("jane_roe@example.com", &mut Counts::new()), h.mask_text("jane\\_roe@example.com", &mut Counts::new()));
    assert_eq!(a, b);
}

/// Addresses glued to text in other scripts (CJK has no spaces between
/// words): the address ends where the ASCII top-level domain ends, and
/// starts after the other script; a non-ASCII local part stays whole.
#[test]
fn email_next_to_other_scripts() {
    let m = masker(json!({}));
    let cases = [
        ("メールはjohn.doe@example.comです", "メールは[EMAIL]です"),
        ("mail john.doe@example.com。", "mail [EMAIL]。"),
        ("联系john@example.cn获取", "联系[EMAIL]获取"),
        ("see jane@example.comé", "see [EMAIL]é"),
        ("用户@example.com", "[EMAIL]"),
        ("x@bücher.example", "[EMAIL]"),
        ("john用户@example.com", "[EMAIL]"),
        ("请联系jöhn@example.com", "请联系[EMAIL]"),
        // runs of more than 64 bytes of such text on either side
        ("如有任何问题请通过电子邮件联系我们的客户服务部门john@example.com", "如有任何问题请通过电子邮件联系我们的客户服务部门[EMAIL]"),
        ("john@example.comまでご連絡くださいますようお願い申し上げます。", "[EMAIL]までご連絡くださいますようお願い申し上げます。"),
        ("请发送邮件至john@mail.example.com以获取更多关于我们产品和服务的详细信息谢谢", "请发送邮件至[EMAIL]以获取更多关于我们产品和服务的详细信息谢谢"),
    ];
    assert_masks_to(&m, &cases, "email");
    let mut c = Counts::new();
    let out = m.mask_json("{\"documents\":[[\"お問い合わせは、カスタマーサポートチームのメールアドレスjohn@example.comまで\"]]}".as_bytes(), &mut c).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), "{\"documents\":[[\"お問い合わせは、カスタマーサポートチームのメールアドレス[EMAIL]まで\"]]}");
}

/// Near the scp-form git remote and image-name exclusions: still addresses.
#[test]
fn email_near_exclusions() {
    let m = masker(json!({}));
    let cases = [
        ("write to git@example.com: thanks", "write to [EMAIL]: thanks"),
        ("git@example.com:", "[EMAIL]:"),
        ("jane@github.com:org/repo", "[EMAIL]:org/repo"),
        ("logo@1.5x.pngs.example", "[EMAIL]"),
        ("art@studio.png.example.com", "[EMAIL]"),
        // an avatar or screenshot named by its owner's address
        ("avatar: jane.doe@acme.com.png", "avatar: [EMAIL].png"),
        ("https://cdn.example.com/u/jane.doe@acme.com.jpg?s=80", "https://cdn.example.com/u/[EMAIL].jpg?s=80"),
        ("Screenshot jane@acme.co.uk.JPEG", "Screenshot [EMAIL].JPEG"),
        // `git@` before `:` without a repository path is an address
        ("reach me: git@jane-doe.dev:thanks", "reach me: [EMAIL]:thanks"),
        ("mail git@janedoe.name:22", "mail [EMAIL]:22"),
        // Markdown escapes inside the local part (HTML-to-Markdown
        // converters write `_` as `\_`): the whole address goes
        (r"Owner: jane\_roe@example.org (billing)", "Owner: [EMAIL] (billing)"),
        (r"j\_a\.b\-c\+d@example.org", "[EMAIL]"),
        // a JSON escape before the address still ends it
        (r"line\njane_roe@example.org", r"line\n[EMAIL]"),
        (r"say \_jane@example.org", r"say \[EMAIL]"),
    ];
    assert_masks_to(&m, &cases, "email");
}

#[test]
fn email_negative() {
    let m = masker(json!({}));
    for t in [
        "user@localhost",
        "@example.com",
        "user@example.c",
        "user@-example.com",
        "user@example-.com",
        "icon@2x.png and logo@3x.webp",
        "logo@1.5x.png, hero@2.5x.JPG and banner@0.75x.svg",
        "git@github.com:org/repo.git",
        "git clone git@gitlab.example.com:group/sub/project.git",
        "git@ssh.dev.azure.com:v3/org/project/repo",
        "git@bitbucket.org:~user/repo.git",
        "git@gitlab.com:project.git",
        "user..name@example.com",
        "name.@example.com",
        "foo@bar",
        "decorators like @Override and @param x",
        "price 5@10.5",
        "user@exa_mple.com",
    ] {
        assert_clean(&m, t);
    }
}

#[test]
fn payment_card_positive() {
    let m = masker(json!({}));
    for v in [
        "4111111111111111",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4012888888881881",
        "4222222222222",
        "4000000000000000006",
        "5555555555554444",
        "5105 1051 0510 5100",
        "2221000000000009",
        "378282246310005",
        "3782 822463 10005",
        "6011111111111117",
        "6011000000000000001",
        "6500000000000002",
        "3530111333300000",
        "3566002020360505",
        "30569309025904",
        "36227206271667",
        "6200000000000005",
        "6221260000000000001",
    ] {
        assert_found(&m, v, "payment_card");
    }
}

#[test]
fn payment_card_negative() {
    let m = masker(json!({}));
    for t in [
        // Luhn fails
        "4111111111111112",
        "5555555555554445",
        // Luhn-valid, but no brand prefix/length: millisecond timestamps, ids
        "1700000000004",
        "1700000000012 and 1700000000020",
        "created 1717171717171 ms",
        "1000000000000008",
        "isbn 9780201633615",
        // wrong length for the brand (Amex 16)
        "3782822463100053",
        // mixed separators, single-digit groups, glued to letters or longer runs
        "4111 1111-1111 1111",
        "4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1",
        "order A4111111111111111",
        "id 4111111111111111b",
        "41111111111111111111111",
        "ref ORD-4111111111111111",
    ] {
        assert_clean(&m, t);
    }
}

#[test]
fn us_ssn() {
    let m = masker(json!({}));
    for v in ["123-45-6789", "078-05-1121", "899-99-9999", "001-01-0001"] {
        assert_found(&m, v, "us_ssn");
    }
    for t in [
        "000-12-3456",
        "666-12-3456",
        "900-12-3456",
        "999-45-6789",
        "123-00-4567",
        "123-45-0000",
        "123456789",
        "123 45 6789",
        "1234-45-6789",
        "123-45-67890",
        "A123-45-6789",
    ] {
        assert_clean(&m, t);
    }
}

/// `(+44 20 7946 0958` (no closing parenthesis): the number from its `+`.
#[test]
fn phone_country_code_parenthesis_unclosed() {
    let m = masker(json!({}));
    assert_masks_to(&m, &[("call (+44 20 7946 0958)", "call ([PHONE])"), ("call (+44) 20 7946 0958.", "call [PHONE].")], "phone");
}

/// `us_ssn_forms`: spaced and plain SSNs are opt-in, validated as dashed ones.
#[test]
fn us_ssn_forms() {
    let spaced = masker(json!({"us_ssn_forms": ["dashed", "spaced"]}));
    for v in ["123 45 6789", "078\u{a0}05\u{a0}1121", "123-45-6789"] {
        assert_found(&spaced, v, "us_ssn");
    }
    for t in ["123456789", "000 12 3456", "123 00 4567", "123 45 0000", "666 12 3456", "123 45 67890", "1234 45 6789", "123 45-6789", "a123 45 6789"] {
        assert_clean(&spaced, t);
    }
    let plain = masker(json!({"us_ssn_forms": ["plain"]}));
    // naming another form keeps the dashed one
    for v in ["123456789", "078051121", "123-45-6789"] {
        assert_found(&plain, v, "us_ssn");
    }
    for t in [
        "123 45 6789",
        "000123456",
        "666123456",
        "900123456",
        "123004567",
        "123450000",
        "1234567890",
        "12345678",
        "a123456789",
        "123456789b",
        "v1.123456789",
        "123456789-abc",
        "id_123456789",
    ] {
        assert_clean(&plain, t);
    }
    // the default is the dashed form alone
    let default = masker(json!({}));
    assert_clean(&default, "123 45 6789 and 123456789");
}

#[test]
fn phone_positive() {
    let m = masker(json!({}));
    for v in [
        // an extension glued to the number goes with it
        "+1 415 555 0134x123",
        "(415) 555-0134X12",
        "415-555-0134ext5",
        "415-555-0134Ext.4567",
        "020 7946 0958x1",
        "(415) 555-0134",
        "(415)555-0134",
        "415-555-0134",
        "415.555.0134",
        "415 555 0134",
        "1-800-555-0199",
        "+1 415 555 0134",
        "+1 (415) 555-0134",
        "+14155550134",
        "+44 20 7946 0958",
        "+49 30 123456",
        "+33 1 23 45 67 89",
        "+81-3-1234-5678",
        "020 7946 0958",
        "01 23 45 67 89",
        "030 12345678",
        "+44(0)20 7946 0958",
        "+44 (0) 20 7946 0958",
        "+44 (0)20 7946 0958",
        "+44(0)7700 900123",
        "030/1234567",
        "0171/1234567",
        "030/123 456 78",
        "(11) 91234-5678",
        "(11)91234-5678",
        "(21) 3456-7890",
        "8 (495) 123-45-67",
        "8 495 123 45 67",
        "8-800-555-35-35",
        "(+44) 20 7946 0958",
        "(+44)20 7946 0958",
        "(+1) 415 555 0134",
        "0044 20 7946 0958",
        "00 44 20 7946 0958",
        "0049 30 123456",
        "0033 1 23 45 67 89",
        "001 415 555 0134",
        "00353 1 234 5678",
        "00 1 415 555 0134",
        "0044\u{a0}20\u{a0}7946\u{a0}0958",
        "0044 20 7946 0958-12",
        "0049 30-123456",
        "0055 11 91234-5678",
        "007 495 123-45-67",
        "0091 98765 43210",
    ] {
        assert_found(&m, v, "phone");
    }
}

/// An international number is masked to the end of its digit grouping:
/// no digits of a number next to it (or of an extension) stay visible.
#[test]
fn phone_international_grouping_is_masked_whole() {
    let m = masker(json!({}));
    assert_masks_to(
        &m,
        &[
            ("0049 30 123456 0044 20 7946 0958", "[PHONE]"),
            ("0044 20 7946 0958 00 44 20 7946 0959", "[PHONE]"),
            ("0044 20 7946 0958 0044 20 7946 0958", "[PHONE]"),
            ("+44 20 7946 0958 0049 30 123456", "[PHONE]"),
            ("0049 30 123456 0171 2345678", "[PHONE]"),
            ("0044 20 7946 0958 020 7946 0958.", "[PHONE]."),
            ("+44 20 7946 0958 020 7946 0958", "[PHONE]"),
            ("0044 20 7946 0958 415 555 0134", "[PHONE]"),
            ("call 0044 20 7946 0958-12, thanks", "call [PHONE], thanks"),
            ("00\\u00a049\\u00a030\\u00a0123\\u00a0456\\u00a078", "[PHONE]"),
            ("00\u{202f}49\u{202f}30\u{202f}1234\u{202f}5678\u{202f}90", "[PHONE]"),
        ],
        "phone",
    );
}

#[test]
fn phone_negative() {
    let m = masker(json!({}));
    for t in [
        // no extension: letters, too many digits, or glued on
        "415-555-0134xabc",
        "415-555-0134x12a",
        "415-555-0134x1234567",
        "415-555-0134extra",
        "resolution 1920x1080 and 3840x2160",
        "2024-01-15",
        "on 2024-01-15T10:30:00Z and 2024-01-15T10:30:00.123+02:00",
        "15/01/2024 and 01.02.2024",
        "version 1.2.3.4 and v10.20.30",
        "host 10.0.0.1 and 192.168.100.200",
        "123e4567-e89b-12d3-a456-426614174000",
        "1700000000000",
        "4155550134",
        "12:30:45",
        "123-456-7890",
        "555-0134",
        "ORD-415-555-0134",
        "415-555-01345",
        "+2024-01-15",
        "+123",
        "+0 415 555 0134",
        "000 1234 5678",
        "pages 100-200",
        "score 3.14159265",
        "01.23.45.67",
        "01.02.2024",
        "10.20.30.40.50",
        // dotted pairs are dates and versions as often as French numbers
        "01.23.45.67.89",
        "recorded 05.06.24.09.30",
        "firmware 01.02.03.04.05",
        "v01.23.45.67.89",
        "01.23.45.67.89.10",
        "01.23.45 67.89",
        "ratio +1(0)555 1234",
        "+7(0)495 123 45 67",
        "+44(1)20 7946 0958",
        "+44(0)",
        "01/05/2024",
        "05/12/2024 and 2024/05/12",
        "030/123/4567",
        "1/2 cup and 3/4",
        "page 010/200",
        "+49/30/1234567",
        "(01) 91234-5678",
        "(11) 91234 5678",
        "(11) 912-5678",
        "(123) 4567-8901",
        "8 (495) 123-45-678",
        "9 (495) 123-45-67",
        "8 (495) 123-45 67",
        "18 (495) 123-45-67",
        "(+44)",
        "(+2024) 01 15",
        // the `00` prefix: separators, a country code and two more groups
        "0012345678",
        "00441234567890",
        "0044.20.7946.0958",
        "00.11.22.33.44",
        "0044/20/7946",
        "0044 20",
        "0044 2079460958",
        "0000 1234 5678",
        "00 0 20 7946 0958",
        "0001 415 555 0134",
        "004412 20 7946",
        "0020 01 15",
        "00 44",
        "00 (44) 20 7946 0958",
        "0044 0532 0130 01",
        "MAC 00-14-22-01-23-45",
        "00:14:22:01:23:45",
        "bytes 00 11 22 33 44 55 66 77",
        "00 12 34 56 78",
        "0012 3456 7890",
        "0015-1234-5678",
        // zero-padded ids: no assigned country code after the `00`
        "NDC 0074-3799-02",
        "Order 0012-345-6789",
        "Order 001-234-5678",
        "Ticket 00123-456-7890",
        "Invoice no. 0015-2024-117",
        "Lot 0021-22-123456",
        "Part 0012 3456 78",
        "acct 0023 4567 8901 23",
        "NL44 INGB 0012 3456 78",
        "0042 17 2023 11",
        "00-12-2024-1234",
        "0012 345 6789 0123 4567 8901",
        // +1 takes NANP's 3-3-4, +7 ten digits
        "qty 001 250 1000",
        "001 100 1000 10000",
        "001 10 20 30 40 50",
        "001 12 12 12 12",
        "007 495 123",
        // bytes
        "00 12 34 56 78 901",
        "00-14-22-01-23-456",
        "00 30 22 33 44 55",
        // a JSON `\u` escape in text
        "\\u0044 20 7946 0958",
        "ext 100 \\u0026 123 4567",
        // (second attack round) ids, rows and dates with an assigned code
        "Invoice no. 0044-2024-117",
        "Order 0044-123-4567",
        "Order #0044-555-1234",
        "Lot 0041-22-123456",
        "id 00-31-2024-1234",
        "Pos 0044 15-01-2024 120,00 EUR",
        "Beleg 0031 15-01-2024",
        "0031 20-2024-11-05",
        "0044 1 250 000",
        "USPS 9205 5000 0049 1234 5678 90",
        "Konto 3704 0044 1234 5678 90",
        "ts 2024 01 15 00 20 15 123456",
        "2024 0044 12 345 678",
    ] {
        assert_clean(&m, t);
    }
}

#[test]
fn iban() {
    let m = masker(json!({}));
    for v in [
        "DE89370400440532013000",
        "DE89 3704 0044 0532 0130 00",
        "GB82WEST12345698765432",
        "GB82 WEST 1234 5698 7654 32",
        "FR1420041010050500013M02606",
        "NL91ABNA0417164300",
        "CH9300762011623852957",
        "NO9386011117947",
        "BE68539007547034",
        "IT60X0542811101000000123456",
        "ES9121000418450200051332",
    ] {
        assert_found(&m, v, "iban");
    }
    for t in [
        "DE89370400440532013001",
        "DE8937040044053201300",
        "DE893704004405320130001",
        "XX89370400440532013000",
        "de89370400440532013000",
        "DE89 3704 0044 0532 0130 01",
        "ADE89370400440532013000",
    ] {
        assert_clean(&m, t);
    }
}

/// Documents typeset by word processors or rendered from HTML group digits
/// with no-break, narrow no-break, figure or thin spaces and with Unicode
/// hyphens; the digit detectors take them as separators of the same class
/// as ASCII space and `-`.
#[test]
fn digit_groups_with_unicode_separators() {
    let m = masker(json!({}));
    for (v, label) in [
        ("4111\u{a0}1111\u{a0}1111\u{a0}1111", "payment_card"),
        ("4111\u{202f}1111\u{202f}1111\u{202f}1111", "payment_card"),
        ("4111\u{2007}1111\u{2007}1111\u{2007}1111", "payment_card"),
        ("3782\u{2009}822463\u{2009}10005", "payment_card"),
        ("4111\u{2011}1111\u{2011}1111\u{2011}1111", "payment_card"),
        ("4111 1111\u{a0}1111 1111", "payment_card"),
        ("123\u{2011}45\u{2011}6789", "us_ssn"),
        ("123\u{2013}45\u{2013}6789", "us_ssn"),
        ("01\u{a0}23\u{a0}45\u{a0}67\u{a0}89", "phone"),
        ("+33\u{a0}1\u{a0}23\u{a0}45\u{a0}67\u{a0}89", "phone"),
        ("+33\u{202f}1\u{202f}23\u{202f}45\u{202f}67\u{202f}89", "phone"),
        ("+44\u{a0}20\u{a0}7946\u{a0}0958", "phone"),
        ("415\u{2011}555\u{2011}0134", "phone"),
        ("(415)\u{a0}555\u{2011}0134", "phone"),
        ("1\u{2010}800\u{2010}555\u{2010}0199", "phone"),
        ("DE89\u{a0}3704\u{a0}0044\u{a0}0532\u{a0}0130\u{a0}00", "iban"),
        ("FR14\u{202f}2004\u{202f}1010\u{202f}0505\u{202f}0001\u{202f}3M02\u{202f}606", "iban"),
        // U+00A0 as an HTML character reference (raw HTML of crawled pages)
        ("4111&nbsp;1111&nbsp;1111&nbsp;1111", "payment_card"),
        ("+44&nbsp;20&nbsp;7946&nbsp;0958", "phone"),
        ("01&#160;23&#160;45&#160;67&#160;89", "phone"),
        ("+33&#xa0;1&#xa0;23&#xa0;45&#xA0;67&#xa0;89", "phone"),
    ] {
        assert_found(&m, v, label);
    }
    assert_masks_to(&m, &[("<p>Call&nbsp;us: +44&nbsp;20&nbsp;7946&nbsp;0958</p>", "<p>Call&nbsp;us: [PHONE]</p>")], "phone");
    for t in [
        // Luhn or mod-97 fails
        "4111\u{a0}1111\u{a0}1111\u{a0}1112",
        "DE89\u{a0}3704\u{a0}0044\u{a0}0532\u{a0}0130\u{a0}01",
        // mixed classes: a space and a hyphen
        "4111\u{a0}1111\u{2011}1111\u{a0}1111",
        "415\u{2011}555\u{a0}0134",
        // SSN with spaces, dates, ranges, amounts in French and Swiss formats
        "123\u{a0}45\u{a0}6789",
        "2024\u{2013}01\u{2013}15",
        "pages 100\u{2013}200",
        "1\u{a0}000\u{a0}000\u{a0}000\u{a0}000\u{a0}000 €",
        "4\u{202f}111\u{202f}111\u{202f}111\u{202f}111\u{202f}111,00\u{a0}€",
        "CHF 12\u{2009}345\u{2009}678.90",
        // a digit run glued to a letter after a separator stays a word
        "4111\u{a0}1111\u{a0}1111\u{a0}1111x",
        // other Unicode spaces are not separators
        "4111\u{3000}1111\u{3000}1111\u{3000}1111",
        // a Unicode hyphen joins a value to a longer token, as `-` does
        "ORD\u{2011}415\u{2011}555\u{2011}0134",
        "INV\u{2011}123\u{2011}45\u{2011}6789",
        "x\u{2011}4111 1111 1111 1111",
        "4111\u{2011}1111\u{2011}1111\u{2011}1111\u{2011}0001",
        "123\u{2013}45\u{2013}6789\u{2013}0",
        "415\u{2013}555\u{2013}0134\u{2013}12",
        "378282246310005\u{2011}1",
        "DE89\u{a0}3704\u{a0}0044\u{a0}0532\u{a0}0130\u{a0}00\u{2011}5",
        // the tail of a longer run grouped by the same class of separator
        "+0\u{a0}415 555 0134",
        "0044\u{a0}0532 0130 01",
        // other references, and amounts with `&nbsp;` thousands
        "4111&ensp;1111&ensp;1111&ensp;1111",
        "4111&nbsp1111&nbsp1111&nbsp1111",
        "1&nbsp;000&nbsp;000&nbsp;000&nbsp;000&nbsp;000&nbsp;€",
    ] {
        assert_clean(&m, t);
    }
}

/// JSON held in text (NDJSON, `text/*`, structured output in a chat
/// `content`) keeps non-ASCII separators escaped (`\u00a0`, as Python's
/// `json.dumps` writes them): they separate digit groups there too, and
/// the keyed hash does not depend on how the separator was written.
#[test]
fn escaped_unicode_separators_in_text() {
    let m = masker(json!({}));
    for (text, want) in [
        (r#"{"card":"4111\u00a01111\u00a01111\u00a01111"}"#, r#"{"card":"[PAYMENT_CARD]"}"#),
        (r#"{"iban":"DE89\u202f3704\u202f0044\u202f0532\u202f0130\u202f00"}"#, r#"{"iban":"[IBAN]"}"#),
        (r#"{"ssn":"123\u201145\u20116789","tel":"415\u2011555\u20110134"}"#, r#"{"ssn":"[US_SSN]","tel":"[PHONE]"}"#),
        // a Unicode hyphen, escaped or not, joins a value to a longer token
        (r#"{"ref":"ORD\u2011415\u2011555\u20110134"}"#, r#"{"ref":"ORD\u2011415\u2011555\u20110134"}"#),
    ] {
        assert_eq!(m.mask_text(text, &mut Counts::new()), want, "{text}");
    }
    let h = masker(json!({"hash_key": "k".repeat(32), "per_detector": {"payment_card": "hash", "iban": "hash", "phone": "hash"}}));
    let token = |s: &str| h.mask_text(s, &mut Counts::new());
    assert_eq!(token(r"4111\u00a01111\u00a01111\u00a01111"), token("4111 1111 1111 1111"));
    assert_eq!(token(r"DE89\u202f3704\u202f0044\u202f0532\u202f0130\u202f00"), token("DE89370400440532013000"));
    assert_eq!(token(r"415\u2011555\u20110134"), token("415-555-0134"));
}

#[test]
fn unicode_separators_in_json_strings_and_hash_redaction() {
    // `\u00a0` in a JSON string decodes to a no-break space
    let m = masker(json!({}));
    let mut counts = Counts::new();
    let out = m.mask_json(br#"{"t":"card 4111\u00a01111\u00a01111\u00a01111, call 01\u202f23\u202f45\u202f67\u202f89"}"#, &mut counts).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v, json!({"t": "card [PAYMENT_CARD], call [PHONE]"}));
    // keyed hash: the same value with other separators gives the same token
    let h = masker(json!({"hash_key": "k".repeat(32), "per_detector": {"payment_card": "hash", "iban": "hash"}}));
    let token = |s: &str| h.mask_text(s, &mut Counts::new());
    assert_eq!(token("4111\u{a0}1111\u{a0}1111\u{a0}1111"), token("4111 1111 1111 1111"));
    assert_eq!(token("DE89\u{202f}3704\u{202f}0044\u{202f}0532\u{202f}0130\u{202f}00"), token("DE89370400440532013000"));
    assert_ne!(token("DE89\u{202f}3704\u{202f}0044\u{202f}0532\u{202f}0130\u{202f}00"), token("4111 1111 1111 1111"));
}

#[test]
fn ip_addresses_are_opt_in() {
    let default = masker(json!({}));
    assert_clean(&default, "from 203.0.113.7 and 2001:db8::1");
    let m = masker(json!({"detectors": ["ipv4", "ipv6"]}));
    for v in ["203.0.113.7", "10.0.0.1", "255.255.255.255", "0.0.0.0"] {
        assert_found(&m, v, "ipv4");
    }
    for v in ["2001:db8::1", "fe80::1ff:fe23:4567:890a", "::1", "2001:0db8:85a3:0000:0000:8a2e:0370:7334", "::ffff:192.0.2.1"] {
        assert_found(&m, v, "ipv6");
    }
    for t in [
        "256.1.1.1",
        "1.2.3.4.5",
        "01.2.3.4",
        "10:30:00",
        "std::vec::Vec",
        "00:1a:2b:3c:4d:5e",
        "a1.2.3.4",
        "1.2.3",
    ] {
        assert_clean(&m, t);
    }
}

#[test]
fn secrets_positive() {
    let m = masker(json!({}));
    assert_found(&m, "AKIAIOSFODNN7EXAMPLE", "aws_access_key");
    assert_found(&m, "ASIAY34FZKBOKMUTVV7A", "aws_access_key");
    assert_found(&m, "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe", "google_api_key");
    assert_found(&m, "AIza0123456789abcdefghijklmnopqrstuvw_-", "google_api_key");
    let cases = [
        ("__AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe__", "__[GOOGLE_API_KEY]__"),
        ("_AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe_", "_[GOOGLE_API_KEY]_"),
        ("api-key-AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe", "api-key-[GOOGLE_API_KEY]"),
        ("key=AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe&x=1", "key=[GOOGLE_API_KEY]&x=1"),
        ("key%3DAIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe", "key%3D[GOOGLE_API_KEY]"),
    ];
    assert_masks_to(&m, &cases, "google_api_key");
    assert_found(&m, "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "github_token");
    assert_found(&m, "gho_16C7e42F292c6912E7710c838347Ae178B4a", "github_token");
    assert_found(&m, "ghs_16C7e42F292c6912E7710c838347Ae178B4a", "github_token");
    assert_found(
        &m,
        "github_pat_11ABCDEFG0123456789abc_defghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456",
        "github_token",
    );
    assert_found(&m, "sk-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKL", "openai_key");
    assert_found(&m, "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z_AbC-dEf", "openai_key");
    assert_found(&m, "sk-svcacct-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z", "openai_key");
    assert_found(
        &m,
        "sk-ant-api03-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb3dEf6hIj9kLm2nOp5qRs8t-AA",
        "anthropic_key",
    );
    assert_found(&m, "xoxb-2112345678901-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "slack_token");
    assert_found(&m, "xoxp-1234567890-abcdefghij", "slack_token");
    assert_found(
        &m,
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
        "jwt",
    );
    // unsecured JWS (empty signature) and a JWE (five segments, empty key)
    assert_found(&m, "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.", "jwt");
    assert_found(&m, "eyJhbGciOiJkaXIiLCJlbmMiOiJBMTI4R0NNIn0..48V1_ALb6US04U3b.5eym8TW_c8SuK0ltJ3rpYIzOeDQz7TALvtu6UG9oMo4vpzs9tX_EFShS8iB7j6jiSdiwkIr3ajwQzaBtQD_A.XFBoMYUZodetZdvTiFvSkQ", "jwt");
}

#[test]
fn private_keys() {
    let m = masker(json!({}));
    for kind in ["RSA PRIVATE KEY", "EC PRIVATE KEY", "PRIVATE KEY", "ENCRYPTED PRIVATE KEY", "OPENSSH PRIVATE KEY", "PGP PRIVATE KEY BLOCK"] {
        let block = format!("-----BEGIN {kind}-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo\n4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onL\n-----END {kind}-----");
        assert_found(&m, &block, "private_key");
        // CRLF and JSON-ish single line forms
        assert_found(&m, &block.replace('\n', "\r\n"), "private_key");
        assert_found(&m, &block.replace('\n', " "), "private_key");
    }
    // without a footer: the header and the base64 lines after it
    let mut counts = Counts::new();
    let out = m.mask_text("key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nu1SU1LfVLPHCozMx\n\nthe end", &mut counts);
    assert_eq!(out, "key:\n[PRIVATE_KEY]\n\nthe end");
    for t in [
        "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A\n-----END PUBLIC KEY-----",
        "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIE\n-----END CERTIFICATE-----",
        "------BEGIN RSA PRIVATE KEY",
        "-----BEGIN private key-----",
    ] {
        assert_clean(&m, t);
    }
}

#[test]
fn values_split_by_invisible_characters() {
    let m = masker(json!({}));
    for (value, label) in [
        ("4111\u{200b}1111\u{200b}1111\u{200b}1111", "payment_card"),
        ("4111\u{ad}1111\u{ad}1111\u{ad}1111", "payment_card"),
        ("41\u{2060}11 1111 1111 1111", "payment_card"),
        ("jane\u{ad}.doe@exam\u{ad}ple.com", "email"),
        ("jane.doe\u{200c}@\u{200d}example.com", "email"),
        ("+44\u{feff}20 7946 0958", "phone"),
        ("123-4\u{200b}5-6789", "us_ssn"),
        ("AKIA\u{200b}IOSFODNN7EXAMPLE", "aws_access_key"),
        ("DE89 3704 0044 05\u{ad}32 0130 00", "iban"),
    ] {
        assert_found(&m, value, label);
    }
    // a value the text shows whole is found once, next to invisible ones;
    // read with them removed, `see\u{200b}jane@…` is `seejane@…`: the wider
    // span is masked (more, never less)
    let mut counts = Counts::new();
    let out = m.mask_text("see\u{200b}jane@example.com\u{200b} and 4111 1111 1111 1111\u{ad}", &mut counts);
    assert_eq!(out, "[EMAIL]\u{200b} and [PAYMENT_CARD]\u{ad}");
    assert_eq!((counts.get("email"), counts.get("payment_card")), (Some(&1), Some(&1)));
    // a zero-width space is a break: a card after it is not glued to a word
    assert_masks_to(&m, &[("card\u{200b}4111 1111 1111 1111", "card\u{200b}[PAYMENT_CARD]")], "payment_card");
    // custom detectors too, and in JSON (raw and `\u` escaped), one pass or not
    let c = masker(json!({"custom": [{"name": "emp", "pattern": "EMP-[0-9]{4}"}]}));
    assert_masks_to(&c, &[("id EMP-12\u{200b}34 ok", "id [EMP] ok")], "emp");
    for one_pass in [true, false] {
        let m = masker(json!({})).with_one_pass(one_pass);
        for doc in ["{\"t\":\"jane\u{ad}.doe@example.com\"}", r#"{"t":"jane\u00ad.doe@example.com"}"#] {
            let mut counts = Counts::new();
            let out = m.mask_json(doc.as_bytes(), &mut counts).expect("masks");
            assert_eq!(String::from_utf8(out).expect("utf8"), r#"{"t":"[EMAIL]"}"#, "{doc}");
        }
    }
    // JSON held in text: the `\u` escapes of invisible characters too
    assert_masks_to(&m, &[(r#"{"t":"4111\u200b1111\u200B1111\u00ad1111"}"#, r#"{"t":"[PAYMENT_CARD]"}"#)], "payment_card");
    assert_masks_to(&m, &[(r#"{"t":"jane\u00ad.doe@example.com"}"#, r#"{"t":"[EMAIL]"}"#)], "email");
    // direction marks, bidi isolates, variation selectors
    for sep in ["\u{200e}", "\u{202c}", "\u{2066}", "\u{fe0f}"] {
        assert_found(&m, &["4111", "1111", "1111", "1111"].join(sep), "payment_card");
    }
    // hashed alike, with or without them
    let h = masker(json!({"redaction": "hash", "hash_key": "k3y-for-tests-only-0123456789abcdef"}));
    for (a, b) in [("jane.doe@example.com", "jane\u{ad}.doe@example.com"), ("AKIAIOSFODNN7EXAMPLE", "AKIA\u{200b}IOSFODNN7EXAMPLE")] {
        assert_eq!(h.mask_text(a, &mut Counts::new()), h.mask_text(b, &mut Counts::new()));
    }
    // other non-ASCII text is left alone
    assert_clean(&m, "Grüße aus Köln – 日本語 ✓ “quoted” and an emoji 👨\u{200d}👩\u{200d}👧");
}

#[test]
fn slack_webhook_urls() {
    let m = masker(json!({}));
    for url in [
        // Slack's documented example shape
        "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
        "https://hooks.slack.com/services/T024BE7LD/B01ABCDEF12/abcDEF123ghiJKL456mnoPQR",
        "http://hooks.slack.com/services/TABCDEFGH/B0123ABCD/abcDEFghiJKLmnoPQRstuVWX",
        "https://hooks.slack.com/workflows/T01ABCDEF/A02BCDEFG/123456789012345678/abc/def/abcdefGHIJKL1234567890ab",
        // host names ignore case
        "HTTPS://Hooks.Slack.COM/services/T024BE7LD/B01ABCDEF12/abcDEF123ghiJKL456mnoPQR",
        "hooks.slack.com/services/T024BE7LD/B01ABCDEF12/abcDEF123ghiJKL456mnoPQR",
        // workflow webhooks
        "https://hooks.slack.com/workflows/T01ABCDEF/A02BCDEFG/123456789012345678/abcdefGHIJKL1234567890ab",
        "https://hooks.slack.com/triggers/T01ABCDEF/1234567890123/abcdef0123456789abcdef0123456789",
    ] {
        assert_found(&m, url, "slack_token");
    }
    // only the Slack token detector on: still found
    let only = masker(json!({"detectors": ["slack_token"]}));
    assert_found(&only, "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX", "slack_token");
    // in JSON, and with the path's slashes escaped there (`\/`)
    let mut counts = Counts::new();
    let doc = br#"{"webhook":"https:\/\/hooks.slack.com\/services\/T024BE7LD\/B01ABCDEF12\/abcDEF123ghiJKL456mnoPQR","n":2}"#;
    let out = m.mask_json(doc, &mut counts).expect("masks");
    assert_eq!(String::from_utf8(out).expect("utf8"), r#"{"webhook":"[SLACK_TOKEN]","n":2}"#);
    for t in [
        "https://hooks.slack.com/services/",
        "https://hooks.slack.com/services/T00000000/B00000000",
        "https://hooks.slack.com/services/T00000000/B00000000/short",
        "https://hooks.slack.com/services/T00000000//XXXXXXXXXXXXXXXXXXXXXXXX",
        "https://api.slack.com/apps/A0123ABCD/incoming-webhooks",
        "https://example.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
        "https://nothooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
    ] {
        assert_clean(&m, t);
    }
}

#[test]
fn private_key_tail_without_header() {
    let m = masker(json!({}));
    let body = "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo\n4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onL\n";
    assert_masks_to(
        &m,
        &[
            // a chunk cut from a key file: whole base64 lines, then the footer
            (&format!("{body}-----END RSA PRIVATE KEY-----\nnext"), "[PRIVATE_KEY]\nnext"),
            (&format!("chunk 2:\n{body}-----END PRIVATE KEY-----"), "chunk 2:\n[PRIVATE_KEY]"),
            (&format!("a:\r\n{}-----END EC PRIVATE KEY-----", body.replace('\n', "\r\n")), "a:\r\n[PRIVATE_KEY]"),
            // the first line cut mid-way: its base64 token goes with it
            (&format!("the key: 4lgOEePzNm0tRgeLez\n{body}-----END PRIVATE KEY-----"), "the key: [PRIVATE_KEY]"),
            (&format!("part (kAIB+0/a\n{body}-----END PRIVATE KEY-----)"), "part ([PRIVATE_KEY])"),
            // a short word at the end of a prose line is not taken for one
            (&format!("key follows:\n{body}-----END OPENSSH PRIVATE KEY-----"), "key follows:\n[PRIVATE_KEY]"),
            (&format!("here it is\n{body}-----END OPENSSH PRIVATE KEY-----"), "here it is\n[PRIVATE_KEY]"),
            // indented (a YAML block scalar, code), trailing blanks
            (&format!("key: |\n  {}  -----END PRIVATE KEY-----\n", body.replace('\n', "\n  ")), "key: |\n  [PRIVATE_KEY]\n"),
            (&format!("x:\n{}-----END PRIVATE KEY-----", body.replace('\n', " \t\n")), "x:\n[PRIVATE_KEY]"),
            // invisible characters inside the lines, raw or escaped
            (&format!("x:\n{}-----END PRIVATE KEY-----", body.replace("AKCA", "AKC\u{200b}A").replace("LfVL", "Lf\\u200BVL")), "x:\n[PRIVATE_KEY]"),
            // a tail after its own header is one block, counted once
            (&format!("-----BEGIN PRIVATE KEY-----\n{body}-----END PRIVATE KEY-----"), "[PRIVATE_KEY]"),
        ],
        "private_key",
    );
    // JSON: the string value decoded (`\n` escapes)
    let mut counts = Counts::new();
    let doc = serde_json::to_vec(&json!({"text": format!("{body}-----END PRIVATE KEY-----"), "id": 1})).expect("json");
    let out = m.mask_json(&doc, &mut counts).expect("masks");
    assert_eq!(String::from_utf8(out).expect("utf8"), r#"{"text":"[PRIVATE_KEY]","id":1}"#);
    assert_eq!(counts.get("private_key"), Some(&1));
    for t in [
        // nothing before the footer, or a blank line before it
        "-----END PRIVATE KEY-----",
        "done\n\n-----END PRIVATE KEY-----",
        // not at the start of a line
        "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo -----END PRIVATE KEY-----",
        "4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onL\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo x -----END PRIVATE KEY-----",
        // a token glued to a word (`id_ed25519`) is not a body line
        "id_ed25519\n-----END OPENSSH PRIVATE KEY-----",
        // public material
        "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A\n-----END PUBLIC KEY-----",
        "MIIDdzCCAl+gAwIBAgIE\n-----END CERTIFICATE-----",
        "MIIDdzCCAl+gAwIBAgIE\n-----END private key-----",
    ] {
        assert_clean(&m, t);
    }
}

#[test]
fn secrets_negative() {
    let m = masker(json!({}));
    for t in [
        "AKIAIOSFODNN7EXAMPL",
        "AKIAIOSFODNN7EXAMPLE1",
        "AKIAiosfodnn7example",
        "XAKIAIOSFODNN7EXAMPLE",
        "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQ",
        "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe1",
        "xAIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe",
        "9AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe",
        "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe____",
        "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe_x",
        "AIzeSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe",
        "ghp_short",
        "ghx_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
        "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ012345678",
        "sk-learn is a library",
        "task-force-alpha-bravo-charlie-delta-echo",
        "ask-me-anything-about-the-weather-in-the-alps",
        "sk-abcdefghijklmnopqrst",
        "sk-abcdefghijklmnopqrstuvwxyzabcdefghijklmnop",
        "xoxb-short",
        "xoxb-abcdefghijklmnop",
        "eyJhbGciOiJIUzI1NiJ9",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0",
        "keyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc.def",
    ] {
        assert_clean(&m, t);
    }
}

#[test]
fn false_positive_traps() {
    let m = all_detectors();
    let mut none = masker(json!({}));
    // everything but ipv4/ipv6 (the version string below is a valid IPv4 address)
    for t in [
        "123e4567-e89b-12d3-a456-426614174000",
        "550e8400-e29b-41d4-a716-446655440000 and 00000000-0000-0000-0000-000000000000",
        "sha1 da39a3ee5e6b4b0d3255bfef95601890afd80709",
        "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "md5 9e107d9d372bb6826bd81d3542a419d6 commit 4b825dc642cb6eb9a060e54bf8d69288fbee4904",
        "hex 0123456789012345678901234567890123456789abcdef",
        "ts 1700000000000 1717171717171 1699999999999 1700000000004",
        "epoch 1700000000 and 1717171717",
        "order ORD-2024-000123, invoice INV/2024/55512, #100234567",
        "ticket JIRA-41555 build 20240115.3",
        "dates 2024-01-15 2024/01/15 15.01.2024 01/15/2024",
        "iso 2024-01-15T10:30:00Z 2024-01-15T10:30:00.123456+05:30",
        "semver 1.2.3 and 10.20.30-rc.1+build.5",
        "amounts $1,234.56 and 1 234 567,89 EUR and 3.14159265358979",
        "coords 48.858844, 2.294351",
        "durations 1h30m and 00:45:00",
        "ids: user_4111111111111111 doc-4111111111111111x",
        "base64 aGVsbG8gd29ybGQ= and path /api/v1/users/415/orders/555",
        "kubernetes pod-7d4b9c8f5d-x2v9q and sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ] {
        assert_clean(&none, t);
    }
    none = m;
    for t in [
        "123e4567-e89b-12d3-a456-426614174000",
        "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "ts 1700000000000 1717171717171",
        "iso 2024-01-15T10:30:00Z",
        "dates 2024-01-15",
    ] {
        assert_clean(&none, t);
    }
}

#[test]
fn mixed_paragraph() {
    let m = masker(json!({}));
    let mut counts = Counts::new();
    let text = "Contact Jane at jane.roe@example.org or (415) 555-0134; card 4111 1111 1111 1111, \
                SSN 123-45-6789, IBAN DE89 3704 0044 0532 0130 00. Ticket 2024-01-15 #1700000000000.";
    let out = m.mask_text(text, &mut counts);
    assert_eq!(
        out,
        "Contact Jane at [EMAIL] or [PHONE]; card [PAYMENT_CARD], SSN [US_SSN], IBAN [IBAN]. Ticket 2024-01-15 #1700000000000."
    );
    let want: Counts = [("email", 1), ("phone", 1), ("payment_card", 1), ("us_ssn", 1), ("iban", 1)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(counts, want);
}

#[test]
fn unicode_text_is_safe() {
    let m = masker(json!({}));
    let mut counts = Counts::new();
    let out = m.mask_text("Grüße an jürgen@example.de, jürgen@müller.de — Tel. +49 30 123456 ✓ 日本語", &mut counts);
    assert_eq!(out, "Grüße an [EMAIL], [EMAIL] — Tel. [PHONE] ✓ 日本語");
    // no panic on any slicing of odd input
    for t in ["@", "-", "_", "I", "J", ":", "+", "(", "-----BEGIN ", "eyJ", "AKIA", "sk-", "xoxb-", "ghp_", "0", "é@é.é", "\u{0}@\u{0}"] {
        let _ = m.mask_text(t, &mut counts);
        let _ = all_detectors().mask_text(t, &mut counts);
    }
}

/// JSON held in a text field (structured outputs, tool results) is masked
/// as text with its escapes still in: a value right after `\n` or `\t` is
/// glued to the escape's letter, yet it starts a token and is found; the
/// escape itself stays intact, so the text is still JSON.
#[test]
fn values_after_escapes_in_json_text_are_found() {
    let m = masker(json!({}));
    let text = r#"{"cards":"4111111111111111\n5555555555554444","ssn":"SSN:\n123-45-6789","keys":"x\tAKIAIOSFODNN7EXAMPLE","e":"x\njane@example.com","p":"\n+1 415-555-0134"}"#;
    let mut counts = Counts::new();
    let out = m.mask_text(text, &mut counts);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v, json!({"cards": "[PAYMENT_CARD]\n[PAYMENT_CARD]", "ssn": "SSN:\n[US_SSN]", "keys": "x\t[AWS_ACCESS_KEY]",
                         "e": "x\n[EMAIL]", "p": "\n[PHONE]"}));
    assert_eq!(counts.values().sum::<u64>(), 6);
    // `\uXXXX` escapes (Python's json.dumps writes a no-break space as
    // `\u00a0`, Go writes `>` as `\u003e`) are breaks too; an escaped letter
    // inside an address belongs to it, an escaped `<` does not
    for (text, want) in [
        (r#"Card:\u00a04111 1111 1111 1111"#, r#"Card:\u00a0[PAYMENT_CARD]"#),
        (r#"<td>\u003e4111111111111111\u003c/td>"#, r#"<td>\u003e[PAYMENT_CARD]\u003c/td>"#),
        (r#"x\u0020123-45-6789"#, r#"x\u0020[US_SSN]"#),
        (r#"{"n":"jos\u00e9@example.com"}"#, r#"{"n":"[EMAIL]"}"#),
        (r#"\u003cjohn.doe@example.com\u003e"#, r#"\u003c[EMAIL]\u003e"#),
    ] {
        assert_eq!(m.mask_text(text, &mut Counts::new()), want, "{text}");
    }
    // a letter that is not after a backslash still glues: ids stay
    assert_clean(&m, "order n4111111111111111 and x\\\\n4111111111111111z");
}

/// Values after a URL percent-escape (`Bearer%20…`, `token%3D…`), Slack
/// app-level and rotation tokens, and a `+` number after `Tel.`.
#[test]
fn secrets_after_percent_escapes_slack_app_tokens_and_phones_after_abbreviations() {
    let m = masker(json!({}));
    for (text, value) in [
        ("GET /p?Authorization=Bearer%20eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.NqVwYS81VP7Hb1DX8pPd5khxE3pyIgKpaUnArl63Xyk HTTP/1.1", "NqVwYS81VP7Hb1DX8pPd5khxE3pyIgKpaUnArl63Xyk"),
        ("next=https%3A%2F%2Fci.example.com%2Fhook%3Ftoken%3Dghp_WZeiNNCiia3anXn9k3ksu9mI4ROnl89Sm995", "ghp_WZeiNNCiia3anXn9k3ksu9mI4ROnl89Sm995"),
        ("cb%3Fkey%3Dsk-proj-ytbxAk7jqevt0MLaMRTvetw0tESulEETldq8b8Vw2zbJYAxyL1aCcTlN99mh", "ytbxAk7jqevt0MLaMRTvetw0tESulEETldq8b8Vw2zbJYAxyL1aCcTlN99mh"),
        ("s3%3FAWSAccessKeyId%3DAKIAYHOLQLQIYODSXYZL%26Expires%3D1700000000", "AKIAYHOLQLQIYODSXYZL"),
        ("cb%3Fkey%3Dxoxb-1234567890-1234567890123-3scB8fnvGNx6jvr7SIftRutl", "3scB8fnvGNx6jvr7SIftRutl"),
        ("SLACK_APP_TOKEN=xapp-1-A0123456789-1234567890123-28a79023c39c200661fccd268a29a0d347301ef56e64dc3cd6089065c3146e80", "28a79023c39c"),
        ("refresh_token: xoxe-1-XNv1syeefnLOpaMxxNDi9LE1Ki3ylOjt6o0NpUmkVO8JmR8y4EMfAdggcG9qpVTzqA05MFsH", "XNv1syeefnLOpaMxxNDi9LE1"),
        ("Max Mustermann, Tel.+49 30 12345678", "12345678"),
        ("Mob.+44 7700 900123", "900123"),
    ] {
        let mut counts = Counts::new();
        let out = m.mask_text(text, &mut counts);
        assert!(!out.contains(value), "{value} survived: {out}");
        let doc = json!({ "t": text }).to_string();
        let out = String::from_utf8(m.mask_json(doc.as_bytes(), &mut counts).unwrap()).unwrap();
        assert!(!out.contains(value), "{value} survived in JSON: {out}");
    }
    // a percent-escape is a break, not a licence: glued words still glue
    assert_clean(&m, "v1.2.3 build%20ORD-4111111111111111 and version2.415-555-0134");
}

/// Diners Club 38/39 and 16-digit ranges, Maestro, Mir and RuPay.
#[test]
fn more_card_brands() {
    let m = masker(json!({}));
    for v in ["3056 9300 0902 0004", "3852 000002 3237", "39150502700295", "3611443330589398", "6759 6020 8942 4678",
              "5018 7992 7375 1533", "5020368799173402302", "2200 2151 3065 8873", "6005 9059 2888 4644", "5087 3098 3491 7874"] {
        assert_found(&m, v, "payment_card");
    }
    // Luhn-invalid, or a prefix of no brand
    assert_clean(&m, "ref 3852 000002 3238 and 7000 0000 0000 0008");
}

/// The secret half of an AWS access key has no prefix of its own: it is
/// found after its name (`aws_secret_access_key` in `~/.aws/credentials`,
/// `AWS_SECRET_ACCESS_KEY` in `.env` files and shells), and in JSON as the
/// value of a member so named (`SecretAccessKey` of an STS answer), and
/// redacted as an `aws_access_key`; the name stays.
#[test]
fn aws_secret_access_key_after_its_name() {
    let m = masker(json!({}));
    let key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    let cases = [
        format!("[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = {key}\n"),
        format!("export AWS_SECRET_ACCESS_KEY={key}"),
        format!("AWS_SECRET_ACCESS_KEY=\"{key}\" make deploy"),
        format!("aws_secret_access_key: '{key}'"),
        format!("{{\"aws_secret_access_key\": \"{key}\"}}"),
    ];
    for text in &cases {
        let mut counts = Counts::new();
        let out = m.mask_text(text, &mut counts);
        assert!(!out.contains(key) && out.contains("[AWS_ACCESS_KEY]"), "{text:?} → {out:?}");
        assert!(out.to_ascii_lowercase().contains("aws_secret_access_key"), "the name stays: {out:?}");
    }
    for clean in [
        format!("aws_secret_access_key = {key}A"),
        format!("aws_secret_access_key = {key}=="),
        "aws_secret_access_key = <your secret key>".to_string(),
        "secret_access_keys: 40".to_string(),
        format!("other_secret = {key}"),
    ] {
        assert_clean(&m, &clean);
    }
    // in a JSON body: the member's value
    let body = format!(r#"{{"Credentials":{{"AccessKeyId":"ASIAIOSFODNN7EXAMPLE","SecretAccessKey":"{key}","SessionToken":"x"}},"secretAccessKey":"not a key"}}"#);
    let mut counts = Counts::new();
    let out = String::from_utf8(m.mask_json(body.as_bytes(), &mut counts).unwrap()).unwrap();
    assert_eq!(
        out,
        r#"{"Credentials":{"AccessKeyId":"[AWS_ACCESS_KEY]","SecretAccessKey":"[AWS_ACCESS_KEY]","SessionToken":"x"},"secretAccessKey":"not a key"}"#
    );
    assert_eq!(counts.get("aws_access_key"), Some(&2));
    // `/` escaped as `\/` (PHP's json_encode)
    let escaped = format!(r#"{{"SecretAccessKey":"{}"}}"#, key.replace('/', "\\/"));
    let out = String::from_utf8(m.mask_json(escaped.as_bytes(), &mut Counts::new()).unwrap()).unwrap();
    assert_eq!(out, r#"{"SecretAccessKey":"[AWS_ACCESS_KEY]"}"#, "{escaped}");
    // only with the detector on
    let off = masker(json!({"detectors": ["email"]}));
    assert_eq!(off.mask_json(body.as_bytes(), &mut Counts::new()).unwrap(), body.as_bytes());
}

/// A value right after a URL percent-escape whose last byte is a digit or
/// a lowercase hex letter (`%20`, `%3d`): the escape is a break, as the
/// character it encodes is; in text and in a JSON string.
#[test]
fn values_after_percent_escapes_ending_in_a_digit_or_lowercase_hex() {
    let m = masker(json!({}));
    assert_masks_to(&m, &[("GET /search?q=card%204111111111111111&x=1", "GET /search?q=card%20[PAYMENT_CARD]&x=1")], "payment_card");
    assert_masks_to(&m, &[("q=card%3d4111111111111111", "q=card%3d[PAYMENT_CARD]"), ("q=x%2c4111 1111 1111 1111", "q=x%2c[PAYMENT_CARD]")], "payment_card");
    assert_masks_to(&m, &[("GET /search?q=ssn%20123-45-6789", "GET /search?q=ssn%20[US_SSN]"), ("q=ssn%3a123-45-6789", "q=ssn%3a[US_SSN]")], "us_ssn");
    assert_masks_to(&m, &[("GET /search?q=call%20415-555-0134", "GET /search?q=call%20[PHONE]"), ("q=tel%3a415-555-0134", "q=tel%3a[PHONE]")], "phone");
    let mut c = Counts::new();
    let out = m.mask_json(br#"{"url":"/search?q=card%204111111111111111","u":"q=x%2c4111111111111111"}"#, &mut c).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), r#"{"url":"/search?q=card%20[PAYMENT_CARD]","u":"q=x%2c[PAYMENT_CARD]"}"#);
    // not an escape, or glued: left alone
    for t in ["order%g4111111111111111", "a%2x4111111111111111", "100%", "%41%42%43", "12%34%56"] {
        assert_clean(&m, t);
    }
}

/// An AWS secret access key after its name in JSON held in text: the
/// quotes and blanks around `:` written as escapes (`\"`, `\t`, `\n`).
#[test]
fn aws_secret_after_escaped_quotes_and_blanks() {
    let m = masker(json!({}));
    let k = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    let cases = [
        (format!(r#"{{"file":"{{\n  \"aws_secret_access_key\": \"{k}\"\n}}"}}"#), r#"{"file":"{\n  \"aws_secret_access_key\": \"[AWS_ACCESS_KEY]\"\n}"}"#.to_string()),
        (format!(r"AWS_SECRET_ACCESS_KEY:\t{k}"), r"AWS_SECRET_ACCESS_KEY:\t[AWS_ACCESS_KEY]".to_string()),
        (format!(r"aws_secret_access_key =\n{k}"), r"aws_secret_access_key =\n[AWS_ACCESS_KEY]".to_string()),
    ];
    for (text, want) in &cases {
        assert_masks_to(&m, &[(text, want)], "aws_access_key");
    }
}

/// A Slack webhook URL after an escape (`\n`, `\t` of JSON held in text),
/// a URL percent-escape or a full stop before its scheme; still not when
/// glued to a longer host name.
#[test]
fn slack_webhook_after_escapes() {
    let m = masker(json!({}));
    let url = "https://hooks.slack.com/services/T024BE7LD/B01ABCDEF12/abcDEF123ghiJKL456mnoPQR";
    for (pre, post) in [(r"Post to:\n", ""), (r"Post to:\t", "\""), ("GET /r?u=%20", "&x"), ("done.", " next")] {
        assert_masks_to(&m, &[(&format!("{pre}{url}{post}"), &format!("{pre}[SLACK_TOKEN]{post}"))], "slack_token");
    }
    let bare = "hooks.slack.com/services/T024BE7LD/B01ABCDEF12/abcDEF123ghiJKL456mnoPQR";
    assert_clean(&m, &format!("evil-{bare}"));
    assert_clean(&m, &format!("evil.{bare}"));
}

/// Markdown underscore emphasis (`_x_`, `__x__`, `___x___`: CommonMark
/// §6.2, an opening run not after a letter or digit, a closing run not
/// before one) is a break around a value, as `*` is; the runs stay in the
/// output. Underscores inside a word (`user_4111…`, `id_123-45-6789`)
/// still glue the value to it.
#[test]
fn values_inside_underscore_emphasis() {
    let m = all_detectors();
    let values = [
        ("4111 1111 1111 1111", "payment_card"),
        ("123-45-6789", "us_ssn"),
        ("+1 415 555 2671", "phone"),
        ("(415) 555-2671", "phone"),
        ("GB82 WEST 1234 5698 7654 32", "iban"),
        ("jane.doe@example.com", "email"),
        ("AKIAIOSFODNN7EXAMPLE", "aws_access_key"),
        ("ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "github_token"),
        ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGH", "github_token"),
        ("xoxb-1234567890-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "slack_token"),
        ("sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD", "openai_key"),
        ("sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789ABCD", "anthropic_key"),
        ("AIzaSyA-abcdefghijklmnopqrstuvwxyz01234", "google_api_key"),
        ("192.168.1.20", "ipv4"),
        ("https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX", "slack_token"),
    ];
    for (v, det) in values {
        for (pre, post) in [("_", "_"), ("__", "__"), ("___", "___"), ("x _", "_ y"), ("*_", "_*"), ("(_", "_).")] {
            let text = format!("{pre}{v}{post}");
            let want = format!("{pre}[{}]{post}", det.to_uppercase());
            assert_masks_to(&m, &[(text.as_str(), want.as_str())], det);
        }
    }
    for text in ["user_4111111111111111", "id_123-45-6789", "order_5555555555554444_x", "ref_4111 1111 1111 1111", "snake_case_415_555_2671", "_2024-01-15_", "_1700000000000_", "__init__"] {
        assert_clean(&m, text);
    }
}

/// Values whose characters are URL percent-escapes (a logged request URL
/// or form body: `%2B` for `+`, `%20` for a space, `%2D`, `%2E`, `%40`,
/// `%3D`, `%2F`, either case) are found in the decoded text and masked
/// with their escapes; escapes around them stay. Hash redaction gives the
/// decoded value's token.
#[test]
fn values_in_percent_encoded_text() {
    let m = all_detectors();
    assert_masks_to(&m, &[("tel=%2B14155550134&x=1", "tel=[PHONE]&x=1"), ("q=%2b44%2020%207946%200958", "q=[PHONE]"), ("phone%3A%2B14155550134", "phone%3A[PHONE]")], "phone");
    assert_masks_to(&m, &[("card%204111%201111%201111%201111%2C", "card%20[PAYMENT_CARD]%2C")], "payment_card");
    assert_masks_to(&m, &[("q=ssn%3A123%2D45%2D6789", "q=ssn%3A[US_SSN]")], "us_ssn");
    assert_masks_to(&m, &[("e=jane%2Edoe%40example%2Ecom&y", "e=[EMAIL]&y")], "email");
    assert_masks_to(&m, &[("?aws_secret_access_key%3DwJalrXUtnFEMI%2FK7MDENG%2FbPxRfiCYEXAMPLEKEY", "?aws_secret_access_key%3D[AWS_ACCESS_KEY]")], "aws_access_key");
    for text in ["100%25 done, 50% left", "a%zz%2", "%2540", "v%3D1.2.3%26build%3D20240115", "id%3D123e4567-e89b-12d3-a456-426614174000", "ts%3D1700000000000"] {
        assert_clean(&m, text);
    }
    // a form body's `+` between letters or digits is a space; UTF-8
    // escapes of typeset separators and invisible characters decode
    assert_masks_to(&m, &[("name=Jane+Doe&card=4111+1111+1111+1111", "name=Jane+Doe&card=[PAYMENT_CARD]"), ("?q=4111+1111+1111+1111", "?q=[PAYMENT_CARD]"), ("4111%C2%A01111%C2%A01111%C2%A01111", "[PAYMENT_CARD]"), ("4111%E2%80%8B1111%E2%80%8B1111%E2%80%8B1111", "[PAYMENT_CARD]")], "payment_card");
    assert_masks_to(&m, &[("phone=%2B1+415+555+0134", "phone=[PHONE]"), ("q=%2B1%C2%A0415%C2%A0555%C2%A00134", "q=[PHONE]")], "phone");
    // (`tel=%2B44+%280%2920+…`: a `+` before an escape is a space too)
    assert_masks_to(&m, &[("tel=%2B44+%280%2920+7946+0958", "tel=[PHONE]")], "phone");
    // a `+` is a space only in a token that reads as a form body or query
    // string (an `=` and one of `?`, `&`, `%`): sums in prose stay sums
    for text in ["1+1=2 and 4+4, caf%C3%A9", "mem 512+256+1024", "Total: 200+300+1500 = 2000", "sum = 378+2822+4631+0005", "total=200+300+1500", "x+1+415+555+0134"] {
        assert_clean(&m, text);
    }
    // every built-in and custom detector, also with no digit detector on
    // (in JSON the rescan needs a `%` anchor)
    for (cfg, text, want) in [
        (json!({}), "card=4111+1111+1111+1111&q=%2B1%20415%20555%200134", "card=[PAYMENT_CARD]&q=[PHONE]"),
        (json!({"detectors": ["openai_key"]}), "key=sk%2Dproj%2DAbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCdEfGhIjKl", "key=[OPENAI_KEY]"),
        (json!({"detectors": ["jwt"]}), "jwt=eyJhbGciOiJIUzI1NiJ9%2EeyJzdWIiOiIxMjM0NTY3ODkwIn0%2EdozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "jwt=[JWT]"),
        (json!({"detectors": [], "custom": [{"name": "tok", "pattern": "tok=[a-z]{6,}"}]}), "tok%3Dabcdefgh", "[TOK]"),
    ] {
        let m = masker(cfg);
        assert_eq!(m.mask_text(text, &mut Counts::new()), want);
        let body = serde_json::to_vec(&json!({ "v": text })).unwrap();
        let out: serde_json::Value = serde_json::from_slice(&m.mask_json(&body, &mut Counts::new()).unwrap()).unwrap();
        assert_eq!(out["v"], want, "in JSON");
    }
    // hash redaction decodes at most three layers, in a loop: deep `%25`
    // nesting is bounded work
    let deep = format!("tok=%{}41 end", "25".repeat(40_000));
    let h = masker(json!({"detectors": [], "custom": [{"name": "tok", "pattern": "tok=[^&\\s]+"}], "hash_key": "k".repeat(32), "per_detector": {"tok": "hash"}}));
    let out = h.mask_text(&deep, &mut Counts::new());
    assert!(!out.contains("%25") && out.ends_with(" end"), "{}", &out[..out.len().min(80)]);
    let hashed = masker(json!({"detectors": ["phone"], "hash_key": "k".repeat(32), "per_detector": {"phone": "hash"}}));
    let a = hashed.mask_text("tel=%2B14155550134", &mut Counts::new());
    let b = hashed.mask_text("tel=+14155550134", &mut Counts::new());
    assert_eq!(a, b);
    assert_ne!(a, "tel=%2B14155550134");
}

/// Values percent-encoded twice or three times (a URL inside a URL's
/// query: login `next=` and tracking links encode `%` as `%25`) are found
/// layer by layer and masked with all their escapes; a fourth layer is not
/// decoded. Hash redaction gives the decoded value's token.
#[test]
fn values_percent_encoded_more_than_once() {
    let m = all_detectors();
    assert_masks_to(&m, &[("https://a.example/login?next=%2Fcb%3Femail%3Djane%2540acme.com%26x%3D1", "https://a.example/login?next=%2Fcb%3Femail%3D[EMAIL]%26x%3D1"), ("u=%252Fcb%253Fe%253Djane%25252Edoe%252540acme.com", "u=%252Fcb%253Fe%253D[EMAIL]")], "email");
    assert_masks_to(&m, &[("x %252B14155550134 y", "x [PHONE] y"), ("x %25252B14155550134 y", "x [PHONE] y"), ("r=%252Fcb%253Ftel%253D%25252B14155550134", "r=%252Fcb%253Ftel%253D[PHONE]")], "phone");
    assert_masks_to(&m, &[("q%3Dcard%25204111%25201111%25201111%25201111", "q%3Dcard%2520[PAYMENT_CARD]")], "payment_card");
    for text in ["four %2525252B14155550134 z", "50%2525 off", "%252540", "v%253D1.2.3%2526build%253D20240115", "ts%253D1700000000000", "sum=200%2B300%2B1500%2B2000&x=%2520", "sum=378%2B2822%2B4631%2B0005&x=%2520"] {
        assert_clean(&m, text);
    }
    // the same in a JSON string value
    let body = serde_json::to_vec(&json!({ "u": "next=%2Fcb%3Femail%3Djane%2540acme.com" })).unwrap();
    let out: serde_json::Value = serde_json::from_slice(&m.mask_json(&body, &mut Counts::new()).unwrap()).unwrap();
    assert_eq!(out["u"], "next=%2Fcb%3Femail%3D[EMAIL]");
    let hashed = masker(json!({"detectors": ["phone"], "hash_key": "k".repeat(32), "per_detector": {"phone": "hash"}}));
    let a = hashed.mask_text("tel=%252B14155550134", &mut Counts::new());
    assert_eq!(a, hashed.mask_text("tel=+14155550134", &mut Counts::new()));
    assert_ne!(a, "tel=%252B14155550134");
}

/// A `+` escaped as `%2B` in the query string of an escaped URL (what
/// `encodeURIComponent` makes of `/pay?card=4111+1111…`) is a space there,
/// as in a form body; one in the outer query or form body (`sum=200%2B300`)
/// is a `+`, as a form body escapes a `+` that is no space.
#[test]
fn escaped_plus_in_an_escaped_query_is_a_space() {
    let m = all_detectors();
    assert_masks_to(
        &m,
        &[
            ("https://a.example/login?next=%2Fpay%3Fcard%3D4111%2B1111%2B1111%2B1111%26x%3D1", "https://a.example/login?next=%2Fpay%3Fcard%3D[PAYMENT_CARD]%26x%3D1"),
            ("next=%2Fpay%3Fa%3D1%26card%3D4111%2b1111%2b1111%2b1111", "next=%2Fpay%3Fa%3D1%26card%3D[PAYMENT_CARD]"),
            // twice: the inner URL's own query inside a URL's query
            ("u=%252Fpay%253Fcard%253D4111%252B1111%252B1111%252B1111", "u=%252Fpay%253Fcard%253D[PAYMENT_CARD]"),
        ],
        "payment_card",
    );
    assert_masks_to(&m, &[("r=%2Fcb%3Ftel%3D%2B1%2B415%2B555%2B0134", "r=%2Fcb%3Ftel%3D[PHONE]"), ("r=%2Fcb%3Ftel%3D%2B14155550134", "r=%2Fcb%3Ftel%3D[PHONE]")], "phone");
    for text in [
        // the outer form body's escaped `+` is a `+`
        "sum=4111%2B1111%2B1111%2B1111",
        "q=sum%3D4111%2B1111%2B1111%2B1111",
        // a `?` or `=` of the outer URL ends the escaped one
        "next=%2Fpay%3Fx&card=4111%2B1111%2B1111%2B1111",
        "next=%2Fpay%3Fcard%3D1&s=4111%2B1111%2B1111%2B1111",
        // the path or fragment of the escaped URL is not its query
        "next=%2Fpay%2F4111%2B1111%2B1111%2B1111",
        "next=%2Fpay%3Fa%3D1%23x4111%2B1111%2B1111%2B1111",
        "next=%2Fpay%3Fa%3D1%23frag%3D4111%2B1111%2B1111%2B1111",
        "next=%2Fpay%23x%3Fa%3D4111%2B1111%2B1111%2B1111",
    ] {
        assert_clean(&m, text);
    }
}

/// Emphasis right after an escape of JSON held in text (`\n_…_`,
/// `\u00a0_…_`) opens as after a space; a run after a base64url byte
/// (`-_eyJ…`) does not, so a token starting there stays glued.
#[test]
fn underscore_emphasis_after_escapes() {
    let m = all_detectors();
    assert_masks_to(&m, &[("Notes:\\n_123-45-6789_", "Notes:\\n_[US_SSN]_"), ("x\\u00a0_123-45-6789_", "x\\u00a0_[US_SSN]_")], "us_ssn");
    assert_masks_to(&m, &[("Notes:\\n\\n__4111 1111 1111 1111__", "Notes:\\n\\n__[PAYMENT_CARD]__")], "payment_card");
    assert_masks_to(&m, &[("x\\n_AKIAIOSFODNN7EXAMPLE_", "x\\n_[AWS_ACCESS_KEY]_")], "aws_access_key");
    assert_masks_to(&m, &[("x\\n_sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD_", "x\\n_[OPENAI_KEY]_")], "openai_key");
    let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    assert_masks_to(&m, &[(format!("_{jwt}_").as_str(), "_[JWT]_"), (format!("__{jwt}__.").as_str(), "__[JWT]__.")], "jwt");
}
