//! Loading: the TOML file, then `VAXPULSE_<SECTION>_<KEY>` environment overrides (each read as
//! the type of the key it overrides), then validation. The one way a `Config` is made.

use super::*;

const SECTIONS: &[&str] = &[
    "kafka",
    "clickhouse",
    "model",
    "batch",
    "decode",
    "pipeline",
    "metrics",
    "monitor",
    "retention",
    "deploy",
    "quality",
    "annotate",
];

impl Config {
    /// Reads `path` (or only defaults when `None`), applies environment overrides, validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        let origin = path.map_or("(defaults)".to_string(), |p| p.display().to_string());
        // `std::env::vars` panics on an entry that is not UTF-8; ours must be UTF-8, the
        // process's other variables are none of our business.
        let mut env = Vec::new();
        for (k, v) in std::env::vars_os() {
            match (k.into_string(), v.into_string()) {
                (Ok(k), Ok(v)) => env.push((k, v)),
                (Ok(k), Err(_)) if k.starts_with("VAXPULSE_") => {
                    return Err(ConfigError::Env {
                        name: k,
                        message: "its value is not valid UTF-8".into(),
                    })
                }
                _ => {}
            }
        }
        Self::from_toml_with_env(&text, &origin, env)
    }

    /// Parses TOML text, then applies `VAXPULSE_<SECTION>_<KEY>=value` overrides from `env`,
    /// each read as the type of the field it overrides (see the module docs).
    pub fn from_toml_with_env(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let parse_err = |message: String| ConfigError::Parse {
            origin: origin.to_string(),
            message,
        };
        let mut root: toml::Table =
            toml::from_str(text).map_err(|e| parse_err(redacted(&e, Some(text))))?;
        let template = match toml::Value::try_from(Config::default()) {
            Ok(toml::Value::Table(t)) => t,
            _ => unreachable!("the default config serialises to a table; this is a bug"),
        };
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with("VAXPULSE_"))
            .collect();
        overrides.sort();
        for (name, value) in overrides {
            let rest = name["VAXPULSE_".len()..].to_ascii_lowercase();
            let Some(section) = SECTIONS.iter().find(|s| rest.starts_with(&format!("{s}_"))) else {
                continue;
            };
            let key = &rest[section.len() + 1..];
            let expected = template
                .get(*section)
                .and_then(toml::Value::as_table)
                .and_then(|t| t.get(key));
            // A secret's value never appears in an error (the variable's name says which).
            let secret = key == "properties" || hide_property(key);
            let typed = env_value(&value, expected).map_err(|message| ConfigError::Env {
                name: name.clone(),
                message: if secret && !value.is_empty() {
                    message.replace(value.as_str(), "***")
                } else {
                    message
                },
            })?;
            let table = root
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(Default::default()));
            let toml::Value::Table(table) = table else {
                return Err(parse_err(format!("[{section}] must be a table")));
            };
            table.insert(key.to_string(), typed);
        }
        let mut cfg: Config =
            toml::Value::Table(root)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    parse_err(format!(
                        "{} (check the key against config/local.toml and docs/configuration.md)",
                        redacted(&e, None)
                    ))
                })?;
        cfg.read_secret_files()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// `kafka.sasl_password_file` and `*_file` properties, read into their values.
    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
        };
        if let Some(p) = &self.kafka.sasl_password_file {
            self.kafka.sasl_password = Secret::new(read(p)?);
        }
        let files: Vec<(String, String)> = self
            .kafka
            .properties
            .iter()
            .filter(|(k, _)| k.ends_with("_file"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, path) in files {
            let value = read(Path::new(&path))?;
            self.kafka.properties.remove(&k);
            self.kafka
                .properties
                .insert(k.trim_end_matches("_file").to_string(), value);
        }
        Ok(())
    }

    /// The effective configuration as TOML, secrets shown as `***`.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config serialises to TOML; this is a bug")
    }
}

/// Reads an environment value as the type of the field's default (`expected`; `None` for a
/// field without a default value, such as an unset optional path, which is read as a string).
/// A TOML error without the file's text: its message and line, never the snippet of the line
/// (it may hold a password), and a value the message quotes replaced by `…` (`invalid type:
/// string "hunter2", expected u64`). Key names stay: they say what to fix.
fn redacted(e: &toml::de::Error, text: Option<&str>) -> String {
    let mut msg = e.message().trim().to_string();
    if ["invalid type", "invalid value", "invalid length"]
        .iter()
        .any(|p| msg.starts_with(p))
    {
        if let Some((head, tail)) = msg.split_once(": ") {
            let what = tail.split_once(", expected").map_or(tail, |(w, _)| w);
            let kind = what.split([' ', '`', '"']).next().unwrap_or("value");
            let rest = tail.strip_prefix(what).unwrap_or("");
            msg = format!("{head}: {kind} …{rest}");
        }
    }
    // Without a span, `Display` ends with the key path (`in `a.b``), which `message` lacks.
    let shown = e.to_string();
    let key = shown
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("in `").and_then(|k| k.strip_suffix('`')));
    match (text, e.span(), key) {
        (Some(t), Some(span), _) => {
            let line = t[..span.start.min(t.len())].matches('\n').count() + 1;
            format!("line {line}: {msg}")
        }
        (_, _, Some(key)) => format!("`{key}`: {msg}"),
        _ => msg,
    }
}

fn env_value(raw: &str, expected: Option<&toml::Value>) -> Result<toml::Value, String> {
    use toml::Value as V;
    let as_toml = || {
        toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
    };
    match expected {
        None | Some(V::String(_)) => Ok(V::String(raw.to_string())),
        Some(V::Integer(_)) => raw
            .trim()
            .parse::<i64>()
            .map(V::Integer)
            .map_err(|_| format!("`{raw}` is not a whole number")),
        Some(V::Float(_)) => raw
            .trim()
            .parse::<f64>()
            .map(V::Float)
            .map_err(|_| format!("`{raw}` is not a number")),
        Some(V::Boolean(_)) => match raw.trim() {
            "true" | "1" => Ok(V::Boolean(true)),
            "false" | "0" => Ok(V::Boolean(false)),
            _ => Err(format!("`{raw}`: use true or false")),
        },
        // `["fr", "en"]`, or simply `fr,en`.
        Some(V::Array(_)) => match as_toml() {
            Some(v @ V::Array(_)) => Ok(v),
            _ => Ok(V::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| V::String(s.to_string()))
                    .collect(),
            )),
        },
        Some(V::Table(_)) => match as_toml() {
            Some(v @ V::Table(_)) => Ok(v),
            _ => Err(format!(
                "`{raw}` is not an inline TOML table, e.g. {{ \"security.protocol\" = \"SSL\" }}"
            )),
        },
        Some(V::Datetime(_)) => as_toml().ok_or_else(|| format!("`{raw}` is not a datetime")),
    }
}
