//! Chat templates from `chat_template.jinja` (where transformers 4.57 and 5 save them),
//! `tokenizer_config.json` or a GGUF file's `tokenizer.chat_template`, rendered as transformers
//! renders them: Jinja2 with `trim_blocks` and `lstrip_blocks`, loop controls, Python's string
//! methods, a `tojson` that writes JSON as Python's `json.dumps` does, `raise_exception`,
//! `strftime_now`, and the tokenizer's special tokens (`bos_token`, `eos_token`, ...) beside
//! `messages`, `add_generation_prompt` and the caller's own variables
//! (`apply_chat_template(**kwargs)`, such as Llama 3.1's `date_string`).
//! <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/utils/chat_template_utils.py#L393>
//!
//! `{% generation %}` blocks (the tag of transformers' assistant masks) render their content,
//! as transformers renders them when no mask is asked for. Not provided: tools and documents
//! (rendered as `none`), and assistant masks.

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde, ValueKind};
use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use super::gguf::special_token_names;
use crate::error::{Error, Result};
use crate::loading::gguf::GgufHeader;
use crate::loading::hub::ModelSource;
use crate::loading::json::read_json;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions that frame the conversation.
    System,
    /// The person chatting.
    User,
    /// The model.
    Assistant,
}

/// One message of a conversation, as chat templates read it (`role`, `content`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// What was written.
    pub content: String,
}

impl Message {
    /// A message of `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// The special tokens transformers passes to a template (`special_tokens_map`).
const SPECIAL_TOKENS: [&str; 8] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
    "additional_special_tokens",
];

/// A Jinja chat template and the special tokens it may use.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    special_tokens: BTreeMap<String, serde_json::Value>,
}

/// A special token as `tokenizer_config.json` writes it: a string or an `AddedToken` object.
fn token_content(value: &serde_json::Value) -> Option<serde_json::Value> {
    match value {
        serde_json::Value::String(_) => Some(value.clone()),
        serde_json::Value::Object(object) => object.get("content").cloned(),
        serde_json::Value::Array(items) => Some(serde_json::Value::Array(
            items.iter().filter_map(token_content).collect(),
        )),
        _ => None,
    }
}

impl ChatTemplate {
    /// A template from its Jinja source, with no special tokens; checked for syntax now.
    pub fn new(source: impl Into<String>) -> Result<Self> {
        let template = Self {
            source: without_generation_tags(&source.into()),
            special_tokens: BTreeMap::new(),
        };
        environment()
            .template_from_str(&template.source)
            .map_err(template_error)?;
        Ok(template)
    }

    /// Give the template a special token (`bos_token`, `eos_token`, ...) by name.
    pub fn with_special_token(mut self, name: &str, content: &str) -> Self {
        self.special_tokens
            .insert(name.to_string(), serde_json::Value::from(content));
        self
    }

