//! Go's value syntaxes: `strconv`'s bools and integers, `time.ParseDuration`, and
//! etcd's URL lists, sets and enums.

use crate::config::value::*;

// Goal: bool literals are exactly strconv.ParseBool's.
#[test]
fn bools_are_strconv_parse_bool() {
    for t in ["1", "t", "T", "TRUE", "true", "True"] {
        assert_eq!(parse_bool(t), Some(true), "{t}");
    }
    for f in ["0", "f", "F", "FALSE", "false", "False"] {
        assert_eq!(parse_bool(f), Some(false), "{f}");
    }
    for bad in ["yes", "on", "tRuE", "", " true", "2"] {
        assert_eq!(parse_bool(bad), None, "{bad:?}");
    }
}

// Goal: integers take Go's base prefixes and underscores, and refuse what Go refuses.
#[test]
fn integers_take_go_base_prefixes() {
    let u = |s| parse_uint(s, 64);
    assert_eq!(u("0x100000"), Ok(1_048_576));
    assert_eq!(u("010"), Ok(8));
    assert_eq!(u("0o17"), Ok(15));
    assert_eq!(u("0b101"), Ok(5));
    assert_eq!(u("1_000_000"), Ok(1_000_000));
    assert_eq!(u("0x_1F"), Ok(31));
    assert_eq!(u("0"), Ok(0));
    assert_eq!(u("18446744073709551615"), Ok(u64::MAX));
    assert_eq!(u("18446744073709551616"), Err(NumError::Range));
    for bad in [
        "", "-1", "+1", "1e6", "100ms", " 1", "1 ", "08", "0x", "1__0", "_1", "1_",
    ] {
        assert_eq!(u(bad), Err(NumError::Syntax), "{bad:?}");
    }
    assert_eq!(parse_uint("4294967295", 32), Ok(4_294_967_295));
    assert_eq!(parse_uint("4294967296", 32), Err(NumError::Range));
    assert_eq!(parse_int("-1", 64), Ok(-1));
    assert_eq!(parse_int("+0x10", 64), Ok(16));
    assert_eq!(parse_int("-9223372036854775808", 64), Ok(i64::MIN));
    assert_eq!(parse_int("9223372036854775808", 64), Err(NumError::Range));
    assert_eq!(
        Kind::Uint32.parse("4294967296").unwrap_err(),
        "strconv.ParseUint: parsing \"4294967296\": value out of range"
    );
    assert_eq!(Kind::Uint.parse("1e6").unwrap_err(), "parse error");
    assert_eq!(
        Kind::Uint.parse("99999999999999999999").unwrap_err(),
        "value out of range"
    );
}

// Goal: durations are time.ParseDuration's: units, sums, fractions, signs, no `d`.
#[test]
fn durations_are_go_durations() {
    let ok = |s: &str| parse_go_duration_nanos(s).unwrap();
    assert_eq!(ok("10m0s"), 600_000_000_000);
    assert_eq!(ok("0"), 0);
    assert_eq!(ok("-0"), 0);
    assert_eq!(ok("1h30m"), 5_400_000_000_000);
    assert_eq!(ok("1h2m3.5s"), 3_723_500_000_000);
    assert_eq!(ok("1.5s"), 1_500_000_000);
    assert_eq!(ok(".5s"), 500_000_000);
    assert_eq!(ok("5.s"), 5_000_000_000);
    assert_eq!(ok("100ms"), 100_000_000);
    assert_eq!(ok("2us"), 2_000);
    assert_eq!(ok("2\u{b5}s"), 2_000);
    assert_eq!(ok("2\u{3bc}s"), 2_000);
    assert_eq!(ok("7ns"), 7);
    assert_eq!(ok("-5s"), -5_000_000_000);
    assert_eq!(ok("+5s"), 5_000_000_000);
    assert_eq!(ok("2562047h47m16.854775807s"), i64::MAX);
    for bad in [
        "", "5", "s", "1x", "1d", ".s", " 5s", "5s ", "1..2s", "-", "2562048h",
    ] {
        assert!(
            parse_go_duration_nanos(bad).is_err(),
            "{bad:?} should be refused"
        );
    }
    assert_eq!(
        parse_go_duration_nanos("5").unwrap_err(),
        "time: missing unit in duration \"5\""
    );
    assert_eq!(
        parse_go_duration_nanos("1d").unwrap_err(),
        "time: unknown unit \"d\" in duration \"1d\""
    );
    assert!(parse_go_duration("-1s").is_err());
    assert_eq!(
        parse_go_duration("1.5s"),
        Ok(std::time::Duration::from_millis(1500))
    );
}

