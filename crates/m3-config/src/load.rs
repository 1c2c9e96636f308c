//! Loading a config file: read it, expand `${VAR}` and `${VAR:default}`, parse it into the
//! binary's config types, and report every failure with the file and, where known, the key.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A config file that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why. Part of the message, not a separate cause, so that a report of the error's
        /// whole chain says it once.
        error: std::io::Error,
    },
    /// `${VAR}` without a default and the variable is not set.
    #[error("config file {path}: environment variable(s) not set and no default given: {}", names.join(", "))]
    MissingEnv {
        /// The file.
        path: PathBuf,
        /// Every missing variable.
        names: Vec<String>,
    },
    /// The YAML does not fit the config types: unknown key, wrong type, bad duration…
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the key and position.
        message: String,
    },
    /// A value that parsed but is not allowed.
    #[error("config file {path}: key `{key}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key path, e.g. `aggregator.hostID.envVarName`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// More than one value is not allowed: every one of them (see [`crate::Problems`]).
    #[error("config file {path}: {} problems:{}", problems.len(), crate::problems::list(problems))]
    Several {
        /// The file.
        path: PathBuf,
        /// Each key path and what is wrong with it.
        problems: Vec<(String, String)>,
    },
}

impl ConfigError {
    /// An error for a value at `key` in the file at `path`.
    pub fn invalid(path: &Path, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Reads, expands and parses the config file at `path`, taking variables from the process
/// environment.
///
/// # Errors
/// See [`ConfigError`].
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    parse(path, &text, &|name| std::env::var(name).ok())
}

/// Expands and parses `text` as if read from `path`, taking variables from `vars`.
///
/// # Errors
/// See [`ConfigError`].
pub fn parse<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    vars: &dyn Fn(&str) -> Option<String>,
) -> Result<T, ConfigError> {
    let expanded = expand_env(text, vars).map_err(|names| ConfigError::MissingEnv {
        path: path.to_path_buf(),
        names,
    })?;
    serde_saphyr::from_str(&expanded).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Replaces `${VAR}` and `${VAR:default}` in `text`.
///
/// # Errors
/// The names of every variable that is unset and has no default.
pub fn expand_env(
    text: &str,
    vars: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut missing = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            // An unclosed `${` is left as written; the YAML parser will see it as text.
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let body = &after[..end];
        let (name, default) = match body.split_once(':') {
            Some((n, d)) => (n, Some(d)),
            None => (body, None),
        };
        match (vars(name), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => missing.push(name.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration;
    use serde::Deserialize;
    use std::time::Duration;

    fn vars(name: &str) -> Option<String> {
        (name == "HOST").then(|| "agg01".to_string())
    }

    #[test]
    fn a_missing_file_is_named_with_its_reason_once() {
        let path = Path::new("/nonexistent/m3-config-test.yml");
        let error = load::<serde::de::IgnoredAny>(path).unwrap_err();
        let ConfigError::Read { error: io, .. } = &error else {
            panic!("not a read error: {error}");
        };
        let reason = io.to_string();
        // What a report of the whole chain prints (anyhow's `{:#}`).
        let mut chain = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            chain.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        assert!(chain.contains("/nonexistent/m3-config-test.yml"), "{chain}");
        assert_eq!(chain.matches(reason.as_str()).count(), 1, "{chain}");
    }

    #[test]
    fn expands_set_default_and_reports_all_missing() {
        assert_eq!(
            expand_env("id: ${HOST} port: ${PORT:6000}", &vars).unwrap(),
            "id: agg01 port: 6000"
        );
        assert_eq!(
            expand_env("${A} ${HOST} ${B}", &vars).unwrap_err(),
            vec!["A".to_string(), "B".to_string()]
        );
        assert_eq!(expand_env("cost: $5 ${", &vars).unwrap(), "cost: $5 ${");
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Sample {
        listen_address: String,
        #[serde(with = "duration")]
        write_timeout: Duration,
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let err = parse::<Sample>(
            Path::new("config/x.yml"),
            "listenAddress: a\nwriteTimeout: 1s\nlistenAdress: b\n",
            &vars,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("config/x.yml"), "{err}");
        assert!(err.contains("listenAdress"), "{err}");
    }

    #[test]
    fn bad_duration_names_the_value_and_file() {
        let err = parse::<Sample>(
            Path::new("c.yml"),
            "listenAddress: a\nwriteTimeout: 5 parsecs\n",
            &vars,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("c.yml") && err.contains("5 parsecs"), "{err}");
    }

    #[test]
    fn parses_with_env() {
        let s: Sample = parse(
            Path::new("c.yml"),
            "listenAddress: ${HOST}:6000\nwriteTimeout: 250ms\n",
            &vars,
        )
        .unwrap();
        assert_eq!(s.listen_address, "agg01:6000");
        assert_eq!(s.write_timeout, Duration::from_millis(250));
    }
}