    /// The `chat_template` of a `tokenizer_config.json` and its special tokens, or `None` when
    /// it has no template. `chat_template` is a string, or a list of `{name, template}`: then
    /// `name` picks one, and without a name the one called `default` is used, as transformers'
    /// `get_chat_template` does.
    pub fn from_tokenizer_config(path: &Path, name: Option<&str>) -> Result<Option<Self>> {
        let config: serde_json::Value = read_json(path)?;
        let source = match (config.get("chat_template"), name) {
            (None | Some(serde_json::Value::Null), _) => return Ok(None),
            (Some(serde_json::Value::String(source)), None) => source.clone(),
            (Some(serde_json::Value::Array(named)), name) => {
                let wanted = name.unwrap_or("default");
                let names: Vec<&str> = named
                    .iter()
                    .filter_map(|t| t.get("name")?.as_str())
                    .collect();
                named
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(wanted))
                    .and_then(|t| t.get("template")?.as_str())
                    .ok_or_else(|| {
                        Error::ChatTemplate(format!(
                            "{} has no chat template named `{wanted}`; pass one of {names:?}",
                            path.display()
                        ))
                    })?
                    .to_string()
            }
            (Some(serde_json::Value::String(_)), Some(name)) => {
                return Err(Error::ChatTemplate(format!(
                    "{} has a single chat template, not one named `{name}`; pass no name",
                    path.display()
                )))
            }
            (Some(_), _) => {
                return Err(Error::ChatTemplate(format!(
                    "chat_template in {} must be a string or a list of {{name, template}}",
                    path.display()
                )))
            }
        };
        let mut template = Self::new(source)?;
        template.take_special_tokens(&config);
        Ok(Some(template))
    }

    /// A model's chat template as transformers loads it: `chat_template.jinja` when the model
    /// has one (transformers 4.57 and 5 save the template there), else the `chat_template` of
    /// `tokenizer_config.json` (`name` picks one of a list); the special tokens come from
    /// `tokenizer_config.json` either way. `None` when the model has no template.
    /// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/tokenization_utils_base.py#L2087>
    pub fn from_source(source: &ModelSource, name: Option<&str>) -> Result<Option<Self>> {
        let config_path = source.get("tokenizer_config.json")?;
        let jinja = match name {
            None => source.get("chat_template.jinja")?,
            Some(_) => None,
        };
        let Some(jinja) = jinja else {
            return match config_path {
                Some(path) => Self::from_tokenizer_config(&path, name),
                None => Ok(None),
            };
        };
        let text = std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?;
        let mut template = Self::new(text)?;
        if let Some(path) = config_path {
            let config: serde_json::Value = read_json(&path)?;
            template.take_special_tokens(&config);
        }
        Ok(Some(template))
    }

    /// The `tokenizer.chat_template` of a GGUF file, with its BOS, EOS, unknown, padding and
    /// mask tokens (those its `tokenizer.ggml.*_token_id` name) as the template's special
    /// tokens; `None` when it has no template.
    pub fn from_gguf(header: &GgufHeader) -> Result<Option<Self>> {
        let Some(source) = header.metadata.get("tokenizer.chat_template") else {
            return Ok(None);
        };
        let source = source.as_str().ok_or_else(|| {
            Error::InvalidWeights(
                "GGUF file: tokenizer.chat_template is not a string; convert the model again \
                 with llama.cpp's convert_hf_to_gguf.py"
                    .to_string(),
            )
        })?;
        let mut template = Self::new(source)?;
        for (name, content) in special_token_names(header)? {
            template = template.with_special_token(name, &content);
        }
        Ok(Some(template))
    }

    /// The special tokens of a parsed `tokenizer_config.json`, as transformers gives them to
    /// templates.
    fn take_special_tokens(&mut self, config: &serde_json::Value) {
        for key in SPECIAL_TOKENS {
            if let Some(content) = config.get(key).and_then(token_content) {
                // transformers leaves out unset tokens and an empty list.
                if content.as_array().is_some_and(Vec::is_empty) {
                    continue;
                }
                self.special_tokens.insert(key.to_string(), content);
            }
        }
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Render `messages`, as transformers' `apply_chat_template(..., tokenize=False)`; with
    /// `add_generation_prompt`, ending with what starts the assistant's reply. A template's
    /// `raise_exception` becomes an [`Error::ChatTemplate`] with its message.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, &serde_json::Map::new())
    }

    /// [`ChatTemplate::render`] with the template's own variables beside the messages, as
    /// `apply_chat_template(messages, **kwargs)` passes them (Llama 3.1's `date_string`,
    /// Qwen3's `enable_thinking`); they override special tokens of the same name.
    pub fn render_with(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        variables: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        let mut context: BTreeMap<String, Value> = self
            .special_tokens
            .iter()
            .chain(variables)
            .map(|(key, value)| (key.clone(), Value::from(Serde(value))))
            .collect();
        context.insert("messages".into(), Value::from(Serde(messages)));
        context.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        context.insert("tools".into(), Value::from(()));
        context.insert("documents".into(), Value::from(()));
        let environment = environment();
        let template = environment
            .template_from_str(&self.source)
            .map_err(template_error)?;
        template.render(context).map_err(template_error)
    }
}

/// `source` with each `{% generation %}` ... `{% endgeneration %}` block turned into an
/// always-true `if`, keeping its whitespace control (`{%-`, `-%}`): transformers' extension
/// renders the block's content unchanged, and minijinja has no custom tags.
fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(open) = rest.find("{%") {
        out.push_str(&rest[..open]);
        let tag = &rest[open..];
        let Some(close) = tag.find("%}") else {
            break;
        };
        let inner = &tag[2..close];
        let (left, body) = match inner.strip_prefix(['-', '+']) {
            Some(body) => (&inner[..1], body),
            None => ("", inner),
        };
        let (body, right) = match body.strip_suffix(['-', '+']) {
            Some(body) => (body, &inner[inner.len() - 1..]),
            None => (body, ""),
        };
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(replacement) => out.push_str(&format!("{{%{left} {replacement} {right}%}}")),
            None => out.push_str(&tag[..close + 2]),
        }
        rest = &tag[close + 2..];
    }
    out.push_str(rest);
    out
}

fn template_error(error: minijinja::Error) -> Error {
    match (error.kind(), error.detail()) {
        // raise_exception's message as the template wrote it.
        (ErrorKind::InvalidOperation, Some(detail)) => Error::ChatTemplate(detail.to_string()),
        _ => Error::ChatTemplate(format!("{error:#}")),
    }
}

/// transformers' environment: `ImmutableSandboxedEnvironment(trim_blocks=True,
/// lstrip_blocks=True, extensions=[loopcontrols])` with its `tojson` and `raise_exception`.
fn environment() -> Environment<'static> {
    let mut environment = Environment::new();
    let syntax = SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build();
    // The builder only fails on conflicting custom delimiters, and these are the defaults.
    if let Ok(syntax) = syntax {
        environment.set_syntax(syntax);
    }
    environment.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    environment.add_function(
        "raise_exception",
        |message: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        },
    );
    environment.add_filter("tojson", tojson);
    environment.add_function("strftime_now", strftime_now);
    environment
}