// Goal: URL lists follow types.NewURLs: port required, no path, trimmed, sorted,
// deduplicated; errors read as etcd's.
#[test]
fn url_lists_follow_etcd() {
    assert_eq!(
        parse_urls("http://b:2, http://a:1,http://b:2").unwrap(),
        vec!["http://a:1", "http://b:2"]
    );
    assert_eq!(
        parse_urls("HTTP://[::1]:2379").unwrap(),
        vec!["http://[::1]:2379"]
    );
    assert_eq!(
        parse_urls("http://127.0.0.1:23790?x=1").unwrap(),
        vec!["http://127.0.0.1:23790?x=1"]
    );
    assert_eq!(
        parse_urls("unix://localhost:1/p").unwrap(),
        vec!["unix://localhost:1/p"]
    );
    let err = |s| parse_urls(s).unwrap_err();
    assert_eq!(
        err("http://127.0.0.1"),
        "URL address does not have the form \"host:port\": http://127.0.0.1"
    );
    assert_eq!(
        err("http://1.2.3.4:2379/"),
        "URL must not contain a path: http://1.2.3.4:2379/"
    );
    assert_eq!(
        err("127.0.0.1:2379"),
        "parse \"127.0.0.1:2379\": first path segment in URL cannot contain colon"
    );
    assert_eq!(
        err("localhost:2379"),
        "URL scheme must be http, https, unix, or unixs: localhost:2379"
    );
    assert_eq!(err(""), "URL scheme must be http, https, unix, or unixs: ");
    assert_eq!(
        err("ftp://a:1"),
        "URL scheme must be http, https, unix, or unixs: ftp://a:1"
    );
    assert_eq!(
        err("http://a:x"),
        "parse \"http://a:x\": invalid port \":x\" after host"
    );
    assert!(check_bind_url("http://localhost:1").is_ok());
    assert!(check_bind_url("http://[::1]:1").is_ok());
    assert!(check_bind_url("http://0.0.0.0:1").is_ok());
    assert_eq!(
        check_bind_url("http://myhost.example:2379").unwrap_err(),
        "expected IP in URL for binding (http://myhost.example:2379)"
    );
}

// Goal: the exception literal keeps the current list, as does a text equal to one
// current URL; anything else replaces the list.
#[test]
fn unique_urls_set_semantics() {
    let kind = Kind::Urls { exception: "" };
    let current = vec!["http://a:1".to_string(), "http://b:2".to_string()];
    assert_eq!(kind.parse("").unwrap().urls_over(&current), current);
    assert_eq!(
        kind.parse("http://a:1").unwrap().urls_over(&current),
        current
    );
    assert_eq!(
        kind.parse("http://c:3").unwrap().urls_over(&current),
        vec!["http://c:3"]
    );
    let cors = Kind::Urls { exception: "*" };
    assert!(cors.parse("").is_err());
    assert!(cors.parse("http://a.com,*").is_err());
    assert_eq!(
        cors.parse("*").unwrap().urls_over(&[]),
        Vec::<String>::new()
    );
}

// Goal: lists keep order and duplicates, sets sort and deduplicate, enums are exact,
// feature gates read as Kubernetes reads them.
#[test]
fn lists_sets_enums_and_gates() {
    assert_eq!(
        Kind::List.parse("b,a,b").unwrap(),
        Value::List(vec!["b".into(), "a".into(), "b".into()])
    );
    assert_eq!(
        Kind::Set.parse("b,a,b").unwrap(),
        Value::List(vec!["a".into(), "b".into()])
    );
    assert_eq!(
        Kind::Set.parse("").unwrap(),
        Value::List(vec![String::new()])
    );
    let e = Kind::Enum(&["new", "existing"]);
    assert_eq!(e.parse("new").unwrap(), Value::Str("new".into()));
    assert_eq!(e.parse("New").unwrap_err(), "invalid value");
    assert_eq!(
        Kind::Gates.parse("A=true, B = false,,").unwrap(),
        Value::Gates(vec![("A".into(), true), ("B".into(), false)])
    );
    assert_eq!(
        Kind::Gates.parse("A").unwrap_err(),
        "missing bool value for A"
    );
    assert!(
        Kind::Gates
            .parse("A=yes")
            .unwrap_err()
            .starts_with("invalid value of A=yes")
    );
    assert_eq!(Kind::Ignored.parse("anything").unwrap(), Value::Ignored);
}
