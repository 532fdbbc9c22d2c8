//! The configuration file: one `name = value` per line, `name` being a long option of
//! `triggerd serve` without its dashes (`listen = 127.0.0.1:8080`), `#` comments.
//! Each entry is applied as the option's environment variable unless that variable is
//! already set, so the precedence is: flags, then environment, then file, then
//! defaults. Read with `--config FILE` or `TRIGGERD_CONFIG`.

use std::collections::BTreeMap;

/// Parses the file's text into (option name, value), refusing unknown options.
pub fn parse(text: &str, known: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut entries = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) =
            line.split_once('=').ok_or_else(|| format!("line {}: expected `name = value`", number + 1))?;
        let name = name.trim().trim_start_matches("--").replace('_', "-");
        if !known.contains(&name) {
            return Err(format!("line {}: unknown option {name:?}", number + 1));
        }
        let value = value.trim().trim_matches('"').to_string();
        if entries.insert(name.clone(), value).is_some() {
            return Err(format!("line {}: {name} is set twice", number + 1));
        }
    }
    Ok(entries)
}

/// The environment variable an option reads.
pub fn env_name(option: &str) -> String {
    if option == "database-url" {
        "DATABASE_URL".into()
    } else {
        format!("TRIGGERD_{}", option.to_uppercase().replace('-', "_"))
    }
}

/// `--config PATH`, `--config=PATH` or `TRIGGERD_CONFIG`.
pub fn path_from(args: &[String]) -> Option<String> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--config" {
            return iter.next().cloned();
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(path.to_string());
        }
    }
    std::env::var("TRIGGERD_CONFIG").ok()
}

/// Hides secrets in a value shown by `--print-config`.
pub fn masked(option: &str, value: &str) -> String {
    match option {
        "admin-token" => "********".into(),
        "database-url" => mask_password(value),
        _ => value.into(),
    }
}

fn mask_password(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((credentials, host)) = rest.split_once('@') {
            if let Some((user, _)) = credentials.split_once(':') {
                return format!("{scheme}://{user}:********@{host}");
            }
        }
        return url.into();
    }
    url.split_whitespace()
        .map(
            |pair| {
                if pair.starts_with("password=") {
                    "password=********".to_string()
                } else {
                    pair.to_string()
                }
            },
        )
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<String> {
        ["listen", "http-cores", "admin-token", "database-url"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_names_values_and_comments() {
        let text = "# a comment\nlisten = 0.0.0.0:9000\n\nhttp_cores=3\n--admin-token = \"s3cret\"\n";
        let entries = parse(text, &known()).unwrap();
        assert_eq!(entries["listen"], "0.0.0.0:9000");
        assert_eq!(entries["http-cores"], "3");
        assert_eq!(entries["admin-token"], "s3cret");
    }

    #[test]
    fn refuses_unknown_and_repeated_options() {
        assert!(parse("colour = blue", &known()).unwrap_err().contains("unknown option"));
        assert!(parse("listen = a\nlisten = b", &known()).unwrap_err().contains("twice"));
        assert!(parse("listen", &known()).unwrap_err().contains("name = value"));
    }

    #[test]
    fn masks_secrets() {
        assert_eq!(masked("admin-token", "abc"), "********");
        assert_eq!(masked("database-url", "postgresql://u:pw@h/db"), "postgresql://u:********@h/db");
        assert_eq!(
            masked("database-url", "host=/s user=u password=pw dbname=d"),
            "host=/s user=u password=******** dbname=d"
        );
        assert_eq!(masked("listen", "1.2.3.4:80"), "1.2.3.4:80");
        assert_eq!(env_name("http-cores"), "TRIGGERD_HTTP_CORES");
        assert_eq!(env_name("database-url"), "DATABASE_URL");
    }
}