/// transformers' `strftime_now(format)`: the current local date and time in Python's
/// `strftime` format. Local time is UTC here, as in the containers models are served from.
fn strftime_now(format: String) -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    strftime(&format, seconds)
}

/// `format` with the `strftime` fields of the UTC time `seconds` after the epoch: `%Y %y %m
/// %d %e %j %H %I %M %S %p %A %a %B %b %%`; other fields stay as written, as glibc leaves
/// unknown ones.
fn strftime(format: &str, seconds: u64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = seconds / 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    let weekday = DAYS[(days % 7) as usize];
    let month_name = MONTHS[(month - 1) as usize];
    let day_of_year = days as i64 - days_from_civil(year, 1, 1) + 1;
    let (hour, minute, second) = (seconds / 3600 % 24, seconds / 60 % 60, seconds % 60);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('j') => out.push_str(&format!("{day_of_year:03}")),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('I') => out.push_str(&format!("{:02}", (hour + 11) % 12 + 1)),
            Some('M') => out.push_str(&format!("{minute:02}")),
            Some('S') => out.push_str(&format!("{second:02}")),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// (year, month, day) of the day `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days from 1970-01-01 to (year, month, day) (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`, which transformers
/// installs as `tojson` (Jinja's own escapes HTML characters): `", "` and `": "` between
/// items, keys in insertion order, non-ASCII characters as they are.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&value, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(
    value: &Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    let invalid = |what: String| minijinja::Error::new(ErrorKind::InvalidOperation, what);
    let newline = |out: &mut String, depth: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * depth));
        }
    };
    let separator = if indent.is_some() { "," } else { ", " };
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number if value.is_integer() => out.push_str(&value.to_string()),
        ValueKind::Number => {
            let number = f64::try_from(value.clone())?;
            if !number.is_finite() {
                // Python writes NaN and Infinity, which are not JSON either.
                return Err(invalid(format!("tojson cannot write {number}")));
            }
            let text = number.to_string();
            out.push_str(&text);
            // Python's repr of a whole float keeps ".0".
            if !text.contains(['.', 'e', 'E']) {
                out.push_str(".0");
            }
        }
        ValueKind::String => out.push_str(
            &serde_json::to_string(value.as_str().unwrap_or_default())
                .map_err(|e| invalid(e.to_string()))?,
        ),
        ValueKind::Map => {
            out.push('{');
            let mut first = true;
            for key in value.try_iter()? {
                if !first {
                    out.push_str(separator);
                }
                first = false;
                newline(out, depth + 1);
                write_json(&Value::from(key.to_string()), indent, depth + 1, out)?;
                out.push_str(": ");
                write_json(&value.get_item(&key)?, indent, depth + 1, out)?;
            }
            if !first {
                newline(out, depth);
            }
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            let mut first = true;
            for item in value.try_iter()? {
                if !first {
                    out.push_str(separator);
                }
                first = false;
                newline(out, depth + 1);
                write_json(&item, indent, depth + 1, out)?;
            }
            if !first {
                newline(out, depth);
            }
            out.push(']');
        }
        kind => return Err(invalid(format!("tojson cannot write a {kind}"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Jinja2 with transformers' extension: `{%-` and `-%}` strip around the block tags as
    /// around any tag, and the block renders its content: "a" + "b" + "c".
    /// Against Python: `datetime.fromtimestamp(t, timezone.utc).strftime(f)`.
    #[test]
    fn strftime_writes_dates_as_python_does() {
        // 2024-07-26 13:25:09 UTC, a Friday (Llama 3.1's release date); 2000-02-29 (a leap
        // day of a century leap year); 1970-01-01, the epoch.
        assert_eq!(strftime("%d %b %Y", 1_722_000_309), "26 Jul 2024");
        assert_eq!(
            strftime("%A %a %B %m/%d/%y %H:%M:%S %I%p %j %e %%", 1_722_000_309),
            "Friday Fri July 07/26/24 13:25:09 01PM 208 26 %"
        );
        assert_eq!(
            strftime("%Y-%m-%d %j %A", 951_782_400),
            "2000-02-29 060 Tuesday"
        );
        assert_eq!(strftime("%Y-%m-%d %A %Q", 0), "1970-01-01 Thursday %Q");
    }

    #[test]
    fn generation_blocks_render_their_content_with_their_whitespace_control() {
        let source =
            "a\n{%- generation -%}\n b {%- endgeneration %}c{% generation %}d{% endgeneration %}";
        let template = ChatTemplate::new(source).unwrap();
        assert_eq!(template.render(&[], false).unwrap(), "abcd");
        assert_eq!(
            without_generation_tags("{% if x %}{%+ generation %}{% endif %}"),
            "{% if x %}{%+ if true %}{% endif %}"
        );
    }
}
